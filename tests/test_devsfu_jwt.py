"""The dev SFU's MatrixRTC JWT service against a real Synapse: OpenID tokens in, LiveKit
tokens for the identities and rooms every MatrixRTC client expects out."""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
from livekit.protocol import rtc as lk
from multidict import CIMultiDictProxy

from bot.devsfu import DevSfu
from bot.devsfu.auth import TokenAuthority
from bot.devsfu.userinfo import FederationResolver, OpenIdRefused
from bot.rtc.identity import hashed_identity, legacy_identity, livekit_room_alias
from tests.synapse import Account, Synapse

# MSC4195's test vector: the room alias of ["!roomid:example.com", "slot1234"]
VECTOR_ROOM, VECTOR_SLOT = "!roomid:example.com", "slot1234"
VECTOR_ALIAS = "O8437W3+jmzMVjoIP3tNwbm+XxHQk2iKpOA7aqw3qSc"
TOKEN = {"access_token": "t", "matrix_server_name": "x"}  # well-formed, never checked


@pytest.fixture
async def sfu(synapse: Synapse) -> AsyncIterator[DevSfu]:
    server = DevSfu(homeserver=synapse.url)
    await server.start("127.0.0.1", 0)
    yield server
    await server.stop()


async def openid_token(synapse: Synapse, account: Account) -> tuple[dict[str, Any], str]:
    """A fresh OpenID token of ``account`` (as Element Call requests one) and its device."""
    login = {
        "type": "m.login.password",
        "identifier": {"type": "m.id.user", "user": account.localpart},
        "password": account.password,
    }
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{synapse.url}/_matrix/client/v3/login", json=login) as resp:
            session = await resp.json()
        url = f"{synapse.url}/_matrix/client/v3/user/{quote(account.user_id)}/openid/request_token"
        headers = {"Authorization": f"Bearer {session['access_token']}"}
        async with http.post(url, json={}, headers=headers) as resp:
            assert resp.status == 200, await resp.text()
            return await resp.json(), session["device_id"]


Answer = tuple[int, dict[str, Any], "CIMultiDictProxy[str]"]


async def post(sfu: DevSfu, path: str, body: Any) -> Answer:
    data = body if isinstance(body, bytes) else None
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{sfu.http_url}{path}", json=None if data else body, data=data) as resp,
    ):
        return resp.status, await resp.json(content_type=None), resp.headers


async def joins_as(sfu: DevSfu, jwt: str) -> str:
    """The identity the SFU gives a signalling client presenting ``jwt``."""
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(f"{sfu.http_url}/rtc", headers={"Authorization": f"Bearer {jwt}"}) as ws,
    ):
        msg = await ws.receive(timeout=5)
        return lk.SignalResponse.FromString(msg.data).join.participant.identity


async def test_sfu_get_issues_the_legacy_identity(sfu: DevSfu, synapse: Synapse) -> None:
    account = synapse.register("jwtlegacy")
    token, device = await openid_token(synapse, account)
    room_id = "!call:localhost"
    status, body, headers = await post(
        sfu, "/sfu/get", {"room": room_id, "openid_token": token, "device_id": device}
    )
    assert status == 200, body
    assert body["url"] == sfu.url
    assert headers["Access-Control-Allow-Origin"] == "*"
    grant = TokenAuthority().verify(body["jwt"])
    assert grant.identity == legacy_identity(account.user_id, device)
    assert grant.room == livekit_room_alias(room_id, "m.call#ROOM")
    assert grant.can_publish and grant.can_subscribe and grant.can_update_metadata
    assert await joins_as(sfu, body["jwt"]) == f"{account.user_id}:{device}"


async def test_get_token_issues_the_hashed_identity(sfu: DevSfu, synapse: Synapse) -> None:
    account = synapse.register("jwthashed")
    token, device = await openid_token(synapse, account)
    member = {"id": str(uuid.uuid4()), "claimed_user_id": account.user_id}
    member["claimed_device_id"] = device
    request = {"room_id": VECTOR_ROOM, "slot_id": VECTOR_SLOT, "openid_token": token}
    status, body, _ = await post(sfu, "/get_token", {**request, "member": member})
    assert status == 200, body
    grant = TokenAuthority().verify(body["jwt"])
    assert grant.identity == hashed_identity(account.user_id, device, member["id"], go=True)
    assert grant.room == VECTOR_ALIAS
    assert await joins_as(sfu, body["jwt"]) == grant.identity


async def test_forged_and_foreign_openid_tokens_are_refused(sfu: DevSfu, synapse: Synapse) -> None:
    account = synapse.register("jwtforged")
    token, device = await openid_token(synapse, account)
    forged = {**token, "access_token": "forged" + token["access_token"][6:]}
    elsewhere = {**token, "matrix_server_name": "example.org"}  # a user of another server
    for bad in (forged, elsewhere):
        status, body, _ = await post(sfu, "/sfu/get", {"room": "!r:localhost", "openid_token": bad})
        assert (status, body["errcode"]) == (401, "M_UNAUTHORIZED")
    member = {"id": "m", "claimed_user_id": "@someone-else:localhost", "claimed_device_id": device}
    request = {"room_id": "!r:localhost", "slot_id": "s", "openid_token": token, "member": member}
    status, body, _ = await post(sfu, "/get_token", request)
    assert (status, body["errcode"]) == (401, "M_UNAUTHORIZED")  # not the token's user


async def test_expired_openid_tokens_are_refused(sfu: DevSfu, synapse: Synapse) -> None:
    account = synapse.register("jwtexpired")
    token, device = await openid_token(synapse, account)
    # Synapse's tokens live an hour; age this one in its database instead of waiting.
    with sqlite3.connect(synapse.dir / "homeserver.db", timeout=10) as db:
        db.execute(
            "UPDATE open_id_tokens SET ts_valid_until_ms = 0 WHERE token = ?",
            (token["access_token"],),
        )
    request = {"room": "!r:localhost", "openid_token": token, "device_id": device}
    status, body, _ = await post(sfu, "/sfu/get", request)
    assert (status, body["errcode"]) == (401, "M_UNAUTHORIZED")


@pytest.mark.parametrize(
    ("path", "body", "status", "errcode"),
    [
        ("/sfu/get", b"not json", 400, "M_NOT_JSON"),
        ("/sfu/get", {"room": "!r:x", "unknown": 1}, 400, "M_NOT_JSON"),
        ("/sfu/get", {"room": 7}, 400, "M_NOT_JSON"),
        ("/sfu/get", {"openid_token": TOKEN}, 400, "M_BAD_JSON"),
        ("/sfu/get", {"room": "!r:x", "openid_token": {"access_token": "t"}}, 400, "M_BAD_JSON"),
        ("/sfu/get", {"room": "!r", "openid_token": TOKEN, "delay_id": "d"}, 400, "M_BAD_JSON"),
        ("/get_token", {"room_id": "!r:x", "slot_id": "s"}, 400, "M_BAD_JSON"),
        ("/get_token", {"room_id": "!r:x", "member": {"id": "m"}}, 400, "M_BAD_JSON"),
        ("/get_token", {"room_id": "!r:x", "member": {"idd": "m"}}, 400, "M_NOT_JSON"),
    ],
)  # fmt: skip
async def test_malformed_requests(
    sfu: DevSfu, path: str, body: Any, status: int, errcode: str
) -> None:
    got_status, got, headers = await post(sfu, path, body)
    assert (got_status, got["errcode"]) == (status, errcode)
    assert headers["Access-Control-Allow-Origin"] == "*"


async def test_delegating_delayed_leaves_is_refused(sfu: DevSfu, synapse: Synapse) -> None:
    account = synapse.register("jwtdelay")
    token, device = await openid_token(synapse, account)
    request = {"room": "!r:localhost", "openid_token": token, "device_id": device}
    status, body, _ = await post(sfu, "/sfu/get", {**request, "delay_id": "d", "delay_timeout": 5})
    assert (status, body["errcode"]) == (400, "M_BAD_JSON")
    assert "full access" in body["error"]


async def test_methods_and_preflight(sfu: DevSfu) -> None:
    async with aiohttp.ClientSession() as http:
        for path in ("/sfu/get", "/get_token"):
            async with http.get(f"{sfu.http_url}{path}") as resp:
                assert resp.status == 405
            async with http.options(f"{sfu.http_url}{path}") as resp:
                assert resp.status == 200
                assert resp.headers["Access-Control-Allow-Origin"] == "*"
                assert resp.headers["Access-Control-Allow-Methods"] == "POST"


# --- lk-jwt-service's rules for other homeservers' users ----------------------------------------


@pytest.mark.parametrize(
    ("server_name", "full_access", "publishes"),
    [
        (None, None, True),  # told no server name: one homeserver, everyone full access
        ("localhost", None, True),  # its own homeserver's users
        ("localhost", ["other.example"], False),  # not a full-access homeserver
        ("localhost", ["*"], True),
        ("localhost", ["*", "other.example"], False),  # "*" counts only as the only entry
    ],
)
async def test_only_full_access_homeservers_users_may_publish(
    synapse: Synapse, server_name: str | None, full_access: list[str] | None, publishes: bool
) -> None:
    sfu = DevSfu(
        homeserver=synapse.url, server_name=server_name, full_access_homeservers=full_access
    )
    await sfu.start("127.0.0.1", 0)
    try:
        account = synapse.register("jwtaccess")
        token, device = await openid_token(synapse, account)
        request = {"room": "!r:localhost", "openid_token": token, "device_id": device}
        status, body, _ = await post(sfu, "/sfu/get", request)
        assert status == 200, body
        grant = TokenAuthority().verify(body["jwt"])
        assert grant.can_publish is publishes
        assert grant.can_subscribe and grant.can_update_metadata  # subscribe-only, not less
    finally:
        await sfu.stop()


async def signal_status(sfu: DevSfu, jwt: str) -> int:
    async with aiohttp.ClientSession() as http:
        try:
            async with http.ws_connect(
                f"{sfu.http_url}/rtc", headers={"Authorization": f"Bearer {jwt}"}
            ):
                return 101
        except aiohttp.WSServerHandshakeError as e:
            return e.status


async def test_without_auto_create_only_full_access_requests_open_rooms(synapse: Synapse) -> None:
    sfu = DevSfu(homeserver=synapse.url, server_name="localhost", auto_create=False)
    await sfu.start("127.0.0.1", 0)
    try:
        room = livekit_room_alias("!r:localhost", "m.call#ROOM")
        minted = sfu.authority.mint("@remote:other.example:DEV", room, can_publish=False)
        assert await signal_status(sfu, minted) == 404  # LiveKit: "requested room does not exist"
        account = synapse.register("jwtcreate")
        token, device = await openid_token(synapse, account)
        request = {"room": "!r:localhost", "openid_token": token, "device_id": device}
        status, body, _ = await post(sfu, "/sfu/get", request)
        assert status == 200, body
        assert await signal_status(sfu, minted) == 101
        assert await signal_status(sfu, body["jwt"]) == 101
    finally:
        await sfu.stop()


async def test_other_servers_tokens_are_checked_over_federation_and_not_logged(
    synapse: Synapse, debug_log: Any
) -> None:
    # Told its own server name, the service asks any other server named in the token, over
    # federation (HTTPS, server name resolution): here a loopback port nobody listens on.
    sfu = DevSfu(homeserver=synapse.url, server_name="localhost")
    await sfu.start("127.0.0.1", 0)
    try:
        account = synapse.register("jwtfed")
        token, device = await openid_token(synapse, account)
        elsewhere = {**token, "matrix_server_name": "127.0.0.1:9"}
        request = {"room": "!r:localhost", "openid_token": elsewhere, "device_id": device}
        status, body, _ = await post(sfu, "/sfu/get", request)
        assert (status, body["errcode"]) == (401, "M_UNAUTHORIZED")
        assert "https://127.0.0.1:9" in debug_log.getvalue()
        assert token["access_token"] not in debug_log.getvalue()
    finally:
        await sfu.stop()


@pytest.mark.parametrize(
    ("server_name", "base"),
    [
        ("10.213.0.2:8448", "https://10.213.0.2:8448"),
        ("10.213.0.2", "https://10.213.0.2:8448"),
        ("[::1]:8449", "https://[::1]:8449"),
        ("[::1]", "https://[::1]:8448"),
        ("matrix.example.org:443", "https://matrix.example.org:443"),
    ],
)
async def test_ip_literals_and_explicit_ports_are_used_as_they_are(
    server_name: str, base: str
) -> None:
    async with aiohttp.ClientSession() as http:  # no request is made for these
        assert await FederationResolver(None).base_url(http, server_name) == base


@pytest.mark.parametrize("bad", ["", ":8448", "host:port", "[::1", "[::1]8448", "[::1]:"])
async def test_malformed_server_names_are_refused(bad: str) -> None:
    async with aiohttp.ClientSession() as http:
        with pytest.raises(OpenIdRefused):
            await FederationResolver(None).base_url(http, bad)
