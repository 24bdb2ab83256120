"""Start-up time and command round trip of the Matrix core, against a real local Synapse.

    .venv/bin/python -m bench.matrix_core [--commands N] [--restarts N]

Prints: time to ready on the first start (login, key upload, cross-signing set-up, first
sync; median over several new accounts, with the cross-signing part on its own) and on
restarts (stored session), and the round trip of a command in an encrypted room (a user sends
``!status``; the user's client has decrypted the bot's reply) as percentiles.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from bench.common import run_with_synapse
from bot.app import CallBot
from bot.matrix import cross_signing
from tests.conftest import bot_config
from tests.peer import Peer
from tests.synapse import Synapse

FIRST_STARTS = 5


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


async def measure(synapse: Synapse, work: Path, commands: int, restarts: int) -> None:
    identity_s: list[float] = []
    ensure = cross_signing.ensure_identity

    async def timed_ensure(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return await ensure(*args, **kwargs)
        finally:
            identity_s.append(time.perf_counter() - t0)

    cross_signing.ensure_identity = timed_ensure  # the client looks it up at each start

    async def ready_time(config) -> tuple[float, CallBot]:
        bot = CallBot(config)
        t0 = time.perf_counter()
        await bot.start()
        return time.perf_counter() - t0, bot

    firsts, created = [], []
    for i in range(FIRST_STARTS):
        account = synapse.register("bot")
        config = bot_config(synapse, account, work / f"data{i}")
        t, bot = await ready_time(config)
        firsts.append(t)
        created.append(identity_s[-1])
        await bot.stop()
    identity_s.clear()
    warm = []
    for _ in range(restarts):
        t, bot = await ready_time(config)
        warm.append(t)
        await bot.stop()
    print(
        f"ready, first start:   {statistics.median(firsts) * 1000:7.0f} ms median "
        f"(min {min(firsts) * 1000:.0f}, max {max(firsts) * 1000:.0f}, n={FIRST_STARTS}), of "
        f"which cross-signing set-up {statistics.median(created) * 1000:.0f} ms median"
    )
    print(f"  cross-signing check on restart: {statistics.median(identity_s) * 1000:.0f} ms")
    print(
        f"ready, restart:       {statistics.median(warm) * 1000:7.0f} ms median "
        f"(min {min(warm) * 1000:.0f}, max {max(warm) * 1000:.0f}, n={restarts})"
    )

    _, bot = await ready_time(config)
    # Time inside the bot: from the message reaching the dispatcher to the reply being sent.
    received: list[float] = []
    in_bot: list[float] = []
    submit, reply = bot.dispatcher.submit, bot.matrix.reply

    def timed_submit(msg) -> None:
        received.append(time.perf_counter())
        submit(msg)

    async def timed_reply(*args, **kwargs) -> str:
        event_id = await reply(*args, **kwargs)
        in_bot.append((time.perf_counter() - received[-1]) * 1000)
        return event_id

    bot.matrix.reply = timed_reply
    bot.matrix.on_message(timed_submit)
    alice = await Peer(synapse.url, synapse.register("alice"), work / "alice").start()
    try:
        room = await alice.create_room(invite=[account.user_id])
        await alice.wait_member(room, account.user_id)
        await alice.ask(room, "!status", account.user_id)  # warm-up: key sharing
        rtt = []
        in_bot.clear()
        for _ in range(commands):
            t0 = time.perf_counter()
            await alice.ask(room, "!status", account.user_id)
            rtt.append((time.perf_counter() - t0) * 1000)
        print(
            f"command round trip:   p50 {pct(rtt, 50):.0f} ms, p90 {pct(rtt, 90):.0f} ms, "
            f"p99 {pct(rtt, 99):.0f} ms, max {max(rtt):.0f} ms (n={commands}, encrypted room)"
        )
        print(
            f"  of which in the bot: p50 {pct(in_bot, 50):.0f} ms, p90 {pct(in_bot, 90):.0f} ms "
            "(decrypted message -> reply encrypted and accepted by the homeserver)"
        )
    finally:
        await alice.stop()
        await bot.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--commands", type=int, default=50)
    ap.add_argument("--restarts", type=int, default=5)
    args = ap.parse_args()
    run_with_synapse(lambda synapse, work: measure(synapse, work, args.commands, args.restarts))


if __name__ == "__main__":
    main()
