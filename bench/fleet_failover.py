"""Fleet failover: SIGKILL of the worker recording a call, to the first frame the worker that
takes it over records, and the seconds of audio lost.

    scripts/netns-run.sh .venv/bin/python -m bench.fleet_failover [--kills 5]

Real parts (as tests/test_fleet.py): a throwaway PostgreSQL and Synapse, the dev SFU, two
``callbot run`` workers of one account (recorder on, one shared calls folder), alice
(matrix-js-sdk and a livekit client) publishing a 440 Hz tone in her call, `!join` and
`!record start` typed once. Each round SIGKILLs the worker recording the call (the least
loaded, then the oldest worker got it, so it is also the leader: the lock moves as well), waits
for alice's file of the next part (``alice….partN.ogg``: the recorder makes it at her first
frame) and then starts a fresh worker, so two are alive again for the next round. The clock is
this process's, outside the bot. Audio lost per round: the wall time from the killed part's
first frame to the next part's first frame, less what the killed part holds (decoded).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import tempfile
import time
from pathlib import Path

from bot.devsfu.server import DevSfu
from bot.log import setup_logging
from tests import postgres
from tests.fleet import Fleet
from tests.jspeer import JsPeer
from tests.synapse import Synapse
from tests.test_fleet import logged_start, recorded_call
from tests.test_recorder import decode

TIMEOUT = 60.0
#: the killed device's delayed leave (rtc.delayed_leave_ms) is over before the next round
SETTLE_S = 12.0


def part_file(calls: Path, part: int) -> Path | None:
    pattern = "alice*.ogg" if part == 1 else f"alice*.part{part}.ogg"
    found = [p for p in calls.glob(f"*/*/{pattern}") if part > 1 or ".part" not in p.name]
    return found[0] if found else None


async def first_frame(calls: Path, part: int, timeout: float = TIMEOUT) -> tuple[Path, float]:
    """alice's file of ``part`` and when it appeared (polled every 10 ms)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        path = part_file(calls, part)
        if path is not None and path.stat().st_size > 0:
            return path, time.monotonic()
        await asyncio.sleep(0.01)
    raise TimeoutError(f"no part {part} of alice's recording")


async def measure(work: Path, kills: int) -> list[tuple[float, float]]:
    addrs = os.environ.get("CALLBOT_NETNS_ADDRS", "")
    if not addrs:
        raise SystemExit("run inside scripts/netns-run.sh (needs its veth addresses)")
    pg = postgres.Postgres()
    pg.start()
    synapse = Synapse(work / "synapse")
    synapse.start()
    sfu = DevSfu(homeserver=synapse.url)
    await sfu.start(addrs.split(",")[0])
    results: list[tuple[float, float]] = []
    fleet = Fleet(
        synapse,
        pg,
        work,
        f'[rtc]\nlivekit_service_url = "{sfu.http_url}"\n'
        '[plugins]\nenabled = ["recorder"]\n[plugins.recorder]\nupload_mixed = false\n',
    )
    try:
        await fleet.add()
        await fleet.add()
        alice = await JsPeer(synapse.url, synapse.register("alice"), work / "alice").start()
        try:
            async with recorded_call(fleet, alice, sfu):
                path, appeared = await first_frame(fleet.calls_dir, 1)
                for part in range(2, kills + 2):
                    await asyncio.sleep(4.0)  # some recording in this part
                    alive = [w for w in fleet.workers if w.proc and w.proc.returncode is None]
                    (holder,) = [w for w in alive if logged_start(w, "recording to")]
                    await holder.stop(signal.SIGKILL)
                    killed = time.monotonic()
                    next_path, next_appeared = await first_frame(fleet.calls_dir, part)
                    recorded = decode(path).size / 48_000
                    lost = next_appeared - appeared - recorded
                    results.append((next_appeared - killed, lost))
                    print(
                        f"round {part - 1}: first frame of the new worker "
                        f"{next_appeared - killed:.2f} s after the SIGKILL; audio lost "
                        f"{lost:.2f} s (the killed part held {recorded:.2f} s)",
                        flush=True,
                    )
                    path, appeared = next_path, next_appeared
                    await fleet.add()
                    await asyncio.sleep(SETTLE_S)
        finally:
            await alice.stop()
    finally:
        await fleet.stop()
        await sfu.stop()
        synapse.stop()
        pg.stop()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=5)
    args = parser.parse_args()
    setup_logging("WARNING")
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="callbot-bench-fleet-") as tmp:
        results = asyncio.run(measure(Path(tmp), args.kills))
    load_after = os.getloadavg()
    firsts = [r[0] for r in results]
    lost = [r[1] for r in results]
    print(
        f"fleet failover, SIGKILL of the recording worker to the new worker's first recorded "
        f"frame, {len(results)} kills: median {statistics.median(firsts):.2f} s, slowest "
        f"{max(firsts):.2f} s; audio lost median {statistics.median(lost):.2f} s, most "
        f"{max(lost):.2f} s (load average {load_before[0]:.2f} before, {load_after[0]:.2f} after)"
    )


if __name__ == "__main__":
    main()
