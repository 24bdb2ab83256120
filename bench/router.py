"""Routing overhead: synthetic audio for N participants every 20 ms, fed to plugins that do
nothing, in real time.

    .venv/bin/python -m bench.router [--participants 50] [--plugins 3] [--seconds 10]

Prints the CPU the process used per second of call (% of one core: the router, the plugin
tasks and the frame loop together, so an upper bound on the framework's overhead), frames
delivered and frames dropped.
"""

from __future__ import annotations

import argparse
import asyncio
import time

import numpy as np

from bot.media.router import FrameRouter
from bot.plugin import AudioFrame, AudioWants, Overflow, Participant, Plugin

WANTS = AudioWants(sample_rate=48_000, channels=1, frame_ms=20)


class Idle(Plugin):
    name = "idle"
    audio = WANTS
    overflow = Overflow.LOSSLESS

    async def on_audio(self, frame: AudioFrame) -> None:
        return None


async def measure(participants: int, plugins: int, seconds: float) -> None:
    router = FrameRouter()
    runners = [router.add(Idle()) for _ in range(plugins)]
    people = [Participant(f"@p{i}:x", f"D{i}", f"@p{i}:x:D{i}") for i in range(participants)]
    pcm = np.zeros((WANTS.samples_per_frame, 1), dtype=np.int16)
    ticks = int(seconds * 1000 / WANTS.frame_ms)
    start_wall, start_cpu = time.perf_counter(), time.process_time()
    for tick in range(ticks):
        ts = tick * WANTS.frame_ms / 1000
        for who in people:
            router.push_audio(WANTS, AudioFrame(who, pcm, WANTS.sample_rate, ts))
        next_at = start_wall + (tick + 1) * WANTS.frame_ms / 1000
        await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
    await router.stop()
    wall, cpu = time.perf_counter() - start_wall, time.process_time() - start_cpu
    delivered = sum(r.stats.delivered for r in runners)
    dropped = sum(r.stats.dropped for r in runners)
    print(
        f"{participants} participants x {plugins} plugins, {seconds:.0f} s of call: "
        f"CPU {100 * cpu / wall:.1f}% of one core, {delivered} frames delivered "
        f"({delivered / wall:.0f}/s), {dropped} dropped, "
        f"{1e6 * cpu / max(delivered, 1):.1f} µs CPU per delivered frame"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--participants", type=int, default=50)
    ap.add_argument("--plugins", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=10.0)
    args = ap.parse_args()
    asyncio.run(measure(args.participants, args.plugins, args.seconds))


if __name__ == "__main__":
    main()
