"""Finding the call's SFU and getting a LiveKit token for it.

Discovery (Element Call's order, its ``src/state/CallViewModel/localMember/LocalTransport.ts``
and ``RtcTransportAutoDiscovery.ts``): the configured service URL, the homeserver's
``/rtc/transports`` (MSC4143), then the legacy ``org.matrix.msc4143.rtc_foci`` in
``.well-known/matrix/client``. Access: an OpenID token exchanged at the MatrixRTC authorization
service (``/sfu/get`` for legacy memberships, ``/get_token`` for sticky ones), or a token
minted directly with the LiveKit key and secret, with the identity and room name the service
would have used.

The focus of a call is chosen by whoever posted the oldest membership, so it is fetched only
under the outbound policy (``bot.outbound``): a focus whose address is refused is skipped
with a log line and never contacted, and the bot's OpenID token goes only to the JWT
services of its config and of its own homeserver (or any, with ``outbound.openid_any_service``).
Errors name the service's host, never what it answered.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import nio

from bot import outbound
from bot.config import RtcConfig
from bot.errors import CallbotError
from bot.log import context, register_secret
from bot.matrix import rest
from bot.outbound import CheckedUrl, OutboundError, OutboundPolicy, display_host
from bot.rtc import transport as lk_transport
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
    for t in await own_transports(client):
        return t
    raise RtcError(
        "no MatrixRTC transport: the homeserver advertises none (MSC4143 rtc/transports or "
        ".well-known org.matrix.msc4143.rtc_foci); set rtc.livekit_service_url in the config"
    )


async def own_transports(client: nio.AsyncClient) -> list[dict[str, Any]]:
    """The LiveKit transports the bot's own homeserver advertises (rtc/transports, then
    .well-known)."""
    found = [
        lk_transport.normalize(t)
        for t in await rest.rtc_transports(client)
        if lk_transport.is_livekit(t)
    ]
    return found or await _well_known_foci(client.user_id.split(":", 1)[1])


async def _well_known_foci(server_name: str) -> list[dict[str, Any]]:
    url = f"https://{server_name}/.well-known/matrix/client"
    try:
        resp = await outbound.fetch("GET", url)
        data = resp.json() if resp.status == 200 else None
    except (OutboundError, ValueError):
        return []
    foci = data.get(WELL_KNOWN_FOCI) if isinstance(data, dict) else None
    return [
        lk_transport.normalize(f)
        for f in (foci if isinstance(foci, list) else [])
        if isinstance(f, dict) and lk_transport.is_livekit(f)
    ]


async def choose_transport(
    client: nio.AsyncClient,
    cfg: RtcConfig,
    candidates: Iterable[dict[str, Any] | None],
    room_id: str = "",
) -> dict[str, Any]:
    """The first of ``candidates`` (the call's focus, chosen by a member) the bot may use,
    else its own transport. One it may not use is skipped with a log line, not contacted."""
    for candidate in candidates:
        if candidate is None:
            continue
        transport = lk_transport.normalize(candidate)
        if cfg.mints_tokens:  # the service URL is never contacted: the bot has its own SFU
            return transport
        try:
            await check_transport(client, transport)
            return transport
        except OutboundError as e:
            log.warning(
                "not using the call's focus: %s; joining on my own transport",
                e,
                extra=context(room=room_id),
            )
    return await discover_transport(client, cfg)


async def check_transport(
    client: nio.AsyncClient, transport: dict[str, Any], policy: OutboundPolicy | None = None
) -> None:
    """OutboundError unless the bot may send its OpenID token to ``transport``'s JWT
    service and connect to its address (first look: the connection checks again)."""
    policy = policy or outbound.current()
    service = lk_transport.service_url(transport)
    if service is None:
        raise OutboundError("the call's focus has no livekit_service_url")
    checked = policy.check_url(service)
    await _trusted_service(client, service, policy)
    if not await _first_look(policy, checked):
        raise OutboundError(f"{checked.display} could not be found", checked.host)


async def _first_look(policy: OutboundPolicy, checked: CheckedUrl) -> bool:
    """Where ``checked`` leads, before the connection checks again: OutboundError if the
    policy refuses an address it resolves to; False if it does not resolve at all."""
    if checked.trusted or policy.host_allowed(checked.host):
        return True
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(checked.host, checked.port)
    except (OSError, UnicodeError):
        return False
    policy.check_addresses(checked.host, [str(i[4][0]) for i in infos])
    return True


async def _trusted_service(
    client: nio.AsyncClient,
    service: str,
    policy: OutboundPolicy,
    member_server: str | None = None,
) -> None:
    if policy.trusts_openid(service, member_server=member_server):
        return
    advertised = [str(t["livekit_service_url"]) for t in await own_transports(client)]
    if not policy.trusts_openid(service, advertised):
        raise OutboundError(
            f"{display_host(service)} is not a MatrixRTC authorization service I send my "
            "OpenID token to (rtc.livekit_service_url, outbound.openid_services, one my "
            "homeserver advertises, or one on the homeserver of a member who publishes there)",
            display_host(service),
        )


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
    member_server: str | None = None,
) -> SfuAccess:
    """A LiveKit URL and token for ``transport``; sticky memberships pass their member_id.
    ``member_server``: the homeserver of a member who publishes on ``transport`` (a remote
    SFU that the bot only subscribes to; its token is minted by that SFU's service)."""
    if cfg.mints_tokens and member_server is None:
        return mint_access(
            cfg,
            client.user_id,
            client.device_id,
            room_id,
            transport,
            member_id=member_id,
            slot_id=slot_id,
        )
    service = (lk_transport.service_url(transport) or "").rstrip("/")
    host = display_host(service)
    policy = outbound.current()
    try:
        policy.check_url(service)
        await _trusted_service(client, service, policy, member_server)
    except OutboundError as e:
        raise RtcError(f"I cannot use the call's authorization service: {e}.") from None
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
        resp = await outbound.fetch("POST", service + path, json=body, policy=policy)
    except OutboundError as e:
        raise RtcError(f"I cannot reach the call's authorization service: {e}.") from None
    try:
        data = resp.json()
    except ValueError:
        data = None
    if resp.status != 200 or not isinstance(data, dict):
        # Never the answer's text in the room: a hostile service would put anything there.
        # An errcode-like word goes to the log.
        code = data.get("errcode") if isinstance(data, dict) else None
        if isinstance(code, str) and re.fullmatch(r"[A-Z][A-Z0-9_]{0,63}", code):
            log.info("the authorization service %s answered %s %s", host, resp.status, code)
        raise RtcError(f"the call's authorization service {host} refused: HTTP {resp.status}")
    url, jwt = data.get("url"), data.get("jwt")
    if not isinstance(url, str) or not isinstance(jwt, str):
        raise RtcError(f"the authorization service {host} answered without url and jwt")
    register_secret(jwt)
    await _check_livekit_url(url, service, policy)
    return SfuAccess(url=url, jwt=jwt, identity=identity, transport=transport)


async def _check_livekit_url(url: str, service: str, policy: OutboundPolicy) -> None:
    """The SFU a JWT service sends the bot to: ws(s), on the service's own host or at an
    address the policy allows. The LiveKit SDK connects by itself, so this is a first look
    only; a trusted JWT service is trusted this far."""
    scheme, sep, rest_ = url.partition("://")
    if not sep or scheme.lower() not in ("ws", "wss"):
        raise RtcError(f"the authorization service {display_host(service)} answered no ws URL")
    as_http = ("https" if scheme.lower() == "wss" else "http") + "://" + rest_
    try:
        checked = policy.check_url(as_http)
        if checked.host != policy.check_url(service).host:
            await _first_look(policy, checked)  # unresolvable: the SDK will say so
    except OutboundError as e:
        raise RtcError(f"the call's SFU is refused: {e}.") from None


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
