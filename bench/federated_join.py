"""Joining a federated call: from a user's ``!join`` to the bot's first decrypted frame of both
the local and the remote participant.

    scripts/netns-run.sh .venv/bin/python -m bench.federated_join [--joins N]

Real parts (as tests/test_federated_call.py): two Synapses federating over TLS inside the
network namespace, each with its own dev SFU and JWT service; alice (matrix-js-sdk and a
livekit client) publishes on homeserver A's SFU, bob on B's; the bot is on A. Each join is a
new room. The clock is this process's, outside the bot: the ``!join`` is sent, and the time is
taken when a plugin of the bot's has been handed a decrypted frame of each. Prints each join,
then the median and the slowest, with the load average.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from pathlib import Path

from bot.log import setup_logging
from tests import lkclient
from tests.conftest import bot_config, running_bot
from tests.federation import federating_homeservers
from tests.jspeer import JsPeer
from tests.peer import wait_until
from tests.test_federated_call import _ask, _media
from tests.test_media import Listener
from tests.testca import TestCa

TIMEOUT = 60.0


async def measure(work: Path, joins: int) -> list[float]:
    addrs = os.environ.get("CALLBOT_NETNS_ADDRS", "")
    if not addrs:
        raise SystemExit("run inside scripts/netns-run.sh (needs its veth addresses)")
    first, second = addrs.split(",")
    times: list[float] = []
    with federating_homeservers(work, (first, second), TestCa(work / "ca")) as (a, b):
        sfu_a, sfu_b = await a.start_sfu(), await b.start_sfu()
        account = a.register("bot")
        config = bot_config(
            a.synapse, account, work / "data", outbound={"allow": [a.address, b.address]}
        )
        listener = Listener()
        async with running_bot(config) as bot:
            bot.media.add_plugin(lambda: listener)
            alice = await JsPeer(a.url, a.register("alice"), work / "alice").start()
            bob = await JsPeer(b.url, b.register("bob"), work / "bob").start()
            try:
                for i in range(joins):
                    invite = [bob.user_id, account.user_id]
                    room = (await alice.call("create_room", invite=invite, encrypted=True))[
                        "room_id"
                    ]
                    await bob.call("join_room", room_id=room)
                    await wait_until(lambda r=room: r in bot.matrix.joined_rooms(), TIMEOUT, "bot")
                    await alice.call("rtc_join", room_id=room, foci=[a.transport])
                    await bob.call("rtc_join", room_id=room, foci=[b.transport])
                    session = bot.rtc.get_room_session(room)
                    await wait_until(lambda s=session: len(s.memberships) == 2, TIMEOUT, "members")
                    tones = [lkclient.Tone(440), lkclient.Tone(660)]
                    clients = [
                        await _media(alice, a, room, tones[0]),
                        await _media(bob, b, room, tones[1]),
                    ]
                    listener.frames.clear()
                    started = time.monotonic()
                    await alice.call("send_text", room_id=room, body="!join")

                    def heard_both(r: str = room) -> bool:
                        users = {f.participant.user_id for f in listener.frames}
                        return {alice.user_id, bob.user_id} <= users

                    await wait_until(heard_both, TIMEOUT, "both participants' frames")
                    times.append(time.monotonic() - started)
                    print(f"join {i + 1}: {times[-1]:.2f} s", flush=True)
                    await _ask(alice, room, "!leave", bot)
                    for tone in tones:
                        await tone.stop()
                    for client in clients:
                        await client.close()
                    await alice.call("rtc_leave", room_id=room)
                    await bob.call("rtc_leave", room_id=room)
            finally:
                await bob.stop()
                await alice.stop()
                await sfu_b.stop()
                await sfu_a.stop()
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--joins", type=int, default=10)
    args = parser.parse_args()
    setup_logging("WARNING")
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="callbot-bench-fed-") as tmp:
        times = asyncio.run(measure(Path(tmp), args.joins))
    load_after = os.getloadavg()
    print(
        f"federated join, !join to the first decrypted frame of both the local and the remote "
        f"participant, {len(times)} joins: median {statistics.median(times):.2f} s, "
        f"slowest {max(times):.2f} s (load average {load_before[0]:.2f} before, "
        f"{load_after[0]:.2f} after)"
    )


if __name__ == "__main__":
    main()
