"""Recorder CPU per recorded participant: N participants' audio for S seconds of call, pushed
through the real plugin (its own files, the mix, the thread hand-offs) as fast as it takes it.

    .venv/bin/python -m bench.recorder [--participants 10] [--seconds 20]

Prints the CPU time per second of recorded audio per participant, as % of one core (the
goal is at most 1%; Opus encoding alone is about 0.45%).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from bot.plugin import AudioFrame, Participant, VideoFrame
from bot.testing import FakeCall, PluginHarness
from plugins.recorder.plugin import RATE, Recorder, RecorderConfig


async def measure_video(participants: int, seconds: float) -> None:
    """640x360 camera pictures at 10 fps per participant into VP8/WebM."""
    recorder = Recorder(RecorderConfig(video=True, video_fps=10))
    assert recorder.video is not None
    with tempfile.TemporaryDirectory() as tmp:
        call = FakeCall(files_dir=Path(tmp))
        h = PluginHarness(recorder, call)
        await h.start()
        people = [Participant(f"@p{i}:x", f"D{i}", f"@p{i}:x:D{i}") for i in range(participants)]
        await recorder.start()
        rng = np.random.default_rng(1)
        base = rng.integers(0, 255, size=(360 * 3 // 2, 640), dtype=np.uint8)
        frames = round(seconds * 10)
        cpu0 = time.process_time()
        for n in range(frames):
            picture = np.roll(base, 4 * n, axis=1).reshape(-1)  # a moving picture
            for who in people:
                h.router.push_video(
                    recorder.video, VideoFrame(who, picture, "yuv420p", 640, 360, n / 10)
                )
            await h.settle()
        await recorder.stop()
        cpu = time.process_time() - cpu0
    print(
        f"video: {participants} participants x {seconds:.0f} s of 640x360 at 10 fps: "
        f"{100 * cpu / (participants * seconds):.1f}% of one core per recorded camera"
    )


def encoder_table(seconds: float) -> None:
    """libopus through PyAV as the recorder writes (mono, 32 kbit/s, Ogg, 200 ms writes):
    CPU per second of audio and the size it gives, by complexity and packet length."""
    import io

    import av

    speech = _source("speech", 0, round(seconds * RATE))
    block = Recorder.audio.samples_per_frame
    print(f"Opus encoder, {seconds:.0f} s of speech: complexity, packet ms -> CPU, size")
    for complexity in (10, 5, 3, 0):
        for packet_ms in (20, 60):
            buf = io.BytesIO()
            container = av.open(buf, "w", format="ogg")
            options = {"compression_level": str(complexity), "frame_duration": str(packet_ms)}
            stream = container.add_stream("libopus", rate=RATE, layout="mono", options=options)
            stream.bit_rate = 32_000
            cpu0 = time.process_time()
            for i in range(0, speech.size, block):
                frame = av.AudioFrame.from_ndarray(
                    speech[i : i + block].reshape(1, -1), format="s16", layout="mono"
                )
                frame.sample_rate, frame.pts = RATE, i
                for packet in stream.encode(frame):
                    container.mux(packet)
            for packet in stream.encode(None):
                container.mux(packet)
            container.close()
            cpu = time.process_time() - cpu0
            kbit_s = len(buf.getvalue()) * 8 / seconds / 1000
            print(
                f"  {complexity:2d}, {packet_ms} ms: {100 * cpu / seconds:.2f}% of one core, "
                f"{kbit_s:.1f} kbit/s"
            )


def _source(content: str, index: int, samples: int) -> np.ndarray:
    """int16 mono at 48 kHz: the shipped speech samples in a loop with 1 s pauses (each
    participant starting elsewhere in the list), or a tone of its own pitch."""
    if content == "tone":
        t = np.arange(samples) / RATE
        return (8000 * np.sin(2 * math.pi * (200 + 40 * index) * t)).astype(np.int16)
    from plugins.transcriber.samples import samples as shipped

    said = [s.pcm(RATE) for s in shipped().values()]
    said = said[index % len(said) :] + said[: index % len(said)]
    pause = np.zeros(RATE, dtype=np.int16)
    loop = np.concatenate([x for s in said for x in (s, pause)])
    return np.resize(loop, samples).astype(np.int16)


async def measure(participants: int, seconds: float, content: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        call = FakeCall(files_dir=Path(tmp))
        h = PluginHarness(Recorder(), call)
        await h.start()
        people = [Participant(f"@p{i}:x", f"D{i}", f"@p{i}:x:D{i}") for i in range(participants)]
        call.members += people
        await h.plugin.start()
        # What the recorder declares it wants (frame size, rate), as the engine delivers it.
        wants = Recorder.audio
        frame = wants.samples_per_frame
        frames = round(seconds * RATE / frame)
        sources = [_source(content, i, frames * frame) for i in range(participants)]
        cpu0, wall0 = time.process_time(), time.perf_counter()
        for n in range(frames):
            for who, source in zip(people, sources, strict=True):
                pcm = source[n * frame : (n + 1) * frame].reshape(-1, 1)
                h.router.push_audio(wants, AudioFrame(who, pcm, RATE, n * frame / RATE))
            await h.settle()
        await h.plugin.stop()
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    per = 100 * cpu / (participants * seconds)
    print(
        f"{participants} participants x {seconds:.0f} s of {content} in "
        f"{Recorder.audio.frame_ms} ms frames, recorded in {wall:.1f} s wall: "
        f"{per:.2f}% of one core per recorded participant (own file + mix + meta); "
        f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--participants", type=int, default=10)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--content", choices=["speech", "tone", "both"], default="both")
    ap.add_argument("--no-video", action="store_true")
    ap.add_argument("--encoder", action="store_true", help="only the Opus settings table")
    args = ap.parse_args()
    if args.encoder:
        encoder_table(args.seconds)
        print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        return
    for content in ("speech", "tone") if args.content == "both" else (args.content,):
        asyncio.run(measure(args.participants, args.seconds, content))
    if args.no_video:
        return
    asyncio.run(measure_video(min(args.participants, 4), min(args.seconds, 10.0)))


if __name__ == "__main__":
    main()
