"""Forwarding cost of the dev SFU: N participants each publishing an Opus tone (encrypted as
Element Call does), everyone subscribed to everyone.

    scripts/netns-run.sh .venv/bin/python -m bench.devsfu [--participants 8] [--seconds 10]

The SFU runs as its own process (``callbot dev-sfu``) so its CPU time is its own; the figures
come from its ``/debug/stats``: CPU per forwarded stream and the forwarding latency inside the
SFU (packet in -> copy out), as percentiles.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
import urllib.request

from tests import lkclient

HOST = os.environ.get("CALLBOT_NETNS_ADDRS", "10.213.0.1").split(",")[0]
ROOM = "bench-room"


def stats(port: int) -> dict:
    with urllib.request.urlopen(f"http://{HOST}:{port}/debug/stats", timeout=5) as r:
        return json.load(r)


async def measure(participants: int, seconds: float, port: int) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bot",
        "dev-sfu",
        "--host",
        HOST,
        "--port",
        str(port),
        "--log-level",
        "warning",
        "--homeserver",  # required by the CLI; the JWT service is not used here
        "http://127.0.0.1:9",
    )
    try:
        for _ in range(100):
            if proc.returncode is not None:
                raise RuntimeError("the dev SFU did not start")
            try:
                stats(port)
                break
            except OSError:
                await asyncio.sleep(0.1)
        keys = {f"p{i}": bytes([i + 1]) * 16 for i in range(participants)}
        clients = [
            await lkclient.connect(f"ws://{HOST}:{port}", who, ROOM, keys=keys) for who in keys
        ]
        tones = []
        for i, client in enumerate(clients):
            tone = lkclient.Tone(300 + 50 * i)
            await tone.publish(client)
            tones.append(tone)
        streams = participants * (participants - 1)
        await lkclient.wait_until(
            lambda: sum(len(c.tracks) for c in clients) >= streams, 60, "all subscriptions"
        )
        await asyncio.sleep(2.0)  # settle
        before, t0 = stats(port), time.monotonic()
        await asyncio.sleep(seconds)
        after, wall = stats(port), time.monotonic() - t0
        cpu = (after["cpu_s"] - before["cpu_s"]) / wall
        lat = after["forward_latency"]
        print(
            f"{participants} participants, {streams} forwarded audio streams (E2EE): SFU CPU "
            f"{100 * cpu:.1f}% of one core, {100 * cpu / streams:.2f}% per stream"
        )
        print(f"forwarding latency inside the SFU (packet in -> copy out): {lat}")
        for tone in tones:
            await tone.stop()
        for client in clients:
            await client.close()
    finally:
        if proc.returncode is None:
            proc.terminate()
        await proc.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--participants", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--port", type=int, default=7880)
    args = ap.parse_args()
    asyncio.run(measure(args.participants, args.seconds, args.port))


if __name__ == "__main__":
    main()
