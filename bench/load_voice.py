"""The load generator's synthetic participants: a plugin that speaks into the call.

With ``bench.load --generator sdk`` each participant is an instance of the bot framework
itself (a ``CallBot`` with this plugin), so it joins through MatrixRTC and exchanges media
keys like any Element Call client, and it can be in many calls at once. In every call it
publishes one encrypted microphone track: a steady tone (a different pitch per participant,
so a gap in a recording is easy to hear and to find) or, where it is one of the speakers,
the shipped speech samples in a loop with pauses.

It writes 100 ms blocks into the SDK's source, whose queue holds 1 s: the audio goes out in
real time from the first write, so sample ``k`` leaves at ``t0 + k / RATE``. When a write comes
back after the queue ran dry the participant itself made a gap (this process was starved):
those are counted as ``underruns``, so that they are not blamed on the bot.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from bot.plugin import CallContext, Plugin

RATE = 48_000
BLOCK = RATE // 10  # 100 ms
AMPLITUDE = 0.25
PAUSE_S = 1.5  # between sentences


def tone_hz(index: int) -> int:
    """Whole hertz, so one second of it loops without a click."""
    return 300 + 70 * index


@dataclass
class Spoken:
    """One sentence a speaker said: its text and when its last sample left (monotonic)."""

    text: str
    end: float


@dataclass
class VoiceStats:
    written_s: float = 0.0
    #: (when, seconds): times the source ran dry before this participant wrote again
    underruns: list[tuple[float, float]] = field(default_factory=list)
    spoken: list[Spoken] = field(default_factory=list)


class Voice(Plugin):
    """Subclassed per participant (``make_voice``): ``index`` picks the pitch and voice,
    ``speak_rooms`` the calls where it speaks instead of holding a tone (or silence)."""

    name = "load-voice"
    index: ClassVar[int] = 0
    speak_rooms: ClassVar[frozenset[str]] = frozenset()
    #: "tone": a tone where not speaking; "silence": silence there
    idle: ClassVar[str] = "tone"
    #: every instance, by room (one per call the participant is in)
    instances: ClassVar[dict[str, Voice]]

    def __init__(self) -> None:
        self.stats = VoiceStats()
        self.room = ""
        self._task: asyncio.Task[None] | None = None

    async def on_call_start(self, call: CallContext) -> None:
        self.room = call.room_id
        type(self).instances[call.room_id] = self
        out = await call.publish_audio("microphone", RATE, 1)
        self._task = asyncio.create_task(self._run(out))

    async def on_call_end(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def _script(self) -> list[tuple[np.ndarray, str | None]]:
        """What to say over and over: (samples, the sentence's text or None)."""
        if self.room in self.speak_rooms:
            from plugins.transcriber.samples import samples

            voice = "slt" if self.index % 2 == 0 else "rms"
            pause = np.zeros(int(PAUSE_S * RATE), dtype=np.int16)
            script: list[tuple[np.ndarray, str | None]] = []
            for sample in samples().values():
                if sample.voice == voice:
                    script += [(sample.pcm(RATE), sample.text), (pause, None)]
            return script
        if self.idle == "silence":
            return [(np.zeros(RATE, dtype=np.int16), None)]
        t = np.arange(RATE) / RATE
        wave = AMPLITUDE * 32767 * np.sin(2 * math.pi * tone_hz(self.index) * t)
        return [(wave.astype(np.int16), None)]

    async def _run(self, out: Any) -> None:
        script = self._script()
        if self.room in self.speak_rooms:
            # Speakers start at different moments (0.2 to 3 s), so they do not all pause
            # together.
            lead = 0.2 + (self.index * 7 + sum(map(ord, self.room))) % 29 / 10
            await self._play(out, np.zeros(int(lead * RATE), np.int16))
        while True:
            for pcm, text in script:
                await self._play(out, pcm, text)

    _written = 0
    _t0: float | None = None

    async def _play(self, out: Any, pcm: np.ndarray, text: str | None = None) -> None:
        st = self.stats
        for i in range(0, pcm.size, BLOCK):
            block = pcm[i : i + BLOCK]
            if block.size < BLOCK:
                block = np.pad(block, (0, BLOCK - block.size))
            await out.write(block.reshape(-1, 1))
            now = time.monotonic()
            if self._t0 is None:
                self._t0 = now - BLOCK / RATE
            self._written += BLOCK
            behind = (now - self._t0) - self._written / RATE
            if behind > 0.02:  # the source's queue ran dry: our own gap
                st.underruns.append((now, behind))
                self._t0 += behind
            st.written_s = self._written / RATE
        if text is not None and self._t0 is not None:
            st.spoken.append(Spoken(text, self._t0 + self._written / RATE))


def make_voice(index: int, speak_rooms: frozenset[str], idle: str) -> type[Voice]:
    """The plugin class of participant ``index``."""
    return type(
        f"Voice{index}",
        (Voice,),
        {"index": index, "speak_rooms": speak_rooms, "idle": idle, "instances": {}},
    )
