"""The federated test bed (tests/federation.py): two real Synapses that federate over TLS with a
CA made at run time, each with its own dev SFU and JWT service, and matrix-js-sdk peers on both.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from livekit import rtc

from bot.devsfu import DevSfu
from bot.devsfu.auth import TokenAuthority
from bot.matrix.rest import TRANSPORTS_PATH
from bot.rtc.identity import hashed_identity, livekit_room_alias
from tests import lkclient
from tests.federation import SFU_PORT, Homeserver, openid_token, sfu_get
from tests.jspeer import JsPeer

TIMEOUT = 30.0
DEVICE = "JWTDEVICE"  # the JWT service does not check member device IDs
Pair = tuple[Homeserver, Homeserver]


async def js_peer_on(hs: Homeserver, tmp_path: Path, prefix: str) -> JsPeer:
    account = hs.register(prefix)
    return await JsPeer(hs.url, account, tmp_path / f"jspeer-{account.localpart}").start()


@pytest.fixture
async def peers(two_homeservers: Pair, tmp_path: Path) -> AsyncIterator[tuple[JsPeer, JsPeer]]:
    """alice on homeserver A and bob on B, in one encrypted room that alice made."""
    a, b = two_homeservers
    alice = await js_peer_on(a, tmp_path, "alice")
    try:
        bob = await js_peer_on(b, tmp_path, "bob")
        try:
            yield alice, bob
        finally:
            await bob.stop()
    finally:
        await alice.stop()


async def shared_room(alice: JsPeer, bob: JsPeer) -> str:
    # Synapse sends a remote invite over federation before /createRoom returns, and B's Synapse
    # joins through the inviter's server.
    room = (await alice.call("create_room", invite=[bob.user_id], encrypted=True))["room_id"]
    await bob.call("join_room", room_id=room)
    return room


async def decrypted(peer: JsPeer, event_id: str) -> dict[str, Any]:
    return await peer.wait_event(
        lambda e: e["event"] == "message" and e["event_id"] == event_id and e["body"] is not None,
        timeout=TIMEOUT,
    )


def _members(event: dict[str, Any]) -> set[tuple[str, str]]:
    return {(m["user_id"], m["device_id"]) for m in event["members"]}


async def test_users_of_two_homeservers_talk_in_an_encrypted_room(
    two_homeservers: Pair, peers: tuple[JsPeer, JsPeer]
) -> None:
    a, b = two_homeservers
    alice, bob = peers
    assert alice.user_id.endswith(f":{a.server_name}") and bob.user_id.endswith(f":{b.server_name}")
    room = await shared_room(alice, bob)
    # Megolm room keys go to the other homeserver's device as Olm-encrypted to-device messages.
    sent = (await alice.call("send_text", room_id=room, body="hello from A"))["event_id"]
    assert (await decrypted(bob, sent))["body"] == "hello from A"
    sent = (await bob.call("send_text", room_id=room, body="hello from B"))["event_id"]
    got = await decrypted(alice, sent)
    assert got["body"] == "hello from B" and got["encrypted"] is True


async def test_call_members_of_two_homeservers_trade_keys_and_name_their_own_sfus(
    two_homeservers: Pair, peers: tuple[JsPeer, JsPeer]
) -> None:
    a, b = two_homeservers
    alice, bob = peers
    room = await shared_room(alice, bob)
    await alice.call("rtc_join", room_id=room, foci=[a.transport])
    await bob.call("rtc_join", room_id=room, foci=[b.transport])

    both = {(alice.user_id, alice.device_id), (bob.user_id, bob.device_id)}
    seen = await alice.wait_event(
        lambda e: e["event"] == "memberships" and e["room_id"] == room and _members(e) == both,
        timeout=TIMEOUT,
    )
    # Each names its own homeserver's SFU, in Element Call's multi-SFU membership.
    state = (await alice.call("state_events", room_id=room))["events"]
    content = {e["sender"]: e["content"] for e in state}
    for peer, hs in ((alice, a), (bob, b)):
        assert content[peer.user_id]["focus_active"] == {
            "type": "livekit",
            "focus_selection": "multi_sfu",
        }
        assert content[peer.user_id]["foci_preferred"] == [{"livekit_alias": room, **hs.transport}]
    assert {m["user_id"] for m in seen["members"]} == {alice.user_id, bob.user_id}

    # The media keys: Olm-encrypted to-device messages across the federation, both ways.
    for receiver, sender in ((alice, bob), (bob, alice)):
        key = await receiver.wait_event(
            lambda e, s=sender: (
                e["event"] == "key" and e["room_id"] == room and e["identity"] == s.identity
            ),
            timeout=TIMEOUT,
        )
        assert (key["user_id"], key["device_id"]) == (sender.user_id, sender.device_id)


# --- the JWT services' federation rules ---------------------------------------------------------


async def new_user_token(hs: Homeserver, prefix: str) -> tuple[dict[str, Any], str]:
    """A new user's OpenID token and user ID."""
    account = hs.register(prefix)
    token = await openid_token(hs, account)
    assert token["matrix_server_name"] == hs.server_name
    return token, account.user_id


async def get_token(sfu: DevSfu, room: str, token: dict[str, Any], user: str):
    member = {"id": str(uuid.uuid4()), "claimed_user_id": user, "claimed_device_id": DEVICE}
    body = {"room_id": room, "slot_id": "m.call#ROOM", "openid_token": token, "member": member}
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{sfu.http_url}/get_token", json=body) as resp,
    ):
        return resp.status, await resp.json(), member["id"]


async def signal_status(sfu: DevSfu, jwt: str) -> int:
    """The HTTP status of a signalling connection with ``jwt`` (101 when it is accepted)."""
    async with aiohttp.ClientSession() as http:
        try:
            async with http.ws_connect(
                f"{sfu.http_url}/rtc", headers={"Authorization": f"Bearer {jwt}"}
            ):
                return 101
        except aiohttp.WSServerHandshakeError as e:
            return e.status


async def test_each_jwt_service_gives_remote_users_subscribe_only_tokens(
    two_homeservers: Pair, two_sfus: tuple[DevSfu, DevSfu]
) -> None:
    a, b = two_homeservers
    sfu_a, sfu_b = two_sfus
    room = "!call:" + a.server_name
    alias = livekit_room_alias(room, "m.call#ROOM")
    for hs, own_sfu in ((a, sfu_a), (b, sfu_b)):
        token, user = await new_user_token(hs, "jwt")
        remote_token, remote_user = await new_user_token(b if hs is a else a, "jwtremote")
        # A remote user's token is checked at their own homeserver, over federation TLS: before
        # any of the service's own users asked, the room does not exist for them to join.
        status, body, member_id = await get_token(own_sfu, room, remote_token, remote_user)
        assert status == 200, body
        remote = TokenAuthority().verify(body["jwt"])
        assert remote.identity == hashed_identity(remote_user, DEVICE, member_id, go=True)
        assert remote.room == alias
        assert (remote.can_publish, remote.can_subscribe) == (False, True)
        assert await signal_status(own_sfu, body["jwt"]) == 404

        status, body, _ = await get_token(own_sfu, room, token, user)
        assert status == 200, body
        local = TokenAuthority().verify(body["jwt"])
        assert local.can_publish and local.can_subscribe and local.can_update_metadata
        # The own user's request created the room; now the remote user may join it.
        assert await signal_status(own_sfu, TokenAuthority().mint(remote.identity, alias)) == 101


async def test_each_homeserver_advertises_its_own_jwt_service(two_homeservers: Pair) -> None:
    for hs in two_homeservers:
        account = hs.register("transports")
        login = {
            "type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": account.localpart},
            "password": account.password,
        }
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{hs.url}/_matrix/client/v3/login", json=login) as resp:
                session = await resp.json()
            headers = {"Authorization": f"Bearer {session['access_token']}"}
            async with http.get(f"{hs.url}{TRANSPORTS_PATH}", headers=headers) as resp:
                assert resp.status == 200, await resp.text()
                assert (await resp.json())["rtc_transports"] == [hs.transport]


async def test_a_forged_remote_openid_token_is_refused(
    two_homeservers: Pair, two_sfus: tuple[DevSfu, DevSfu]
) -> None:
    a, b = two_homeservers
    sfu_a, _ = two_sfus
    token, user = await new_user_token(b, "forger")
    forged = {**token, "access_token": "forged" + token["access_token"][6:]}
    status, body, _ = await get_token(sfu_a, "!r:x", forged, user)
    assert (status, body["errcode"]) == (401, "M_UNAUTHORIZED")
    # A token of B's user presented as one of A's: checked at A, which does not know it.
    claims_a = {**token, "matrix_server_name": a.server_name}
    status, body, _ = await get_token(sfu_a, "!r:x", claims_a, user)
    assert (status, body["errcode"]) == (401, "M_UNAUTHORIZED")


# --- a federated call with media ----------------------------------------------------------------


async def own_key(peer: JsPeer, room: str) -> tuple[bytes, int]:
    e = await peer.wait_event(
        lambda e: e["event"] == "key" and e["room_id"] == room and e["own"], TIMEOUT
    )
    return base64.b64decode(e["key"]), e["index"]


async def key_of(peer: JsPeer, room: str, sender: JsPeer) -> tuple[bytes, int]:
    e = await peer.wait_event(
        lambda e: e["event"] == "key" and e["room_id"] == room and e["identity"] == sender.identity,
        TIMEOUT,
    )
    return base64.b64decode(e["key"]), e["index"]


async def test_members_publish_on_their_own_sfu_and_hear_each_other_through_the_other(
    two_homeservers: Pair, two_sfus: tuple[DevSfu, DevSfu], tmp_path: Path
) -> None:
    """What Element Call 0.26 does in a federated call, and what the bot will join: each
    member publishes on its own homeserver's SFU and subscribes (subscribe-only) on the other's.
    """
    a, b = two_homeservers
    sfu_a, sfu_b = two_sfus
    alice = await js_peer_on(a, tmp_path, "alice")
    bob = await js_peer_on(b, tmp_path, "bob")
    clients: list[lkclient.Client] = []
    tones: list[lkclient.Tone] = []
    probes: list[lkclient.AudioProbe] = []
    try:
        room = await shared_room(alice, bob)
        await alice.call("rtc_join", room_id=room, foci=[a.transport])
        await bob.call("rtc_join", room_id=room, foci=[b.transport])
        tokens = {
            alice: await openid_token(a, alice.account),
            bob: await openid_token(b, bob.account),
        }

        async def join(peer: JsPeer, hs: Homeserver, publish: bool) -> lkclient.Client:
            url, jwt = await sfu_get(hs.jwt_url, tokens[peer], room, peer.device_id)
            assert url == f"ws://{hs.address}:{SFU_PORT}"
            grant = TokenAuthority().verify(jwt)
            assert (grant.identity, grant.can_publish) == (peer.identity, publish)
            client = await lkclient.connect(url, peer.identity, "", keys={}, jwt=jwt)
            clients.append(client)
            return client

        # Publishing, each on its own homeserver's SFU.
        for peer, hs, freq in ((alice, a, 440), (bob, b, 660)):
            client = await join(peer, hs, publish=True)
            client.set_key(peer.identity, *await own_key(peer, room))
            tone = lkclient.Tone(freq)
            tones.append(tone)
            await tone.publish(client)

        # Subscribing to the other's SFU, with a token from that SFU's JWT service.
        for peer, hs, other, freq in ((alice, b, bob, 660), (bob, a, alice, 440)):
            client = await join(peer, hs, publish=False)
            client.set_key(other.identity, *await key_of(peer, room, other))
            track = await client.track(other.identity, rtc.TrackKind.KIND_AUDIO, TIMEOUT)
            probe = lkclient.AudioProbe(track)
            probes.append(probe)
            heard = await probe.tone(near=freq, timeout=TIMEOUT)
            assert abs(heard.freq - freq) < lkclient.TONE_TOLERANCE

        # On each SFU: its own member publishing, the remote one subscribed and not publishing.
        for sfu, local, remote in ((sfu_a, alice, bob), (sfu_b, bob, alice)):
            [publisher] = sfu.participants(local.identity)
            [subscriber] = sfu.participants(remote.identity)
            assert publisher.can_publish and publisher.published
            assert not subscriber.can_publish and not subscriber.published
    finally:
        for probe in probes:
            await probe.close()
        for tone in tones:
            await tone.stop()
        for client in clients:
            await client.close()
        await bob.stop()
        await alice.stop()
