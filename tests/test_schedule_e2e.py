"""Scheduled calls end to end: real Synapse, the bot, and matrix-js-sdk (the reference peer)
watching the bot's call membership appear and go."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import pytest

from tests.botproc import MINTED_RTC, BotProcess, write_config
from tests.conftest import bot_config, running_bot
from tests.jspeer import JsPeer, js_peer
from tests.peer import wait_until
from tests.synapse import Synapse

TIMEOUT = 30.0
MINT = {
    "livekit_url": "ws://127.0.0.1:1",
    "livekit_api_key": "devkey",
    "livekit_api_secret": "a-secret-of-some-length-0123456789",
}
#: alice's call goes through a focus nobody connects to (no plugins here, so no media)
FOCUS = {"type": "livekit", "livekit_service_url": "http://127.0.0.1:9/unused"}


def _users(event: dict[str, Any]) -> set[str]:
    return {m["user_id"] for m in event["members"]}


async def _wait_users(alice: JsPeer, room: str, users: set[str], since: int) -> dict[str, Any]:
    return await alice.wait_event(
        lambda e: e["event"] == "memberships" and e["room_id"] == room and _users(e) == users,
        timeout=TIMEOUT,
        since=since,
    )


async def test_a_job_fires_the_bot_leaves_after_its_duration_and_when_everyone_left(
    synapse: Synapse, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a test cannot wait the minute a real schedule lasts at least
    monkeypatch.setattr("bot.schedule.when.MIN_DURATION_S", 1)
    account = synapse.register("bot")
    rtc = {**MINT, "auto_leave_grace": 0.5, "wait_for_participants": 120.0}
    config = bot_config(synapse, account, tmp_path / "data", rtc=rtc)
    async with js_peer(synapse, tmp_path, "alice") as alice, running_bot(config) as bot:
        room = (await alice.call("create_room", invite=[account.user_id], encrypted=False))[
            "room_id"
        ]
        await wait_until(lambda: room in bot.matrix.joined_rooms(), TIMEOUT, "bot in room")
        assert bot.jobs is not None
        mark = alice.mark()
        await alice.call("send_text", room_id=room, body="!schedule in 2s for 3s")
        (job,) = await wait_until(lambda: bot.jobs.jobs(room), TIMEOUT, "the job")
        assert job.user_id == alice.user_id and job.description.endswith(", for 3s")

        # The job fires: the bot starts the call, and js sees its membership ...
        await _wait_users(alice, room, {account.user_id}, mark)
        assert job.next_run is not None
        print(f"membership seen by js {time.time() - job.next_run.timestamp():.2f} s after due")
        assert bot.jobs.jobs(room) == []
        # ... and nobody joined, so only the duration (3 s; not the 120 s wait) ends it.
        await _wait_users(alice, room, set(), mark)

        # Auto-leave applies to a call joined by command too: alice joins and leaves again.
        await alice.call("rtc_join", room_id=room, foci=[FOCUS])
        await alice.call("send_text", room_id=room, body="!join")
        mark = alice.mark()
        await _wait_users(alice, room, {alice.user_id, account.user_id}, 0)
        session = bot.rtc.get_room_session(room)
        await alice.call("rtc_leave", room_id=room)
        await _wait_users(alice, room, set(), mark)
        assert not session.is_joined


async def test_a_job_survives_a_restart_of_the_bot_process(
    synapse: Synapse, tmp_path: Path
) -> None:
    account = synapse.register("bot")
    cfg = write_config(tmp_path / "config.toml", synapse.url, account, MINTED_RTC)
    async with js_peer(synapse, tmp_path, "alice") as alice:
        first = await BotProcess(cfg).start()
        try:
            room = (await alice.call("create_room", invite=[account.user_id], encrypted=False))[
                "room_id"
            ]
            await wait_until(lambda: first.logged("joined on invite"), TIMEOUT, "bot in room")
            await alice.call("send_text", room_id=room, body="!schedule in 6s")
            await wait_until(
                lambda: any(e["msg"].startswith("scheduled a call") for e in first.entries),
                TIMEOUT,
                "the job to be stored",
            )
        finally:
            assert await first.stop(signal.SIGTERM) == 0
        assert not any("fired" in e["msg"] for e in first.entries)

        mark = alice.mark()
        second = await BotProcess(cfg).start()
        try:
            await _wait_users(alice, room, {account.user_id}, mark)
            assert any(
                e["msg"].startswith("scheduled call") and e["msg"].endswith("fired")
                for e in second.entries
            )
        finally:
            await second.stop(signal.SIGTERM)
