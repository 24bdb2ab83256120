"""Finding the call's SFU and getting a LiveKit token for it.

Discovery (Element Call's order, shared/docs/matrixrtc-protocol.md §4.2): the configured
service URL, the homeserver's ``/rtc/transports`` (MSC4143), then the legacy
``org.matrix.msc4143.rtc_foci`` in ``.well-known/matrix/client``. Access: an OpenID token
exchanged at the MatrixRTC authorization service (``/sfu/get`` for legacy memberships,
``/get_token`` for sticky ones), or a token minted directly with the LiveKit key and secret,
with the identity and room name the service would have used.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import aiohttp
import nio

from bot.config import RtcConfig
from bot.errors import CallbotError
from bot.log import register_secret
from bot.matrix import rest
from bot.rtc.identity import hashed_identity, legacy_identity, livekit_room_alias
from bot.rtc.membership import DEFAULT_SLOT_ID

log = logging.getLogger(__name__)

WELL_KNOWN_FOCI = "org.matrix.msc4143.rtc_foci"
TOKEN_TTL = timedelta(hours=1)


class RtcError(CallbotError):
    """Joining or staying in a call failed; the message is fit to show in the room."""


@dataclass(frozen=True)
class SfuAccess:
    """Where and how the media layer connects: LiveKit URL, token, our identity there."""

    url: str
    jwt: str = field(repr=False)
    identity: str
    transport: dict[str, Any]


def livekit_transport(service_url: str) -> dict[str, Any]:
    return {"type": "livekit", "livekit_service_url": service_url}


async def discover_transport(client: nio.AsyncClient, cfg: RtcConfig) -> dict[str, Any]:
    """Our own LiveKit transport; RtcError if there is none."""
    if cfg.livekit_service_url:
        return livekit_transport(cfg.livekit_service_url)
    for t in await rest.rtc_transports(client):
        if t.get("type") == "livekit" and isinstance(t.get("livekit_service_url"), str):
            return dict(t)
    server = client.user_id.split(":", 1)[1]
    for t in await _well_known_foci(server):
        return t
    raise RtcError(
        "no MatrixRTC transport: the homeserver advertises none (MSC4143 rtc/transports or "
        ".well-known org.matrix.msc4143.rtc_foci); set rtc.livekit_service_url in the config"
    )


async def _well_known_foci(server_name: str) -> list[dict[str, Any]]:
    url = f"https://{server_name}/.well-known/matrix/client"
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http,
            http.get(url) as resp,
        ):
            if resp.status != 200:
                return []
            data = await resp.json(content_type=None)
    except (aiohttp.ClientError, TimeoutError, ValueError):
        return []
    foci = data.get(WELL_KNOWN_FOCI) if isinstance(data, dict) else None
    return [
        dict(f)
        for f in foci or []
        if isinstance(f, dict)
        and f.get("type") == "livekit"
        and isinstance(f.get("livekit_service_url"), str)
    ]


async def openid_token(client: nio.AsyncClient) -> dict[str, Any]:
    resp = await client.get_openid_token(client.user_id)
    if not isinstance(resp, nio.GetOpenIDTokenResponse):
        raise RtcError(f"the homeserver refused an OpenID token: {resp}")
    register_secret(resp.access_token)
    return {
        "access_token": resp.access_token,
        "token_type": resp.token_type,
        "matrix_server_name": resp.matrix_server_name,
        "expires_in": resp.expires_in,
    }


async def sfu_access(
    client: nio.AsyncClient,
    cfg: RtcConfig,
    transport: dict[str, Any],
    room_id: str,
    *,
    member_id: str | None = None,
    slot_id: str = DEFAULT_SLOT_ID,
) -> SfuAccess:
    """A LiveKit URL and token for ``transport``; sticky memberships pass their member_id."""
    if cfg.mints_tokens:
        return mint_access(
            cfg,
            client.user_id,
            client.device_id,
            room_id,
            transport,
            member_id=member_id,
            slot_id=slot_id,
        )
    service = str(transport.get("livekit_service_url", "")).rstrip("/")
    if not service.startswith(("http://", "https://")):
        raise RtcError(f"the call's transport has no usable livekit_service_url: {transport}")
    token = await openid_token(client)
    if member_id is None:
        path, body = (
            "/sfu/get",
            {"room": room_id, "openid_token": token, "device_id": client.device_id},
        )
        identity = legacy_identity(client.user_id, client.device_id)
    else:
        path, body = (
            "/get_token",
            {
                "room_id": room_id,
                "slot_id": slot_id,
                "openid_token": token,
                "member": {
                    "id": member_id,
                    "claimed_user_id": client.user_id,
                    "claimed_device_id": client.device_id,
                },
            },
        )
        identity = hashed_identity(client.user_id, client.device_id, member_id, go=True)
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as http,
            http.post(service + path, json=body) as resp,
        ):
            data = await resp.json(content_type=None)
            status = resp.status
    except (aiohttp.ClientError, TimeoutError, ValueError) as e:
        raise RtcError(f"cannot reach the call's authorization service {service}: {e}") from None
    if status != 200 or not isinstance(data, dict):
        detail = data.get("error") or data.get("errcode") if isinstance(data, dict) else data
        raise RtcError(f"the authorization service {service} refused: HTTP {status} {detail}")
    url, jwt = data.get("url"), data.get("jwt")
    if not isinstance(url, str) or not isinstance(jwt, str):
        raise RtcError(f"the authorization service {service} answered without url and jwt")
    register_secret(jwt)
    return SfuAccess(url=url, jwt=jwt, identity=identity, transport=transport)


def mint_token(
    api_key: str, api_secret: str, identity: str, room: str, ttl: timedelta = TOKEN_TTL
) -> str:
    """A LiveKit token with the grants lk-jwt-service gives: join, publish, subscribe and
    update own metadata; no room creation."""
    from livekit import api  # heavy import, only when minting

    grants = api.VideoGrants(
        room=room,
        room_join=True,
        room_create=False,
        can_publish=True,
        can_subscribe=True,
        can_update_own_metadata=True,
    )
    token = api.AccessToken(api_key, api_secret).with_identity(identity).with_grants(grants)
    return token.with_ttl(ttl).to_jwt()


def mint_access(
    cfg: RtcConfig,
    user_id: str,
    device_id: str,
    room_id: str,
    transport: dict[str, Any],
    *,
    member_id: str | None = None,
    slot_id: str = DEFAULT_SLOT_ID,
) -> SfuAccess:
    """A token signed with our own LiveKit key, as lk-jwt-service would issue it."""
    assert cfg.livekit_url and cfg.livekit_api_key and cfg.livekit_api_secret
    identity = (
        legacy_identity(user_id, device_id)
        if member_id is None
        else hashed_identity(user_id, device_id, member_id, go=True)
    )
    jwt = mint_token(
        cfg.livekit_api_key,
        cfg.livekit_api_secret,
        identity,
        livekit_room_alias(room_id, slot_id),
    )
    register_secret(jwt)
    return SfuAccess(url=cfg.livekit_url, jwt=jwt, identity=identity, transport=transport)
