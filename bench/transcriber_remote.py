"""Caption latency with the speech engine as a service (engine = "openai") vs in the bot.

    .venv/bin/python -m bench.transcriber_remote [--speakers 1,4] [--seconds 40]

The service is faster-whisper-server (tests/stt_server.py) on 127.0.0.1, serving the same
bundled tiny.en with the local engine's decoding options, as its own process on the same
machine: the comparison shows what the HTTP hop, the WAV encoding and a second process cost,
not what a GPU service gains.

For N speakers (each says the samples in a loop with 1 s pauses, fed in real time in the
frames the transcriber declares, through the real router, VAD and engine; captions posted by
the bot's Matrix client, encrypted, in a room on a real Synapse), the latency of each sentence
is measured from the moment the frame holding its last audible sample was pushed into the
router to the return of the send of its (last) caption. Also: word error rate of both engines
on the shipped samples.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
from pathlib import Path

import numpy as np

from bench.common import run_with_synapse
from bench.transcriber import FRAME, bot_in_a_room
from bot.plugin import AudioFrame
from bot.testing import FakeCall, PluginHarness
from plugins.transcriber.engine import EngineSettings, SpeechEngine
from plugins.transcriber.plugin import Transcriber, TranscriberConfig
from plugins.transcriber.remote_engine import RemoteEngine, RemoteSettings
from plugins.transcriber.samples import samples, word_error_rate
from plugins.transcriber.transcript import Line
from tests.peer import wait_until
from tests.stt_server import MODEL_NAME, SttServer
from tests.synapse import Synapse

RATE = 16_000
AUDIBLE = 0.01 * 32768  # a sample louder than -40 dBFS


def load() -> str:
    return "/".join(f"{x:.1f}" for x in os.getloadavg())


async def wer_figures(url: str) -> None:
    local = SpeechEngine(EngineSettings())
    remote = RemoteEngine(RemoteSettings(url=url, model=MODEL_NAME))
    engines: list[tuple[str, SpeechEngine | RemoteEngine]] = [("local", local), ("openai", remote)]
    for name, engine in engines:
        await engine.transcribe(np.zeros(RATE, np.float32))  # the model loaded, both sides
        errors = words = 0
        busy = 0.0
        for sample in samples().values():
            pcm = sample.pcm(RATE).astype(np.float32) / 32768
            t = time.perf_counter()
            said = await engine.transcribe(pcm)
            busy += time.perf_counter() - t
            n = len(sample.text.split())
            errors += round(word_error_rate(sample.text, " ".join(r.text for r in said)) * n)
            words += n
        print(
            f"WER {name:6s}: {errors / words:5.1%} ({errors}/{words} words), "
            f"{busy / len(samples()):.2f} s per sentence, load {load()}"
        )
    local.close()
    await remote.aclose()


async def hop_figure() -> None:
    """What the HTTP hop alone costs: a 3 s utterance as WAV to a server on 127.0.0.1 that
    answers at once (keep-alive, as the engine's session does)."""
    from aiohttp import web

    async def at_once(request: web.Request) -> web.Response:
        await request.post()
        return web.json_response({"text": "ok"})

    app = web.Application()
    app.router.add_post("/v1/audio/transcriptions", at_once)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    engine = RemoteEngine(RemoteSettings(url=url, model="m"))
    pcm = samples()["slt-1"].pcm(RATE).astype(np.float32) / 32768
    times = []
    for _ in range(50):
        t = time.perf_counter()
        await engine.transcribe(pcm)
        times.append(time.perf_counter() - t)
    await engine.aclose()
    await runner.cleanup()
    print(
        f"HTTP hop ({pcm.size / RATE:.1f} s as WAV, answered at once): median "
        f"{statistics.median(times) * 1000:.1f} ms, max {max(times) * 1000:.1f} ms, load {load()}"
    )


def streams_for(n: int) -> tuple[list[np.ndarray], list[list[tuple[float, float]]]]:
    """Each speaker's audio, and the (start, last audible sample) of each sentence in it."""
    said = [s.pcm(RATE) for s in samples().values()]
    pause = np.zeros(RATE, dtype=np.int16)
    streams, spans = [], []
    for i in range(n):  # each speaker starts elsewhere in the list and a little later
        order = said[i % len(said) :] + said[: i % len(said)]
        parts = [np.zeros(RATE * i // max(1, n), dtype=np.int16)]
        for _ in range(4):
            for s in order:
                parts += [s, pause]
        at, mine = 0, []
        for p in parts:
            loud = np.flatnonzero(np.abs(p.astype(np.int32)) > AUDIBLE)
            if loud.size:
                mine.append(((at + loud[0]) / RATE, (at + loud[-1]) / RATE))
            at += p.size
        streams.append(np.concatenate(parts))
        spans.append(mine)
    return streams, spans


async def speakers(n: int, seconds: float, call: FakeCall, config: TranscriberConfig) -> None:
    plugin = Transcriber(config)
    if config.engine == "openai":  # fresh counters
        plugin.engine = RemoteEngine(config.remote_settings())
    else:
        plugin.engine = SpeechEngine(config.engine_settings())
    h = PluginHarness(plugin, call)
    await h.start()
    await plugin.start()
    assert plugin.captions is not None
    sent: list[tuple[Line, float]] = []
    add = plugin.captions.add

    async def timed_add(line: Line) -> None:
        await add(line)
        sent.append((line, time.monotonic()))

    plugin.captions.add = timed_add  # type: ignore[method-assign]
    people = [h.participant(f"@p{i}:x", f"D{i}", f"P{i}") for i in range(n)]
    streams, spans = streams_for(n)
    frames = int(seconds * RATE / FRAME)
    pushed = np.zeros(frames)  # monotonic time each frame index was pushed
    wants = Transcriber.audio
    load0 = load()
    start = time.monotonic()
    for k in range(frames):
        t = k * FRAME / RATE
        for who, stream in zip(people, streams, strict=True):
            pcm = stream[k * FRAME : (k + 1) * FRAME].reshape(-1, 1)
            if pcm.shape[0] == FRAME:
                h.router.push_audio(wants, AudioFrame(who, pcm, RATE, t))
        pushed[k] = time.monotonic()
        delay = start + (k + 1) * FRAME / RATE - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
    await h.settle()
    await wait_until(lambda: plugin.engine.waiting == 0, 60, "the last captions")
    await h.end()
    if isinstance(plugin.engine, RemoteEngine):
        await plugin.engine.aclose()
    # Each caption belongs to the last sentence that began before its line ends.
    last: dict[tuple[int, int], float] = {}
    for line, when in sent:
        i = int(line.user_id[2:].split(":")[0])
        j = max((j for j, (s, _) in enumerate(spans[i]) if s <= line.end), default=None)
        if j is not None:
            last[i, j] = max(last.get((i, j), 0.0), when)
    lat = []
    for (i, j), when in last.items():
        k = int(spans[i][j][1] * RATE) // FRAME
        if k < frames:
            lat.append(when - pushed[k])
    missed = plugin.engine.refused + getattr(plugin.engine, "failed", 0)
    if not lat:
        print(f"{config.engine} {n} speakers: no captions")
        return
    q = statistics.quantiles(lat, n=20) if len(lat) > 1 else lat * 19
    print(
        f"{config.engine:6s} {n} speakers: {len(lat)} sentences captioned, latency median "
        f"{statistics.median(lat):.2f} s, p95 {q[18]:.2f} s, missed {missed}, "
        f"load {load0} -> {load()}"
    )


async def in_a_room(synapse: Synapse, work: Path, counts: list[int], seconds: float) -> None:
    stt = SttServer(work / "stt").start()
    try:
        await hop_figure()
        await wer_figures(stt.url)
        async with bot_in_a_room(synapse, work) as new_call:
            configs = [
                TranscriberConfig(upload=()),
                TranscriberConfig(upload=(), engine="openai", url=stt.url, model=MODEL_NAME),
            ]
            for n in counts:
                for config in configs:
                    await speakers(n, seconds, new_call(), config)
    finally:
        stt.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--speakers", default="1,4")
    parser.add_argument("--seconds", type=float, default=40.0)
    args = parser.parse_args()
    counts = [int(x) for x in args.speakers.split(",")]
    run_with_synapse(lambda synapse, work: in_a_room(synapse, work, counts, args.seconds))


if __name__ == "__main__":
    main()
