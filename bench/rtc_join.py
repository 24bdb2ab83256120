"""How fast the bot is in a call, seen from matrix-js-sdk (the reference peer), on loopback.

    .venv/bin/python -m bench.rtc_join [--joins N]

Prints, over N joins: from a user's ``!join`` message to the js peer (already in the call)
listing the bot's membership and holding the bot's key, median and p95; and, after a second
js peer leaves, how long until the remaining one holds the bot's new key, and until the bot
encrypts with it.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from pathlib import Path

from bench.common import run_with_synapse
from bot.app import CallBot
from bot.rtc.membership import LEGACY_TYPE
from bot.rtc.session import EncryptionKeyChanged
from tests.conftest import bot_config
from tests.jspeer import JsPeer
from tests.peer import Peer, wait_until
from tests.synapse import Synapse

MINT = {
    "livekit_url": "ws://127.0.0.1:1",
    "livekit_api_key": "devkey",
    "livekit_api_secret": "a-secret-of-some-length-0123456789",
}


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


async def measure(synapse: Synapse, work: Path, joins: int) -> None:
    account = synapse.register("bot")
    bot = CallBot(bot_config(synapse, account, work / "data", rtc=MINT))
    await bot.start()
    alice = await Peer(synapse.url, synapse.register("alice"), work / "alice").start()
    carol = await JsPeer(synapse.url, synapse.register("carol"), work).start()
    dave = await JsPeer(synapse.url, synapse.register("dave"), work).start()
    try:
        room = await alice.create_room(
            invite=[account.user_id, carol.user_id, dave.user_id],
            power_level_override={"events": {LEGACY_TYPE: 0}},
        )
        await alice.wait_member(room, account.user_id)
        await carol.call("join_room", room_id=room)
        focus = [{"type": "livekit", "livekit_service_url": f"http://127.0.0.1:{synapse.port + 1}"}]
        await carol.call("rtc_join", room_id=room, foci=focus)
        identity = f"{account.user_id}:{bot.matrix.device_id}"

        def carol_has_bot(e: dict) -> bool:
            return e["event"] == "memberships" and any(
                m["user_id"] == account.user_id for m in e["members"]
            )

        samples = []
        for _ in range(joins):
            mark = carol.mark()
            t0 = time.perf_counter()
            await alice.send(room, "!join")
            await carol.wait_event(carol_has_bot, 30, since=mark)
            await carol.wait_event(
                lambda e: e["event"] == "key" and e["identity"] == identity, 30, since=mark
            )
            samples.append((time.perf_counter() - t0) * 1000)
            mark = carol.mark()
            await alice.send(room, "!leave")
            await carol.wait_event(
                lambda e: (
                    e["event"] == "memberships"
                    and all(m["user_id"] != account.user_id for m in e["members"])
                ),
                30,
                since=mark,
            )
        print(
            f"!join -> js peer has membership and key: median {statistics.median(samples):.0f} ms,"
            f" p95 {pct(samples, 95):.0f} ms, min {min(samples):.0f}, max {max(samples):.0f}"
            f" (n={joins})"
        )

        # Rotation after a leave.
        await dave.call("join_room", room_id=room)
        await dave.call("rtc_join", room_id=room, foci=focus)
        session = bot.rtc.get_room_session(room)
        await session.join()
        await wait_until(lambda: len(session.memberships) == 3, 30)
        await carol.wait_event(lambda e: e["event"] == "key" and e["identity"] == identity, 30)
        used: list[float] = []

        def on_key(change: EncryptionKeyChanged) -> None:
            if change.own and change.key.index > 0:
                used.append(time.perf_counter())

        session.encryption_key_changed.connect(on_key)
        await asyncio.sleep(1.0)
        mark = carol.mark()
        t0 = time.perf_counter()
        await dave.call("rtc_leave", room_id=room)
        left = time.perf_counter()
        await carol.wait_event(
            lambda e: e["event"] == "key" and e["identity"] == identity and e["index"] > 0,
            30,
            since=mark,
        )
        delivered = time.perf_counter()
        await wait_until(lambda: used, 30)
        print(
            f"after a js peer leaves (its leave took {(left - t0) * 1000:.0f} ms): the remaining "
            f"peer holds the bot's new key after {(delivered - left) * 1000:.0f} ms; the bot "
            f"encrypts with it after {(used[0] - left) * 1000:.0f} ms "
            f"(use_key_delay_ms {bot.config.rtc.use_key_delay_ms})"
        )
    finally:
        await dave.stop()
        await carol.stop()
        await alice.stop()
        await bot.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--joins", type=int, default=20)
    args = ap.parse_args()
    run_with_synapse(lambda synapse, work: measure(synapse, work, args.joins))


if __name__ == "__main__":
    main()
