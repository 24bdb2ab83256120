"""Delayed leaves handed to the dev JWT service (bot.devsfu.delegation), with the bot's own
request (bot.rtc.delegation), against a real Synapse: the service restarts the delayed
event while the member is on the SFU and sends it as soon as it is gone."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
from aiohttp import web

from bot.devsfu.auth import TokenAuthority
from bot.devsfu.jwt_service import JwtService
from bot.matrix import rest
from bot.outbound import OutboundPolicy
from bot.rtc import delegation
from bot.rtc.focus import openid_token
from bot.rtc.identity import hashed_identity, livekit_room_alias
from tests.conftest import peer
from tests.peer import wait_until
from tests.synapse import Synapse

TYPE = "org.matrix.msc3401.call.member"
POLICY = OutboundPolicy().allowing_private()  # the service is on 127.0.0.1


class Service:
    def __init__(self, synapse: Synapse, full_access: list[str] | None = None) -> None:
        self.on_sfu: set[tuple[str, str]] = set()
        self.jwt = JwtService(
            synapse.url,
            TokenAuthority("devkey", "a-secret-of-some-length-0123456789"),
            lambda request: "ws://127.0.0.1:1",
            server_name="localhost",
            full_access_homeservers=full_access,
            present=lambda room, identity: (room, identity) in self.on_sfu,
        )
        self.url = ""


@pytest.fixture
async def service(synapse: Synapse, request: pytest.FixtureRequest) -> AsyncIterator[Service]:
    svc = Service(synapse, getattr(request, "param", None))
    app = web.Application()
    svc.jwt.add_routes(app)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    svc.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    yield svc
    await svc.jwt.delayed_leaves.close()
    await runner.cleanup()


async def _state(client: Any, room: str, state_key: str) -> dict[str, Any]:
    path = f"/_matrix/client/v3/rooms/{quote(room)}/state/{TYPE}/{quote(state_key, safe='')}"
    return await rest.request(client, "GET", path)


async def _left(client: Any, room: str, state_key: str, timeout_s: float = 10.0) -> float:
    """Seconds until the membership state is ``{}`` (the leave was sent)."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    while await _state(client, room, state_key) != {}:
        if loop.time() - start > timeout_s:
            raise AssertionError("the delayed leave was not sent")
        await asyncio.sleep(0.1)
    return loop.time() - start


async def _scheduled(client: Any, room: str, state_key: str, delay_ms: int) -> str:
    await rest.put_state(client, room, TYPE, state_key, {"application": "m.call", "x": 1})
    return await rest.put_delayed_state(client, room, TYPE, state_key, {}, delay_ms)


async def test_the_leave_is_sent_when_the_member_leaves_the_sfu(
    synapse: Synapse, service: Service, tmp_path: Path
) -> None:
    async with peer(synapse, tmp_path, "deleg") as p:
        room = (await p.client.room_create()).room_id
        key = f"_{p.user_id}_{p.client.device_id}_m.call"
        delay_id = await _scheduled(p.client, room, key, 60_000)  # far longer than the test
        identity = hashed_identity(p.user_id, p.client.device_id, "mem-1", go=True)
        service.on_sfu.add((livekit_room_alias(room, "m.call#ROOM"), identity))
        leave = delegation.DelayedLeave(room, "m.call#ROOM", "mem-1", delay_id, 60_000)
        assert await delegation.delegate(p.client, service.url, leave, POLICY)
        await asyncio.sleep(1.0)  # watched, restarted: the membership stays
        assert (await _state(p.client, room, key)) == {"application": "m.call", "x": 1}
        service.on_sfu.clear()  # the member's connection to the SFU is gone (a crash)
        # Sent at once by the service, not 60 s later by the homeserver's timer.
        assert await _left(p.client, room, key) < 5.0
        await wait_until(lambda: delay_id in service.jwt.delayed_leaves.outcomes, 5.0, "done")
        assert service.jwt.delayed_leaves.outcomes[delay_id] == "sent"


async def test_a_member_never_seen_on_the_sfu_is_left_after_the_timeout(
    synapse: Synapse, service: Service, tmp_path: Path
) -> None:
    """lk-jwt-service's WaitingStateTimedOut: min(1 h, delay_timeout) without the member."""
    async with peer(synapse, tmp_path, "ghost") as p:
        room = (await p.client.room_create()).room_id
        key = f"_{p.user_id}_{p.client.device_id}_m.call"
        delay_id = await _scheduled(p.client, room, key, 60_000)
        leave = delegation.DelayedLeave(room, "m.call#ROOM", "mem-2", delay_id, 1_500)
        assert await delegation.delegate(p.client, service.url, leave, POLICY)
        assert await _left(p.client, room, key) >= 1.0  # after the 1.5 s wait, not at once


async def test_refusals_follow_lk_jwt_service(
    synapse: Synapse, service: Service, tmp_path: Path
) -> None:
    async with peer(synapse, tmp_path, "refused") as p:
        token = await openid_token(p.client)
        leave = delegation.DelayedLeave("!r:x", "m.call#ROOM", "m", "d", 10_000)
        body = delegation.request_body(p.client, leave, token)

        async def post(payload: Any) -> tuple[int, dict[str, Any]]:
            async with (
                aiohttp.ClientSession() as http,
                http.post(f"{service.url}/delegate_delayed_leave", json=payload) as resp,
            ):
                return resp.status, await resp.json(content_type=None)

        for missing in ("delay_id", "delay_timeout", "delay_cs_api_url", "slot_id"):
            status, answer = await post({**body, missing: None})
            assert (status, answer["errcode"]) == (400, "M_BAD_JSON"), missing
        status, answer = await post({**body, "unknown": 1})
        assert (status, answer["errcode"]) == (400, "M_NOT_JSON")
        other = {**body["member"], "claimed_user_id": "@someone:else"}
        status, answer = await post({**body, "member": other})
        assert status == 401
        assert not service.jwt.delayed_leaves._tasks  # nothing was taken on
        # A service without the endpoint: the bot goes on restarting the event itself.
        assert not await delegation.delegate(p.client, f"{service.url}/nothing", leave, POLICY)


@pytest.mark.parametrize("service", [["other.example"]], indirect=True)
async def test_users_without_full_access_are_refused(
    synapse: Synapse, service: Service, tmp_path: Path
) -> None:
    """lk-jwt-service: "Delegation of delayed events is only supported for full access users"
    (M_FORBIDDEN); the bot then goes on restarting the event itself."""
    async with peer(synapse, tmp_path, "remote") as p:
        leave = delegation.DelayedLeave("!r:x", "m.call#ROOM", "m", "d", 10_000)
        token = await openid_token(p.client)
        async with (
            aiohttp.ClientSession() as http,
            http.post(
                f"{service.url}/delegate_delayed_leave",
                json=delegation.request_body(p.client, leave, token),
            ) as resp,
        ):
            assert resp.status == 403
            assert (await resp.json())["errcode"] == "M_FORBIDDEN"
        assert not await delegation.delegate(p.client, service.url, leave, POLICY)
        assert not service.jwt.delayed_leaves._tasks
