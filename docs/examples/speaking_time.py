"""Speaking time: at the end of a call, post who spoke for how long."""

from collections import Counter

import numpy as np

from bot.plugin import AudioFrame, AudioWants, CallContext, Plugin

SPEECH_RMS = 500  # int16 level above which a 20 ms frame counts as speech


class SpeakingTime(Plugin):
    name = "speaking-time"
    audio = AudioWants(sample_rate=16_000, channels=1, frame_ms=20)

    def __init__(self) -> None:
        self.seconds: Counter[str] = Counter()
        self.call: CallContext | None = None

    async def on_call_start(self, call: CallContext) -> None:
        self.call = call

    async def on_audio(self, frame: AudioFrame) -> None:
        level = np.sqrt(np.mean(frame.pcm.astype(np.float32) ** 2))
        if level > SPEECH_RMS:
            self.seconds[frame.participant.name] += frame.duration

    async def on_call_end(self) -> None:
        if self.call and self.seconds:
            lines = [f"{who}: {s:.0f} s" for who, s in self.seconds.most_common()]
            await self.call.post("Speaking time\n" + "\n".join(lines))
