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
import tempfile
import time
from pathlib import Path

import numpy as np

from bot.plugin import AudioFrame, Participant
from bot.testing import FakeCall, PluginHarness
from plugins.recorder.plugin import RATE, Recorder

FRAME = 960


async def measure(participants: int, seconds: float) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        call = FakeCall(files_dir=Path(tmp))
        h = PluginHarness(Recorder(), call)
        await h.start()
        people = [Participant(f"@p{i}:x", f"D{i}", f"@p{i}:x:D{i}") for i in range(participants)]
        call.members += people
        await h.plugin.start()
        t = np.arange(FRAME) / RATE
        pcm = [
            (8000 * np.sin(2 * math.pi * (200 + 40 * i) * t)).astype(np.int16).reshape(-1, 1)
            for i in range(participants)
        ]
        frames = round(seconds * RATE / FRAME)
        cpu0, wall0 = time.process_time(), time.perf_counter()
        for n in range(frames):
            for who, samples in zip(people, pcm, strict=True):
                h.router.push_audio(
                    Recorder.audio, AudioFrame(who, samples, RATE, n * FRAME / RATE)
                )
            await h.settle()
        await h.plugin.stop()
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    per = 100 * cpu / (participants * seconds)
    print(
        f"{participants} participants x {seconds:.0f} s recorded in {wall:.1f} s wall: "
        f"{per:.2f}% of one core per recorded participant (own file + mix + meta)"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--participants", type=int, default=10)
    ap.add_argument("--seconds", type=float, default=20.0)
    args = ap.parse_args()
    asyncio.run(measure(args.participants, args.seconds))


if __name__ == "__main__":
    main()
