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


def _legacy_member_content(device_id: str, user_id: str, service_url: str) -> dict[str, Any]:
    return {
        "application": "m.call",
        "call_id": "",
        "scope": "m.room",
        "device_id": device_id,
        "membershipID": f"{user_id}:{device_id}",
        "expires": 14_400_000,
        "focus_active": {"type": "livekit", "focus_selection": "multi_sfu"},
        "foci_preferred": [{"type": "livekit", "livekit_service_url": service_url}],
    }


def _spec_key(room: str, member_id: str, index: int, raw: bytes) -> dict[str, Any]:
    """MSC4143's m.rtc.encryption_key content (unpadded base64, format 0)."""
    key = base64.b64encode(raw).decode().rstrip("=")
    return {
        "room_id": room,
        "member_id": member_id,
        "media_key": {"index": index, "key": key, "format": 0},
    }


async def test_spec_key_events_are_taken_from_olm_only(
    synapse: Synapse, jwt: DevSfu, tmp_path: Path
):
    """Issue 22: a real Olm peer (js-sdk's rust crypto) sends MSC4143 key events. Encrypted
    ones under both names are installed under its identity; one in clear, one naming another
    device's membership and an Element Call one claiming another device are not."""
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
            await wait_until(lambda: session.memberships, TIMEOUT, "alice's call")
            await session.join()
            # A second device of alice's in the call (posted by alice: receivers trust the
            # sender and the content's device_id, js session.ts).
            await alice.call(
                "send_state",
                room_id=room,
                type="org.matrix.msc3401.call.member",
                state_key=f"_{alice.user_id}_OTHERDEV_m.call",
                content=_legacy_member_content("OTHERDEV", alice.user_id, jwt.http_url),
            )
            await wait_until(lambda: len(session.memberships) == 3, TIMEOUT, "three members")
            alice_member = next(m for m in session.memberships if m.device_id == alice.device_id)
            other_member = next(m for m in session.memberships if m.device_id == "OTHERDEV")

            bot_dev = bot.matrix.device_id
            keys = {i: bytes([i]) * 32 for i in range(20, 26)}

            async def send(type_: str, content: dict[str, Any], encrypted: bool = True) -> None:
                await alice.call(
                    "send_to_device",
                    type=type_,
                    user_id=bot_account.user_id,
                    device_id=bot_dev,
                    content=content,
                    encrypted=encrypted,
                )

            spec = "m.rtc.encryption_key"
            await send(spec, _spec_key(room, alice_member.member_id, 20, keys[20]), encrypted=False)
            await send(spec, _spec_key(room, other_member.member_id, 21, keys[21]))
            element_call = {
                "keys": {"index": 22, "key": b64(keys[22])},
                "member": {"id": other_member.member_id, "claimed_device_id": "OTHERDEV"},
                "room_id": room,
                "session": {"application": "m.call", "call_id": "", "scope": "m.room"},
                "sent_ts": int(time.time() * 1000),
            }
            await send("io.element.call.encryption_keys", element_call)
            await send(spec, _spec_key(room, alice_member.member_id, 23, keys[23]))
            unstable = "org.matrix.msc4143.rtc.encryption_key"
            await send(unstable, _spec_key(room, alice_member.member_id, 24, keys[24]))

            def got(index: int) -> EncryptionKeyChanged | None:
                return next((k for k in received if not k.own and k.key.index == index), None)

            spec_key = await wait_until(lambda: got(23), TIMEOUT, "the spec key")
            unstable_key = await wait_until(lambda: got(24), TIMEOUT, "the unstable-name key")
            for k, index in ((spec_key, 23), (unstable_key, 24)):
                assert k.key.key == keys[index]
                assert k.identity == alice.identity
                assert k.membership is not None and k.membership.device_id == alice.device_id
            # Sent before those, in the same order: had they been taken, they would be here.
            assert got(20) is None, "a key sent in clear was installed"
            assert got(21) is None, "a key naming another device's membership was installed"
            assert got(22) is None, "a key claiming another device was installed"


async def test_keys_sent_in_both_forms_reach_js_and_a_spec_reader(
    synapse: Synapse, jwt: DevSfu, tmp_path: Path
):
    """rtc.key_event_format = "both": matrix-js-sdk 43 installs the 32-byte key from the
    Element Call form, and the same key arrives Olm-encrypted in the spec form."""
    bot_account = synapse.register("bot")
    async with js_peer(synapse, tmp_path, "alice") as alice:
        focus = {"type": "livekit", "livekit_service_url": jwt.http_url}
        rtc = {**own_sfu(jwt), "key_event_format": "both"}
        config = bot_config(synapse, bot_account, tmp_path / "data", rtc=rtc)
        async with running_bot(config) as bot:
            room = (await alice.call("create_room", invite=[bot_account.user_id]))["room_id"]
            await wait_until(lambda: room in bot.matrix.joined_rooms(), TIMEOUT, "bot in room")
            await alice.call("rtc_join", room_id=room, foci=[focus])
            session = bot.rtc.get_room_session(room)
            await wait_until(lambda: session.memberships, TIMEOUT, "alice's call")
            access = await session.join()
            from_bot = await _wait_key_from(alice, room, access.identity)
            own = session.own_key
            assert own is not None and len(own.key) == 32
            assert (from_bot["key"], from_bot["index"]) == (b64(own.key), own.index)
            spec = await alice.wait_event(
                lambda e: e["event"] == "to_device" and e["type"] == "m.rtc.encryption_key",
                timeout=TIMEOUT,
            )
            assert spec["encrypted"] and spec["sender"] == bot_account.user_id
            assert spec["sender_device"] == bot.matrix.device_id
            content = spec["content"]
            assert content["room_id"] == room
            assert content["member_id"] == f"{bot_account.user_id}:{bot.matrix.device_id}"
            media = content["media_key"]
            assert (media["index"], media["format"]) == (own.index, 0)
            assert "=" not in media["key"]  # unpadded, as MSC4143 says
            assert base64.b64decode(media["key"] + "=" * (-len(media["key"]) % 4)) == own.key
