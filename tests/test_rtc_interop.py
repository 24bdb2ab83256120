"""The bot in calls with matrix-js-sdk's MatrixRTCSession (the reference peer), on Synapse."""

from __future__ import annotations

import base64
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from bot.devsfu.server import DevSfu
from bot.rtc.commands import describe
from bot.rtc.identity import livekit_room_alias
from bot.rtc.session import EncryptionKeyChanged
from tests.botproc import MINTED_RTC, BotProcess, write_config
from tests.conftest import bot_config, running_bot
from tests.jspeer import JsPeer, js_peer
from tests.peer import wait_until
from tests.synapse import Synapse

TIMEOUT = 30.0


@pytest.fixture
async def jwt(synapse: Synapse) -> AsyncIterator[DevSfu]:
    """The dev SFU's MatrixRTC JWT service (media is not used here), checking OpenID tokens
    against the test Synapse."""
    sfu = DevSfu(homeserver=synapse.url)
    await sfu.start("127.0.0.1")
    yield sfu
    await sfu.stop()


def _members(event: dict[str, Any]) -> set[tuple[str, str]]:
    return {(m["user_id"], m["device_id"]) for m in event["members"]}


async def _wait_members(peer: JsPeer, room: str, want: set[tuple[str, str]], since: int = 0):
    return await peer.wait_event(
        lambda e: e["event"] == "memberships" and e["room_id"] == room and _members(e) == want,
        timeout=TIMEOUT,
        since=since,
    )


async def _wait_key_from(peer: JsPeer, room: str, identity: str, index: int | None = None):
    return await peer.wait_event(
        lambda e: (
            e["event"] == "key"
            and e["room_id"] == room
            and not e["own"]
            and e["identity"] == identity
            and (index is None or e["index"] == index)
        ),
        timeout=TIMEOUT,
    )


async def _wait_own_key(peer: JsPeer, room: str, index: int):
    return await peer.wait_event(
        lambda e: e["event"] == "key" and e["room_id"] == room and e["own"] and e["index"] == index,
        timeout=TIMEOUT,
    )


def own_sfu(jwt: DevSfu) -> dict[str, str]:
    """The dev JWT service as the bot's own: a focus a member chose is used only if the
    config trusts it (bot.outbound), and alice's is this one."""
    return {"livekit_service_url": jwt.http_url}


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


async def test_bot_joins_a_js_call_and_keys_flow_both_ways(
    synapse: Synapse, jwt: DevSfu, tmp_path: Path
):
    bot_account = synapse.register("bot")
    async with js_peer(synapse, tmp_path, "alice") as alice:
        focus = {"type": "livekit", "livekit_service_url": jwt.http_url}
        config = bot_config(synapse, bot_account, tmp_path / "data", rtc=own_sfu(jwt))
        async with running_bot(config) as bot:
            room = (await alice.call("create_room", invite=[bot_account.user_id]))["room_id"]
            await wait_until(lambda: room in bot.matrix.joined_rooms(), TIMEOUT, "bot in room")
            await alice.call("rtc_join", room_id=room, foci=[focus])

            session = bot.rtc.get_room_session(room)
            received: list[EncryptionKeyChanged] = []
            session.encryption_key_changed.connect(received.append)
            await wait_until(lambda: session.memberships, TIMEOUT, "the bot to see alice's call")
            assert [(m.user_id, m.device_id) for m in session.memberships] == [
                (alice.user_id, alice.device_id)
            ]
            assert session.memberships[0].rtc_backend_identity == alice.identity

            notified: list[dict] = []
            session.call_notification_sent.connect(notified.append)
            access = await session.join()

            # It followed alice's focus and exchanged an OpenID token for its LiveKit token.
            assert access.transport["livekit_service_url"] == jwt.http_url
            grant = jwt.authority.verify(access.jwt)
            assert grant.identity == access.identity
            assert grant.identity == f"{bot_account.user_id}:{bot.matrix.device_id}"
            assert grant.room == livekit_room_alias(room, "m.call#ROOM")

            # alice (js) sees the bot's membership, and the bot sees both.
            both = {(alice.user_id, alice.device_id), (bot_account.user_id, bot.matrix.device_id)}
            seen = await _wait_members(alice, room, both)
            bot_member = next(m for m in seen["members"] if m["user_id"] == bot_account.user_id)
            assert bot_member["rtc_backend_identity"] == access.identity
            assert bot_member["transport"]["livekit_service_url"] == jwt.http_url
            await wait_until(lambda: len(session.memberships) == 2, TIMEOUT, "both members")

            # The bot's key reaches alice byte for byte, at the same index.
            from_bot = await _wait_key_from(alice, room, access.identity)
            own = session.own_key
            assert own is not None
            assert (from_bot["key"], from_bot["index"]) == (b64(own.key), own.index)
            assert any(k.own and k.key == own for k in received)

            # alice's key reaches the bot byte for byte, under her identity.
            alice_key = await wait_until(
                lambda: next((k for k in received if not k.own), None), TIMEOUT, "alice's key"
            )
            alice_own = await _wait_own_key(alice, room, alice_key.key.index)
            assert b64(alice_key.key.key) == alice_own["key"]
            assert alice_key.identity == alice.identity
            assert alice_key.membership.user_id == alice.user_id

            # On the wire: what Element Call's compatibility mode sends.
            state = (await alice.call("state_events", room_id=room))["events"]
            mine = next(e for e in state if e["sender"] == bot_account.user_id)
            assert mine["state_key"] == f"_{bot_account.user_id}_{bot.matrix.device_id}_m.call"
            content = mine["content"]
            assert content["focus_active"] == {"type": "livekit", "focus_selection": "multi_sfu"}
            assert content["foci_preferred"] == [{**focus, "livekit_alias": room}]
            assert content["device_id"] == bot.matrix.device_id
            assert content["application"] == "m.call" and content["call_id"] == ""

            status = "\n".join(describe(session))
            assert f"{alice.user_id} ({alice.device_id}): key received" in status
            assert f"my key index {own.index}" in status and jwt.http_url in status

            assert notified == []  # alice started the call, so the bot does not notify

            mark = alice.mark()
            assert await session.leave(5.0)
            await _wait_members(alice, room, {(alice.user_id, alice.device_id)}, since=mark)
            assert not session.is_joined


async def test_keys_rotate_when_a_js_peer_leaves(synapse: Synapse, jwt: DevSfu, tmp_path: Path):
    bot_account = synapse.register("bot")
    async with (
        js_peer(synapse, tmp_path, "alice") as alice,
        js_peer(synapse, tmp_path, "bob") as bob,
    ):
        focus = {"type": "livekit", "livekit_service_url": jwt.http_url}
        config = bot_config(synapse, bot_account, tmp_path / "data", rtc=own_sfu(jwt))
        async with running_bot(config) as bot:
            invite = [bot_account.user_id, bob.user_id]
            room = (await alice.call("create_room", invite=invite))["room_id"]
            await bob.call("join_room", room_id=room)
            await wait_until(lambda: room in bot.matrix.joined_rooms(), TIMEOUT, "bot in room")
            await alice.call("rtc_join", room_id=room, foci=[focus])
            await bob.call("rtc_join", room_id=room, foci=[focus])
            session = bot.rtc.get_room_session(room)
            received: list[EncryptionKeyChanged] = []
            session.encryption_key_changed.connect(received.append)
            await wait_until(lambda: len(session.memberships) == 2, TIMEOUT, "alice and bob")
            await session.join()
            first = await _wait_key_from(alice, room, session.own_identity)
            assert first["index"] == 0

            t0 = time.monotonic()
            await bob.call("rtc_leave", room_id=room)
            # The bot rotates: a new key, index 1, to alice (the only one left).
            rotated = await _wait_key_from(alice, room, session.own_identity, index=1)
            rotation_s = time.monotonic() - t0
            await wait_until(lambda: session.own_key and session.own_key.index == 1, TIMEOUT)
            assert rotated["key"] == b64(session.own_key.key)
            assert rotated["key"] != first["key"]
            # ... and alice's rotated key reaches the bot.
            alice_new = await wait_until(
                lambda: next(
                    (
                        k
                        for k in received
                        if not k.own and k.identity == alice.identity and k.key.index == 1
                    ),
                    None,
                ),
                TIMEOUT,
                "alice's rotated key",
            )
            assert b64(alice_new.key.key) == (await _wait_own_key(alice, room, 1))["key"]
            print(f"bot key rotation seen by alice {rotation_s * 1000:.0f} ms after bob left")


async def test_sigkilled_bot_leaves_through_the_delayed_event(synapse: Synapse, tmp_path: Path):
    bot_account = synapse.register("bot")
    async with js_peer(synapse, tmp_path, "alice") as alice:
        focus = {"type": "livekit", "livekit_service_url": "http://127.0.0.1:9/unused"}
        cfg = write_config(tmp_path / "config.toml", synapse.url, bot_account, MINTED_RTC)
        bot = await BotProcess(cfg).start()
        try:
            room = (await alice.call("create_room", invite=[bot_account.user_id], encrypted=False))[
                "room_id"
            ]
            await wait_until(lambda: bot.logged("joined on invite"), TIMEOUT)
            await alice.call("rtc_join", room_id=room, foci=[focus])
            await alice.call("send_text", room_id=room, body="!join")
            seen = await alice.wait_event(
                lambda e: e["event"] == "memberships" and len(e["members"]) == 2, TIMEOUT
            )
            assert bot_account.user_id in {m["user_id"] for m in seen["members"]}
            mark = alice.mark()
            t0 = time.monotonic()
            await bot.stop(signal.SIGKILL)
            await _wait_members(alice, room, {(alice.user_id, alice.device_id)}, since=mark)
            gone_s = time.monotonic() - t0
            # Without the delayed leave the membership would stay until it expires (4 h).
            print(f"membership gone {gone_s:.1f} s after SIGKILL")
        finally:
            await bot.stop(signal.SIGKILL)


async def test_sticky_memberships_with_a_matrix_2_0_js_peer(
    synapse: Synapse, jwt: DevSfu, tmp_path: Path
):
    """Element Call's "matrix_2_0" mode: sticky rtc.member events and hashed identities."""
    bot_account = synapse.register("bot")
    async with js_peer(synapse, tmp_path, "alice") as alice:
        focus = {"type": "livekit", "livekit_service_url": jwt.http_url}
        config = bot_config(
            synapse,
            bot_account,
            tmp_path / "data",
            rtc={"membership_format": "sticky", **own_sfu(jwt)},
        )
        async with running_bot(config) as bot:
            room = (await alice.call("create_room", invite=[bot_account.user_id]))["room_id"]
            await wait_until(lambda: room in bot.matrix.joined_rooms(), TIMEOUT, "bot in room")
            await alice.call(
                "rtc_join", room_id=room, foci=[focus], config={"unstableSendStickyEvents": True}
            )
            session = bot.rtc.get_room_session(room)
            received: list[EncryptionKeyChanged] = []
            session.encryption_key_changed.connect(received.append)
            await wait_until(lambda: session.memberships, TIMEOUT, "alice's sticky membership")
            (alice_member,) = session.memberships
            assert alice_member.kind == "rtc"
            assert len(alice_member.rtc_backend_identity) == 43  # the hash, not user:device

            access = await session.join()
            # /get_token with our member ID; the identity is the hash the service issues.
            grant = jwt.authority.verify(access.jwt)
            assert access.identity == session.own_identity == grant.identity
            assert grant.room == livekit_room_alias(room, "m.call#ROOM")

            seen = await alice.wait_event(
                lambda e: e["event"] == "memberships" and len(e["members"]) == 2, TIMEOUT
            )
            bot_member = next(m for m in seen["members"] if m["user_id"] == bot_account.user_id)
            assert bot_member["rtc_backend_identity"] == access.identity
            from_bot = await _wait_key_from(alice, room, access.identity)
            assert from_bot["key"] == b64(session.own_key.key)
            alice_key = await wait_until(
                lambda: next((k for k in received if not k.own), None), TIMEOUT, "alice's key"
            )
            assert alice_key.identity == alice_member.rtc_backend_identity
            own = await _wait_own_key(alice, room, alice_key.key.index)
            assert b64(alice_key.key.key) == own["key"]

            mark = alice.mark()
            assert await session.leave(5.0)
            await alice.wait_event(
                lambda e: e["event"] == "memberships" and len(e["members"]) == 1,
                TIMEOUT,
                since=mark,
            )
