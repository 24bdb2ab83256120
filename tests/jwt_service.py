"""A MatrixRTC authorization service for tests (``/sfu/get``), on 127.0.0.1.

It checks the OpenID token against the homeserver's federation ``openid/userinfo`` as
lk-jwt-service does, and issues a LiveKit token for ``{sub}:{device_id}``. The project's own
service arrives with the dev SFU; this one exists so the bot's token exchange is tested
against a real OpenID check.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
from aiohttp import web
from livekit import api

from bot.rtc.identity import livekit_room_alias
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

    async def sfu_get(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.requests.append(body)
        token = body.get("openid_token", {}).get("access_token", "")
        async with (
            aiohttp.ClientSession() as http,
            http.get(
                f"{self.homeserver}/_matrix/federation/v1/openid/userinfo",
                params={"access_token": token},
            ) as resp,
        ):
            if resp.status != 200:
                return web.json_response({"errcode": "M_UNAUTHORIZED"}, status=401)
            sub = (await resp.json())["sub"]
        identity = f"{sub}:{body['device_id']}"
        grants = api.VideoGrants(
            room=livekit_room_alias(body["room"], "m.call#ROOM"),
            room_join=True,
            can_publish=True,
            can_subscribe=True,
        )
        jwt = (
            api.AccessToken(API_KEY, API_SECRET)
            .with_identity(identity)
            .with_grants(grants)
            .to_jwt()
        )
        self.issued.append(identity)
        return web.json_response({"url": LIVEKIT_URL, "jwt": jwt})


@contextlib.asynccontextmanager
async def jwt_service(homeserver: str) -> AsyncIterator[JwtService]:
    service = JwtService(homeserver)
    app = web.Application()
    app.router.add_post("/sfu/get", service.sfu_get)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", service.port)
    await site.start()
    try:
        yield service
    finally:
        await runner.cleanup()
