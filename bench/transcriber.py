"""The transcriber on this machine (tiny.en int8 unless ``--model``): accuracy, caption latency,
capacity.

    .venv/bin/python -m bench.transcriber [--speakers 1,2,4,6,8] [--seconds 40]
        [--model bundled:tiny.en | /path/to/ctranslate2-whisper-folder] [--wer-only]

1. Word error rate on the shipped samples: each sentence whole; live (cut by the streaming VAD
   as in a call, with the VAD's 32 ms window grid at 8 offsets into the speech, as a call's
   stream start puts it anywhere: the transcript must not depend on it); and offline (whole
   files with faster-whisper's VAD, as ``callbot transcribe`` does).
2. For N simultaneous speakers, each saying the samples in a loop with 1 s pauses, fed in
   real time (in the frames the transcriber declares) through the real router, VAD and
   shared engine: the latency from the end of each utterance's speech (when the frame
   holding its last audible sample was pushed into the router, as the media engine does on
   receipt) to its caption being posted (the bot's Matrix client sending it, encrypted, in
   a thread of a room on a real Synapse, with one other member), median and p95, and
   utterances missed (every utterance the VAD found that did not become a caption,
   including those still queued when the audio stopped). N keeps up if nothing is missed
   and the latency does not grow during the run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import os
import statistics
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import numpy as np

from bench.common import run_with_synapse
from bot.config import parse_config
from bot.matrix.client import MatrixClient
from bot.matrix.messages import edit, in_reply, notice
from bot.plugin import AudioFrame
from bot.testing import FakeCall, PluginHarness
from plugins.transcriber.engine import BUNDLED, EngineSettings, SpeechEngine
from plugins.transcriber.plugin import Transcriber, TranscriberConfig
from plugins.transcriber.samples import samples, word_error_rate
from plugins.transcriber.vad import Segmenter
from tests.peer import Peer, wait_until
from tests.synapse import Synapse

RATE = 16_000
FRAME = Transcriber.audio.samples_per_frame if Transcriber.audio else 320  # as declared


def live_text(engine: SpeechEngine, pcm: np.ndarray, offset: int) -> str:
    """``pcm`` as a call's stream would bring it, ``offset`` samples into the VAD's grid."""
    lead = np.zeros(RATE // 2 + offset, np.int16)
    stream = np.concatenate([lead, pcm, np.zeros(RATE, np.int16)])
    segmenter = Segmenter()
    utterances = []
    for i in range(0, stream.size, FRAME):
        utterances += segmenter.feed(stream[i : i + FRAME], i / RATE)
    utterances += segmenter.flush()
    return " ".join(r.text for u in utterances for r in engine.recognize(u.audio))


def wer_figures(model: str, threads: int) -> None:
    engine = SpeechEngine(EngineSettings(model=model, cpu_threads=threads))
    engine.load()
    print(f"model {model}")
    for mode in ("whole", "offline"):
        errors = words = 0
        busy = audio_s = 0.0
        for sample in samples().values():
            audio = sample.pcm(RATE).astype(np.float32) / 32768
            if mode == "offline":  # the way a recording's file looks: silence around it
                pad = np.zeros(RATE, np.float32)
                audio = np.concatenate([pad, audio, pad])
            t = time.perf_counter()
            text = " ".join(r.text for r in engine.recognize(audio, vad_filter=mode == "offline"))
            busy += time.perf_counter() - t
            audio_s += sample.seconds
            n = len(sample.text.split())
            errors += round(word_error_rate(sample.text, text) * n)
            words += n
        print(
            f"WER {mode:7s}: {errors / words:5.1%} ({errors}/{words} words), "
            f"compute {busy / len(samples()):.2f} s per sentence, RTF {busy / audio_s:.3f}"
        )
    # Live, at 8 offsets of the VAD grid: the same figure at each means the grid does not
    # change what Whisper gets.
    per_offset = []
    texts = set()
    for offset in range(0, 512, 64):
        errors = words = 0
        said = []
        for sample in samples().values():
            text = live_text(engine, sample.pcm(RATE), offset)
            said.append(text)
            n = len(sample.text.split())
            errors += round(word_error_rate(sample.text, text) * n)
            words += n
        per_offset.append(errors / words)
        texts.add(tuple(said))
    print(
        f"WER live   : {min(per_offset):5.1%} .. {max(per_offset):5.1%} over 8 VAD grid offsets "
        f"({len(texts)} different transcript(s)); first: {' | '.join(next(iter(texts)))}"
    )
    engine.close()


class MatrixCall(FakeCall):
    """Posts for real: the bot's Matrix client, in an encrypted room."""

    def __init__(self, matrix: MatrixClient, room_id: str) -> None:
        super().__init__(room_id)
        self.matrix = matrix

    async def post(self, text: str, html: str | None = None, thread: str | None = None) -> str:
        content = notice(text, html)
        if thread is not None:
            content = in_reply(content, thread, thread, "thread")
        return await self.matrix.send(self.room_id, content)

    async def edit(self, event_id: str, text: str, html: str | None = None) -> str:
        return await self.matrix.send(self.room_id, edit(event_id, notice(text, html)))


async def speakers(n: int, seconds: float, call: FakeCall, threads: int, model: str) -> None:
    plugin = Transcriber(TranscriberConfig(upload=(), cpu_threads=threads, model=model))
    plugin.engine = SpeechEngine(plugin.config.engine_settings())  # fresh counters
    h = PluginHarness(plugin, call)
    await h.start()
    await plugin.start()
    people = [h.participant(f"@p{i}:x", f"D{i}", f"P{i}") for i in range(n)]
    said = [s.pcm(RATE) for s in samples().values()]
    pause = np.zeros(RATE, dtype=np.int16)
    streams = []
    for i in range(n):  # each speaker starts elsewhere in the list and a little later
        order = said[i % len(said) :] + said[: i % len(said)]
        lead = np.zeros(RATE * i // max(1, n), dtype=np.int16)
        streams.append(np.concatenate([lead, *[x for s in order for x in (s, pause)]] * 4))
    frames = int(seconds * RATE / FRAME)
    wants = Transcriber.audio
    start = time.monotonic()
    cpu0 = time.process_time()
    for k in range(frames):
        t = k * FRAME / RATE
        pushed = time.monotonic()  # the frame is "received by the bot" now
        for who, stream in zip(people, streams, strict=True):
            pcm = stream[k * FRAME : (k + 1) * FRAME].reshape(-1, 1)
            if pcm.shape[0] == FRAME:
                h.router.push_audio(wants, AudioFrame(who, pcm, RATE, t, pushed))
        delay = start + (k + 1) * FRAME / RATE - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
    cpu = time.process_time() - cpu0
    # Utterances still with the engine when the audio stops get their caption (and their
    # latency, counted from their speech) or count as missed: nothing is left out.
    fed = plugin.utterances
    await h.settle()
    if plugin._jobs:
        await asyncio.wait(set(plugin._jobs), timeout=30)
    lat = list(plugin.latencies)
    missed = fed - plugin.captioned
    await h.end()
    if not lat:
        print(f"{n} speakers: no captions")
        return
    q = statistics.quantiles(lat, n=20) if len(lat) > 1 else lat * 19
    third = max(1, len(lat) // 3)
    print(
        f"{n} speakers: {len(lat)} captions, latency median {statistics.median(lat):.2f} s, "
        f"p95 {q[18]:.2f} s, first third median {statistics.median(lat[:third]):.2f} s, "
        f"last third median {statistics.median(lat[-third:]):.2f} s, "
        f"{sum(x <= 2.0 for x in lat) / len(lat):.0%} within 2 s, missed {missed} of {fed} "
        f"(not captioned: refused, failed, empty), CPU {cpu / seconds:.0%} of one core, "
        f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )


@contextlib.asynccontextmanager
async def bot_in_a_room(synapse: Synapse, work: Path) -> AsyncIterator[Callable[[], MatrixCall]]:
    """The bot's Matrix client in an encrypted room with one other member (alice), its room
    key already shared: where captions are posted (also bench.transcriber_remote). Yields a
    maker of calls in that room: each run needs its own, since ending a plugin's call ends
    its worker."""
    account = synapse.register("bot")
    cfg = parse_config(
        {
            "matrix": {
                "homeserver": synapse.url,
                "user_id": account.user_id,
                "password": account.password,
            },
            "bot": {"data_dir": str(work / "bot")},
        },
        base_dir=work,
        environ={},
    )
    matrix = MatrixClient(cfg.matrix, cfg.bot.data_dir)
    await matrix.start()
    alice = await Peer(synapse.url, synapse.register("alice"), work / "alice").start()
    try:
        room = await alice.create_room(invite=[account.user_id])
        await matrix.join(room)
        await alice.wait_member(room, account.user_id)
        await wait_until(lambda: room in matrix.nio.rooms, 20, "the bot's sync of the room")
        await matrix.send(room, notice("warm-up: sharing the room key"))
        yield functools.partial(MatrixCall, matrix, room)
    finally:
        await alice.stop()
        await matrix.stop()


async def in_a_room(
    synapse: Synapse, work: Path, counts: list[int], seconds: float, threads: int, model: str
) -> None:
    async with bot_in_a_room(synapse, work) as new_call:
        for n in counts:
            await speakers(n, seconds, new_call(), threads, model)


def detection_delay() -> None:
    """How long after the frame holding an utterance's last audible sample arrives the VAD
    hands the utterance over (the speech loop fed in the declared frames, no model): the
    part of every caption's latency that the machine's load does not change."""
    said = [s.pcm(RATE) for s in samples().values()]
    pause = np.zeros(RATE, dtype=np.int16)
    stream = np.concatenate([x for s in said for x in (s, pause)]).astype(np.float32) / 32768
    segmenter = Segmenter(TranscriberConfig().vad_settings())
    delays = []
    for i in range(0, stream.size, FRAME):
        received = (i + FRAME) / RATE  # a frame arrives when its last sample is there
        for u in segmenter.feed(stream[i : i + FRAME], i / RATE, received):
            delays.append(received - u.spoken_end)
    print(
        f"end of speech -> utterance handed to the engine ({FRAME * 1000 // RATE} ms frames, "
        f"{TranscriberConfig().min_silence_ms} ms of silence): median "
        f"{statistics.median(delays):.2f} s, max {max(delays):.2f} s (n={len(delays)})"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--speakers", default="1,2,4,6,8")
    parser.add_argument("--seconds", type=float, default=40.0)
    parser.add_argument("--threads", type=int, default=2, help="cpu_threads of the model")
    parser.add_argument("--model", default=BUNDLED, help="[plugins.transcriber] model")
    parser.add_argument("--wer-only", action="store_true", help="no caption latency run")
    args = parser.parse_args()
    detection_delay()
    wer_figures(args.model, args.threads)
    if args.wer_only:
        return
    counts = [int(x) for x in args.speakers.split(",")]
    print(f"cpu_threads={args.threads}")
    run_with_synapse(
        lambda synapse, work: in_a_room(
            synapse, work, counts, args.seconds, args.threads, args.model
        )
    )


if __name__ == "__main__":
    main()
