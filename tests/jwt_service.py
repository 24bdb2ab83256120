"""A MatrixRTC authorization service for tests (``/sfu/get``, ``/get_token``), on 127.0.0.1.

It checks the OpenID token against the homeserver's federation ``openid/userinfo`` as
lk-jwt-service does, and issues LiveKit tokens for the identities that service issues:
``{sub}:{device_id}`` from ``/sfu/get``, the hash of ``[sub, device, member.id]`` from
``/get_token``. The project's own service arrives with the dev SFU; this one exists so the
bot's token exchange is tested against a real OpenID check.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
from aiohttp import web
from livekit import api

from bot.rtc.identity import hashed_identity, livekit_room_alias
from tests.synapse import free_port

API_KEY, API_SECRET = "devkey", "devsecret-devsecret-devsecret-01"
LIVEKIT_URL = "ws://127.0.0.1:1"


class JwtService:
    def __init__(self, homeserver: str) -> None:
        self.homeserver = homeserver
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.requests: list[dict[str, Any]] = []
        self.issued: list[str] = []  # identities

    async def _user(self, body: dict[str, Any]) -> str | None:
        """The OpenID token's user, checked with the homeserver (None if refused)."""
        token = body.get("openid_token", {}).get("access_token", "")
        async with (
            aiohttp.ClientSession() as http,
            http.get(
                f"{self.homeserver}/_matrix/federation/v1/openid/userinfo",
                params={"access_token": token},
            ) as resp,
        ):
            return (await resp.json())["sub"] if resp.status == 200 else None

    def _token(self, identity: str, room_id: str, slot_id: str) -> web.Response:
        grants = api.VideoGrants(
            room=livekit_room_alias(room_id, slot_id),
            room_join=True,
            can_publish=True,
            can_subscribe=True,
        )
        jwt = api.AccessToken(API_KEY, API_SECRET).with_identity(identity).with_grants(grants)
        self.issued.append(identity)
        return web.json_response({"url": LIVEKIT_URL, "jwt": jwt.to_jwt()})

    async def sfu_get(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.requests.append(body)
        sub = await self._user(body)
        if sub is None:
            return web.json_response({"errcode": "M_UNAUTHORIZED"}, status=401)
        return self._token(f"{sub}:{body['device_id']}", body["room"], "m.call#ROOM")

    async def get_token(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.requests.append(body)
        sub, member = await self._user(body), body["member"]
        if sub is None or member["claimed_user_id"] != sub:
            return web.json_response({"errcode": "M_UNAUTHORIZED"}, status=401)
        identity = hashed_identity(sub, member["claimed_device_id"], member["id"], go=True)
        return self._token(identity, body["room_id"], body["slot_id"])


@contextlib.asynccontextmanager
async def jwt_service(homeserver: str) -> AsyncIterator[JwtService]:
    service = JwtService(homeserver)
    app = web.Application()
    app.router.add_post("/sfu/get", service.sfu_get)
    app.router.add_post("/get_token", service.get_token)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", service.port)
    await site.start()
    try:
        yield service
    finally:
        await runner.cleanup()
