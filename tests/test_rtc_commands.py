"""!join, !leave and !status on a real Synapse, with a plain Matrix user typing them."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import nio
import pytest

from bot.matrix import rest
from bot.rtc import membership_manager
from bot.rtc.membership import DEFAULT_EXPIRE_MS, LEGACY_TYPE
from tests.conftest import bot_config, peer, running_bot
from tests.peer import Peer, wait_until
from tests.synapse import Synapse

CALLS_ALLOWED = {"events": {LEGACY_TYPE: 0}}
MINT = {
    "livekit_url": "ws://127.0.0.1:1",
    "livekit_api_key": "devkey",
    "livekit_api_secret": "a-secret-of-some-length-0123456789",
}


async def _room(alice: Peer, bot: str, **kwargs) -> str:
    room = await alice.create_room(invite=[bot], **kwargs)
    await alice.wait_member(room, bot)
    return room


async def _state(alice: Peer, room: str, state_key: str) -> dict:
    resp = await alice.client.room_get_state_event(room, LEGACY_TYPE, state_key)
    assert isinstance(resp, nio.RoomGetStateEventResponse), resp
    return resp.content


async def test_join_status_leave(synapse: Synapse, tmp_path: Path) -> None:
    account = synapse.register("bot")
    config = bot_config(synapse, account, tmp_path / "data", rtc=MINT)
    async with running_bot(config) as bot, peer(synapse, tmp_path, "alice") as alice:
        room = await _room(alice, account.user_id, power_level_override=CALLS_ALLOWED)
        user = account.user_id
        reply = await alice.ask(room, "!join", user)
        # Nobody was in the call, and the transport came from the homeserver (MSC4143).
        focus = f"http://127.0.0.1:{synapse.port + 1}"
        assert reply == f"Started the call (SFU via {focus}; 0 other members)."
        key = f"_{user}_{bot.matrix.device_id}_m.call"
        content = await _state(alice, room, key)
        assert content["device_id"] == bot.matrix.device_id
        assert content["foci_preferred"][0]["livekit_service_url"] == focus

        # The bot was the first member, so it sent the call notification.
        note = await wait_until(lambda: _find_notification(alice, room), what="notification")
        assert note["content"]["notification_type"] == "notification"
        assert note["content"]["m.relates_to"]["rel_type"] == "m.reference"

        status = await alice.ask(room, "!status", user)
        assert f"Call in {room}: joined, focus {focus}, my key index 0" in status
        assert f"{user} ({bot.matrix.device_id}): me" in status

        assert await alice.ask(room, "!join", user) == "I am already in this room's call."
        assert await alice.ask(room, "!leave", user) == "Left the call."
        assert await _state(alice, room, key) == {}
        assert await alice.ask(room, "!leave", user) == "I am not in this room's call."
        assert "Calls: none" in await alice.ask(room, "!status", user)


def _find_notification(alice: Peer, room: str) -> dict | None:
    for rid, event in alice.timeline:
        if rid == room and event.get("type") == "org.matrix.msc4075.rtc.notification":
            return event
    return None


async def test_join_explains_missing_power_level(synapse: Synapse, tmp_path: Path) -> None:
    account = synapse.register("bot")
    config = bot_config(synapse, account, tmp_path / "data", rtc=MINT)
    async with running_bot(config), peer(synapse, tmp_path, "alice") as alice:
        room = await _room(alice, account.user_id)  # default power levels: state needs 50
        reply = await alice.ask(room, "!join", account.user_id)
        assert reply.startswith(
            f"I cannot join the call: sending {LEGACY_TYPE} here needs power level 50 and I have 0."
        )
        assert '"Join Element calls"' in reply


async def test_without_delayed_events_the_bot_warns_once_and_relies_on_expiry(
    synapse: Synapse, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog
) -> None:
    caplog.set_level(logging.WARNING)

    async def no_features(client) -> dict[str, bool]:
        return {}

    monkeypatch.setattr(rest, "unstable_features", no_features)
    monkeypatch.setattr(membership_manager, "_warned_no_delayed_events", False)
    account = synapse.register("bot")
    config = bot_config(synapse, account, tmp_path / "data", rtc=MINT)
    async with running_bot(config) as bot, peer(synapse, tmp_path, "alice") as alice:
        rooms = [
            await _room(alice, account.user_id, power_level_override=CALLS_ALLOWED)
            for _ in range(2)
        ]
        for room in rooms:
            assert (await alice.ask(room, "!join", account.user_id)).startswith("Started the call")
        warnings = [r for r in caplog.records if "lacks delayed events" in r.getMessage()]
        assert len(warnings) == 1
        pending = await rest.request(bot.matrix.nio, "GET", f"{rest.MSC4140}/delayed_events")
        assert pending["delayed_events"] == []


async def test_refresh_and_watchdog(
    synapse: Synapse, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The membership is refreshed before it expires, and re-sent if someone removes it."""
    # Refresh 1 s after joining instead of after an hour.
    monkeypatch.setattr(membership_manager, "REFRESH_CAP_S", 6.0)
    account = synapse.register("bot")
    config = bot_config(synapse, account, tmp_path / "data", rtc=MINT)
    async with running_bot(config) as bot, peer(synapse, tmp_path, "alice") as alice:
        room = await _room(alice, account.user_id, power_level_override=CALLS_ALLOWED)
        await wait_until(lambda: room in bot.matrix.joined_rooms(), what="bot in room")
        session = bot.rtc.get_room_session(room)
        await session.join()
        key = f"_{account.user_id}_{bot.matrix.device_id}_m.call"
        first = await _state(alice, room, key)
        # A join states when it happened (js leaves it out, but then Synapse drops a re-join
        # identical to the current state: bot.rtc.membership_manager).
        assert first["expires"] == DEFAULT_EXPIRE_MS
        assert abs(first["created_ts"] - time.time() * 1000) < 60_000

        async def refreshed() -> dict:
            for _ in range(100):
                content = await _state(alice, room, key)
                if content.get("expires") == 2 * DEFAULT_EXPIRE_MS:
                    return content
                await asyncio.sleep(0.1)
            raise AssertionError("no refresh")

        again = await refreshed()
        assert again["created_ts"] == session.memberships[0].created_ts
        assert bot.rtc.get_active_room_session(room) is session

        # An admin clears the bot's membership (underscore state keys are not owned):
        # the watchdog notices it vanished and sends it again.
        resp = await alice.client.room_put_state(room, LEGACY_TYPE, {}, state_key=key)
        assert isinstance(resp, nio.RoomPutStateResponse), resp
        for _ in range(100):
            if (await _state(alice, room, key)).get("device_id") == bot.matrix.device_id:
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("the membership was not re-sent")
        await session.leave()


def _replies(alice: Peer, room: str, to_event: str, sender: str) -> list[str]:
    bodies = []
    for rid, ev in alice.messages:
        rel = ev.source.get("content", {}).get("m.relates_to", {})
        if (
            rid == room
            and ev.sender == sender
            and rel.get("m.in_reply_to", {}).get("event_id") == to_event
        ):
            bodies.append(ev.body)
    return bodies


async def test_call_limit_refuses_past_it(synapse: Synapse, tmp_path: Path) -> None:
    account = synapse.register("bot")
    config = bot_config(synapse, account, tmp_path / "data", rtc={**MINT, "max_calls": 1})
    async with running_bot(config), peer(synapse, tmp_path, "alice") as alice:
        user = account.user_id
        first, second = [
            await _room(alice, user, power_level_override=CALLS_ALLOWED) for _ in range(2)
        ]
        # A join that fails (no power level here) gives its slot back.
        no_power = await _room(alice, user)
        assert (await alice.ask(no_power, "!join", user)).startswith("I cannot join the call")
        assert (await alice.ask(first, "!join", user)).startswith("Started the call")
        assert await alice.ask(second, "!join", user) == (
            "I am in 1 call, the most I take at once (rtc.max_calls = 1), so I am not joining "
            "this one. Try again when one of them has ended."
        )
        status = await alice.ask(second, "!status", user)
        assert "In 1 call, at most 1 (rtc.max_calls); 1 joins refused for the limit" in status
        assert await alice.ask(first, "!leave", user) == "Left the call."
        assert (await alice.ask(second, "!join", user)).startswith("Started the call")
        await alice.ask(second, "!leave", user)


async def test_call_limit_queues_joins(synapse: Synapse, tmp_path: Path) -> None:
    account = synapse.register("bot")
    rtc = {**MINT, "max_calls": 1, "when_full": "queue"}
    config = bot_config(synapse, account, tmp_path / "data", rtc=rtc)
    async with running_bot(config) as bot, peer(synapse, tmp_path, "alice") as alice:
        user = account.user_id
        first, second, third = [
            await _room(alice, user, power_level_override=CALLS_ALLOWED) for _ in range(3)
        ]
        assert (await alice.ask(first, "!join", user)).startswith("Started the call")
        queued = await alice.send(second, "!join")
        reply = (await alice.next_reply(second, queued, user)).body
        assert reply == (
            "I am in 1 call, the most I take at once (rtc.max_calls = 1). I will join this "
            "one when one of them ends (1st in line); !leave withdraws it."
        )
        # The bounded line (max_calls long) is full: the next join is refused.
        assert (await alice.ask(third, "!join", user)).endswith(
            "1 more are already waiting. Try again later."
        )
        status = await alice.ask(first, "!status", user)
        assert f"In 1 call, at most 1 (rtc.max_calls); waiting to join: {second}" in status
        # The waiting join holds no command slot: commands still run meanwhile, and when
        # the first call ends the bot joins the second and answers the same !join.
        assert await alice.ask(first, "!leave", user) == "Left the call."
        await wait_until(
            lambda: len(_replies(alice, second, queued, user)) == 2, what="the queued join"
        )
        assert _replies(alice, second, queued, user)[1].startswith("Started the call")
        assert bot.rtc.get_room_session(second).is_joined

        # !leave withdraws a waiting join.
        assert (await alice.ask(third, "!join", user)).startswith("I am in 1 call")
        assert await alice.ask(third, "!leave", user) == (
            "I will not join this room's call after all (I was waiting)."
        )
        assert await alice.ask(second, "!leave", user) == "Left the call."
        assert not bot.rtc.get_room_session(third).is_joined
        assert bot.rtc.slots.in_use == 0 and bot.rtc.slots.waiting == []


async def test_a_leave_during_the_join_stops_it(synapse: Synapse, tmp_path: Path) -> None:
    """!leave while the JWT service is still answering: the join stops there, nothing of it
    is left in the room, and no "Joined" reply follows (it used to: "I am not in this room's
    call", then the bot joined anyway)."""
    from aiohttp import web

    arrived, release = asyncio.Event(), asyncio.Event()

    async def slow_token(request: web.Request) -> web.Response:
        arrived.set()
        await release.wait()
        return web.json_response({"url": "ws://127.0.0.1:1", "jwt": "x"})

    app = web.Application()
    app.router.add_post("/sfu/get", slow_token)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    account = synapse.register("bot")
    config = bot_config(
        synapse,
        account,
        tmp_path / "data",
        rtc={"livekit_service_url": f"http://127.0.0.1:{port}"},
        outbound={"allow": ["127.0.0.0/8"]},
    )
    try:
        async with running_bot(config) as bot, peer(synapse, tmp_path, "alice") as alice:
            user = account.user_id
            room = await _room(alice, user, power_level_override=CALLS_ALLOWED)
            join = await alice.send(room, "!join")
            await asyncio.wait_for(arrived.wait(), 20)
            assert await alice.ask(room, "!leave", user) == "I stopped joining this room's call."
            release.set()
            session = bot.rtc.get_room_session(room)
            assert not session.is_joined and not session.joining
            assert bot.rtc.slots.in_use == 0
            await asyncio.sleep(1.0)  # a join that went on would have replied by now
            assert not [ev for r, ev in alice.messages if r == room and "the call (SFU" in ev.body]
            key = f"_{user}_{bot.matrix.device_id}_m.call"
            resp = await alice.client.room_get_state_event(room, LEGACY_TYPE, key)
            assert not isinstance(resp, nio.RoomGetStateEventResponse) or not resp.content
            assert join  # the !join itself got no reply: the leave's answer says it all
    finally:
        release.set()
        await runner.cleanup()


SLOT_TYPE = "org.matrix.msc4143.rtc.slot"


async def test_a_closed_slot_is_not_joined(synapse: Synapse, tmp_path: Path) -> None:
    """Issue 22: a room whose MatrixRTC slot is closed (matrix-js-sdk 43's
    ensureRtcSlotClosed) gets a clear reply, and the call once it is open again."""
    account = synapse.register("bot")
    config = bot_config(synapse, account, tmp_path / "data", rtc=MINT)
    async with running_bot(config) as bot, peer(synapse, tmp_path, "alice") as alice:
        room = await _room(alice, account.user_id, power_level_override=CALLS_ALLOWED)
        closed = {"status": "closed", "application": {"type": "m.call"}}
        resp = await alice.client.room_put_state(room, SLOT_TYPE, closed, "m.call#ROOM")
        assert isinstance(resp, nio.RoomPutStateResponse), resp
        session = bot.rtc.get_room_session(room)
        await wait_until(lambda: session.slot is not None, what="the slot in the bot's sync")
        reply = await alice.ask(room, "!join", account.user_id)
        assert "closed" in reply and "will not join" in reply
        assert not session.is_joined
        opened = {"status": "open", "application": {"type": "m.call"}}
        await alice.client.room_put_state(room, SLOT_TYPE, opened, "m.call#ROOM")
        await wait_until(lambda: session.slot is not None and session.slot.open, what="open")
        assert (await alice.ask(room, "!join", account.user_id)).startswith("Started the call")
        assert await alice.ask(room, "!leave", account.user_id) == "Left the call."


async def test_status_shows_who_declined_the_call(synapse: Synapse, tmp_path: Path) -> None:
    """Issue 22: declines (MSC4310) of the bot's call notification show in !status."""
    account = synapse.register("bot")
    config = bot_config(synapse, account, tmp_path / "data", rtc=MINT)
    async with (
        running_bot(config) as bot,
        peer(synapse, tmp_path, "alice") as alice,
        peer(synapse, tmp_path, "bob") as bob,
    ):
        room = await _room(alice, account.user_id, power_level_override=CALLS_ALLOWED)
        await alice.invite(room, bob.user_id)
        await bob.join(room)
        assert (await alice.ask(room, "!join", account.user_id)).startswith("Started the call")
        note = await wait_until(lambda: _find_notification(alice, room), what="notification")
        assert note["content"]["slot_id"] == note["content"]["msc4354_sticky_key"] == "m.call#ROOM"
        decline = {
            "m.relates_to": {"rel_type": "m.reference", "event_id": note["event_id"]},
            "msc4354_sticky_key": note["event_id"],
        }
        resp = await bob.client.room_send(
            room, "org.matrix.msc4310.rtc.decline", decline, ignore_unverified_devices=True
        )
        assert isinstance(resp, nio.RoomSendResponse), resp
        session = bot.rtc.get_room_session(room)
        await wait_until(lambda: session.notifications.declines(), what="the decline")
        status = await alice.ask(room, "!status", account.user_id)
        assert f"declined: {bob.user_id}" in status
        await alice.ask(room, "!leave", account.user_id)
