"""A room member chooses the call's focus: the bot must not become their HTTP client.

Real parts: Synapse, the bot, a nio peer (alice) who posts a hostile call membership (the
oldest, so the bot would follow its focus), the dev JWT service as the bot's own, and a
listener on loopback that records every request and answers with secrets (issue 18: the bot
POSTed its OpenID token to ``http://127.0.0.1:PORT/evil/sfu/get`` and quoted the answer).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import nio
import pytest
from aiohttp import web

from bot.devsfu.server import DevSfu
from bot.rtc.membership import LEGACY_TYPE
from tests.conftest import bot_config, peer, running_bot
from tests.music_files import free_port
from tests.peer import Peer, wait_until
from tests.synapse import Synapse

CALLS_ALLOWED = {"events": {LEGACY_TYPE: 0}}
SECRET = "INTERNAL-SECRET-DATA"


@pytest.fixture
async def jwt(synapse: Synapse) -> AsyncIterator[DevSfu]:
    """The bot's own MatrixRTC JWT service (the dev SFU's; media is not used here)."""
    sfu = DevSfu(homeserver=synapse.url)
    await sfu.start("127.0.0.1")
    yield sfu
    await sfu.stop()


@contextlib.asynccontextmanager
async def evil_service() -> AsyncIterator[tuple[int, list[str]]]:
    """A JWT service look-alike on loopback: records requests, answers 500 with secrets."""
    requests: list[str] = []

    async def handle(request: web.Request) -> web.Response:
        requests.append(f"{request.method} {request.path}")
        return web.json_response({"errcode": "M_UNKNOWN", "error": SECRET}, status=500)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield site._server.sockets[0].getsockname()[1], requests  # type: ignore[union-attr]
    finally:
        await runner.cleanup()


async def hostile_call(alice: Peer, bot_user: str, service_url: str) -> str:
    """A room with a call whose oldest membership (alice's, ``created_ts`` 1, expiring in
    centuries) names ``service_url`` as the focus."""
    room = await alice.create_room(invite=[bot_user], power_level_override=CALLS_ALLOWED)
    await alice.wait_member(room, bot_user)
    device = alice.client.device_id
    content = {
        "application": "m.call",
        "call_id": "",
        "scope": "m.room",
        "device_id": device,
        "created_ts": 1,
        "expires": 10**13,  # from 1970: expires in the 2280s
        "focus_active": {"type": "livekit", "focus_selection": "oldest_membership"},
        "foci_preferred": [
            {"type": "livekit", "livekit_service_url": service_url, "livekit_alias": room}
        ],
    }
    key = f"_{alice.user_id}_{device}_m.call"
    resp = await alice.client.room_put_state(room, LEGACY_TYPE, content, state_key=key)
    assert isinstance(resp, nio.RoomPutStateResponse), resp
    return room


async def own_focus(alice: Peer, room: str, bot_user: str, device: str) -> str:
    resp = await alice.client.room_get_state_event(
        room, LEGACY_TYPE, f"_{bot_user}_{device}_m.call"
    )
    assert isinstance(resp, nio.RoomGetStateEventResponse), resp
    return resp.content["foci_preferred"][0]["livekit_service_url"]


async def test_a_members_focus_on_loopback_is_never_contacted(
    synapse: Synapse, jwt: DevSfu, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Loopback in several spellings, with and without user info: skipped with a log line,
    never contacted; the bot joins on its own SFU and the room reads nothing of the URL."""
    account = synapse.register("bot")
    config = bot_config(
        synapse, account, tmp_path / "data", rtc={"livekit_service_url": jwt.http_url}
    )
    caplog.set_level(logging.INFO)
    async with (
        evil_service() as (port, requests),
        running_bot(config) as bot,
        peer(synapse, tmp_path, "alice") as alice,
    ):
        for url in (
            f"http://127.0.0.1:{port}/evil",
            f"http://user:pw@127.0.0.1:{port}/evil",
            f"http://localhost:{port}/evil",
            f"http://[::ffff:127.0.0.1]:{port}/evil",
            f"http://127.0.0.1:{free_port('127.0.0.1')}/closed",  # a port scan, before
        ):
            room = await hostile_call(alice, account.user_id, url)
            session = bot.rtc.get_room_session(room)
            await wait_until(lambda s=session: s.memberships, what="alice's membership")
            reply = await alice.ask(room, "!join", account.user_id)
            assert reply == f"Joined the call (SFU via {jwt.http_url}; 1 other members)."
            assert await own_focus(alice, room, account.user_id, bot.matrix.device_id) == (
                jwt.http_url
            )
            assert (await alice.ask(room, "!leave", account.user_id)) == "Left the call."
            posted = " ".join(getattr(ev, "body", "") for r, ev in alice.messages if r == room)
            for leak in ("evil", "closed", "pw", SECRET, f":{port}"):
                assert leak not in posted
        assert requests == []
    # The bot publishes on its own SFU (multi-SFU) and has no media plugin here, so nothing
    # of alice's focus is even looked at; nothing of it reaches the log either.
    logged = [r.getMessage() for r in caplog.records if r.name.startswith("bot")]
    assert not any("pw" in line or "evil" in line for line in logged)


async def test_the_openid_token_goes_only_to_trusted_services_and_answers_stay_out(
    synapse: Synapse, jwt: DevSfu, tmp_path: Path
) -> None:
    """An address the config allows is still no JWT service the bot trusts with its OpenID
    token; a trusted one that fails is named by its host, its answer never quoted."""
    account = synapse.register("bot")
    user = account.user_id
    async with evil_service() as (port, requests), peer(synapse, tmp_path, "alice") as alice:
        trusted = f"http://127.0.0.1:{port}/trusted"
        closed = f"http://127.0.0.1:{free_port('127.0.0.1')}"
        config = bot_config(
            synapse,
            account,
            tmp_path / "data",
            rtc={"livekit_service_url": jwt.http_url},
            outbound={"allow": ["127.0.0.0/8"], "openid_services": [trusted, closed]},
        )
        async with running_bot(config) as bot:
            room = await hostile_call(alice, user, f"http://127.0.0.1:{port}/evil")
            session = bot.rtc.get_room_session(room)
            await wait_until(lambda: session.memberships, what="alice's membership")
            reply = await alice.ask(room, "!join", user)
            assert reply == f"Joined the call (SFU via {jwt.http_url}; 1 other members)."
            await alice.ask(room, "!leave", user)
            assert requests == []  # allowed address, but no JWT service of the bot's

        # The bot publishes on its own transport (multi-SFU), so a failing own service is
        # where its answers could leak.
        for own, expected in (
            (trusted, f"the call's authorization service 127.0.0.1:{port} refused: HTTP 500"),
            (
                closed,
                "I cannot reach the call's authorization service: "
                f"{closed.removeprefix('http://')} could not be reached.",
            ),
        ):
            config = bot_config(
                synapse,
                account,
                tmp_path / "data",
                rtc={"livekit_service_url": own},
                outbound={"allow": ["127.0.0.0/8"]},
            )
            async with running_bot(config):
                room = await hostile_call(alice, user, f"http://127.0.0.1:{port}/evil")
                assert await alice.ask(room, "!join", user) == expected
        assert requests == ["POST /trusted/sfu/get"]  # the operator trusts this one
        posted = " ".join(getattr(ev, "body", "") for _, ev in alice.messages)
        assert SECRET not in posted and "evil" not in posted
