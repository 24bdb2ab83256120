"""The MatrixRTC authorization service (lk-jwt-service): ``POST /sfu/get`` and ``/get_token``.

A client proves who it is with an OpenID token from its homeserver and gets a LiveKit token for
the identity and room that every other MatrixRTC client will expect (element-hq/lk-jwt-service
``handler.go``, ``helper.go``):

- ``/sfu/get`` (legacy memberships): identity ``{user_id}:{device_id}``, room = alias of
  ``[room, "m.call#ROOM"]``.
- ``/get_token`` (MSC4195, sticky memberships): identity = hash of
  ``[user_id, claimed_device_id, member.id]``, room = alias of ``[room_id, slot_id]``.

Requests are decoded the way the Go service decodes them (unknown fields and wrong types are
400 M_NOT_JSON), validated in its order and answered with its error codes. The OpenID token is
checked at the federation ``openid/userinfo`` of the homeserver it names (``userinfo``), and the
user it names must belong to ``matrix_server_name``.

Access follows ``LIVEKIT_FULL_ACCESS_HOMESERVERS``: users of the "full access" homeservers (by
default the service's own; ``*`` for all) get a token that may publish, and their request
creates the LiveKit room; users of other homeservers get a subscribe-only token for a room that
one of the service's own users must have created (lk-jwt-service #222 "Only allow full-access
and local users to publish", and #238). ``/delegate_delayed_leave`` takes over the delayed
leave of a full-access user (others get lk-jwt-service's M_FORBIDDEN) and watches it as
lk-jwt-service does (``bot.devsfu.delegation``); the older delay fields of the token requests
stay refused.
"""

from __future__ import annotations

import json
import logging
import ssl
from collections.abc import Callable, Sequence
from typing import Any

from aiohttp import web

from bot.devsfu.auth import TokenAuthority
from bot.devsfu.delegation import DelayedLeaves, Job, Presence
from bot.devsfu.userinfo import OpenIdRefused, OpenIdVerifier
from bot.rtc.identity import hashed_identity, legacy_identity, livekit_room_alias

log = logging.getLogger(__name__)

LEGACY_SLOT_ID = "m.call#ROOM"  # /sfu/get predates slots; the service hard-codes this one

CORS_HEADERS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "POST",
    "Access-Control-Allow-Headers": (
        "Accept, Content-Type, Content-Length, Accept-Encoding, X-CSRF-Token"
    ),
}

# The Go request structs: field -> JSON type. Absent fields and nulls are zero values.
_DELAY_FIELDS: dict[str, type] = {"delay_id": str, "delay_timeout": int, "delay_cs_api_url": str}
_OPENID_FIELDS: dict[str, type] = {
    "access_token": str,
    "token_type": str,
    "matrix_server_name": str,
    "expires_in": int,
}
_MEMBER_FIELDS: dict[str, type] = {"id": str, "claimed_user_id": str, "claimed_device_id": str}
_LEGACY_FIELDS: dict[str, type] = {
    "room": str,
    "openid_token": dict,
    "device_id": str,
    **_DELAY_FIELDS,
}
_GET_TOKEN_FIELDS: dict[str, type] = {
    "room_id": str,
    "slot_id": str,
    "openid_token": dict,
    "member": dict,
    **_DELAY_FIELDS,
}
_DELEGATE_FIELDS: dict[str, type] = {
    "room_id": str,
    "slot_id": str,
    "openid_token": dict,
    "member": dict,
    **_DELAY_FIELDS,
}
_NESTED = {"openid_token": _OPENID_FIELDS, "member": _MEMBER_FIELDS}


class MatrixError(Exception):
    def __init__(self, status: int, errcode: str, message: str) -> None:
        super().__init__(message)
        self.status, self.errcode, self.message = status, errcode, message

    def response(self) -> web.Response:
        body = {"errcode": self.errcode, "error": self.message}
        return web.json_response(body, status=self.status, headers=CORS_HEADERS)


def _check_member_request(body: dict[str, Any], article: str) -> None:
    """The fields /get_token and /delegate_delayed_leave both require, in lk-jwt-service's
    order and words (its two handlers differ by an article: ``article``)."""
    member, token = body["member"], body["openid_token"]
    if not body["room_id"] or not body["slot_id"]:
        raise MatrixError(400, "M_BAD_JSON", "The request body is missing `room_id` or `slot_id`")
    if not all(member[k] for k in _MEMBER_FIELDS):
        raise MatrixError(
            400,
            "M_BAD_JSON",
            f"The request body `member` is missing {article}`id`, `claimed_user_id` or "
            "`claimed_device_id`",
        )
    if not token["access_token"] or not token["matrix_server_name"]:
        raise MatrixError(
            400,
            "M_BAD_JSON",
            f"The request body `openid_token` is missing {article}`access_token` or "
            "`matrix_server_name`",
        )


def _not_json() -> MatrixError:
    return MatrixError(400, "M_NOT_JSON", "Error reading request")


def _unauthorized() -> MatrixError:
    return MatrixError(401, "M_UNAUTHORIZED", "The request could not be authorised.")


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")  # Python accepts NaN and Infinity; Go does not


def _go_string(value: str) -> str:
    """Go's JSON decoder turns lone surrogate escapes into U+FFFD; Python keeps them, and
    they could not be hashed as UTF-8."""
    return value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def decode_like_go(raw: bytes, fields: dict[str, type]) -> dict[str, Any]:
    """The request as Go's ``DisallowUnknownFields`` decoder sees it: every field present
    (zero values for absent ones and nulls); MatrixError M_NOT_JSON for anything it rejects."""
    try:
        body = json.loads(raw, parse_constant=_no_constants)
    except (UnicodeDecodeError, ValueError):
        raise _not_json() from None
    return _decode_object(body, fields)


def _decode_object(obj: Any, fields: dict[str, type]) -> dict[str, Any]:
    if not isinstance(obj, dict) or set(obj) - set(fields):
        raise _not_json()
    out: dict[str, Any] = {}
    for name, kind in fields.items():
        value = obj.get(name)
        if value is None:
            out[name] = _decode_object({}, _NESTED[name]) if kind is dict else kind()
        elif kind is dict:
            out[name] = _decode_object(value, _NESTED[name])
        elif kind is int:
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise _not_json()
            if isinstance(value, float) and not value.is_integer():
                raise _not_json()
            out[name] = int(value)
        elif isinstance(value, str):
            out[name] = _go_string(value)
        else:
            raise _not_json()
    return out


def _check_delay_fields(body: dict[str, Any]) -> None:
    if bool(body["delay_id"]) != (body["delay_timeout"] > 0):
        raise MatrixError(
            400, "M_BAD_JSON", "The request body is missing `delay_id` or `delay_timeout`"
        )


class JwtService:
    """The two token endpoints, for one homeserver and one LiveKit key."""

    def __init__(
        self,
        homeserver: str,
        authority: TokenAuthority,
        livekit_url: Callable[[web.Request], str],
        *,
        server_name: str | None = None,
        full_access_homeservers: Sequence[str] | None = None,
        federation_tls: ssl.SSLContext | None = None,
        create_room: Callable[[str], None] | None = None,
        present: Presence = lambda room, identity: False,
    ) -> None:
        """``server_name``: the own homeserver's, checked at ``homeserver``; others over
        federation, trusting ``federation_tls``'s CAs. ``full_access_homeservers`` defaults to
        ``[server_name]``, or to everyone (``*``) for a service not told its server name.
        ``create_room`` is called with the LiveKit room of each full-access token;
        ``present`` says whether an identity is on the SFU (for delegated delayed leaves)."""
        self.homeserver = homeserver.rstrip("/")
        self.authority = authority
        self._livekit_url = livekit_url
        self._verifier = OpenIdVerifier(self.homeserver, server_name, federation_tls)
        if full_access_homeservers is None:
            full_access_homeservers = [server_name] if server_name else ["*"]
        self.full_access_homeservers = tuple(full_access_homeservers)
        self._create_room = create_room
        self.delayed_leaves = DelayedLeaves(present)

    def is_full_access(self, matrix_server_name: str) -> bool:
        # As the Go service's isFullAccessUser: "*" as the only entry means everyone.
        if self.full_access_homeservers == ("*",):
            return True
        return matrix_server_name in self.full_access_homeservers

    def add_routes(self, app: web.Application) -> None:
        app.router.add_route("*", "/sfu/get", self.sfu_get)
        app.router.add_route("*", "/get_token", self.get_token)
        app.router.add_route("*", "/delegate_delayed_leave", self.delegate_delayed_leave)

    async def _user_id(self, token: dict[str, Any]) -> str:
        """The Matrix user the OpenID token belongs to, as its homeserver says."""
        try:
            return await self._verifier.user_id(token)
        except OpenIdRefused as e:
            log.info("OpenID token refused: %s", e)
            raise _unauthorized() from e

    def _answer(
        self, request: web.Request, identity: str, room: str, server_name: str
    ) -> web.Response:
        full = self.is_full_access(server_name)
        if full and self._create_room is not None:
            self._create_room(room)  # the Go service's CreateLiveKitRoom, before the token
        jwt = self.authority.mint(identity, room, can_publish=full)
        log.info(
            "issued a %s token for %s in room %s", "full" if full else "restricted", identity, room
        )
        body = {"url": self._livekit_url(request), "jwt": jwt}
        return web.json_response(body, headers=CORS_HEADERS)

    @staticmethod
    async def _body(request: web.Request, fields: dict[str, type]) -> dict[str, Any] | None:
        """The decoded body, or None for requests answered without one (OPTIONS)."""
        if request.method == "OPTIONS":
            return None
        if request.method != "POST":
            raise MatrixError(405, "", "")
        return decode_like_go(await request.read(), fields)

    async def sfu_get(self, request: web.Request) -> web.Response:
        try:
            body = await self._body(request, _LEGACY_FIELDS)
            if body is None:
                return web.Response(headers=CORS_HEADERS)
            token = body["openid_token"]
            if not body["room"]:
                raise MatrixError(400, "M_BAD_JSON", "Missing room parameter")
            if not token["access_token"] or not token["matrix_server_name"]:
                raise MatrixError(400, "M_BAD_JSON", "Missing OpenID token parameters")
            _check_delay_fields(body)
            user_id = await self._user_id(token)
            _refuse_delegation(body)
            identity = legacy_identity(user_id, body["device_id"])
            room = livekit_room_alias(body["room"], LEGACY_SLOT_ID)
            return self._answer(request, identity, room, token["matrix_server_name"])
        except MatrixError as e:
            return _error_response(e)

    async def get_token(self, request: web.Request) -> web.Response:
        try:
            body = await self._body(request, _GET_TOKEN_FIELDS)
            if body is None:
                return web.Response(headers=CORS_HEADERS)
            token, member = body["openid_token"], body["member"]
            _check_member_request(body, article="a ")
            _check_delay_fields(body)
            user_id = await self._user_id(token)
            if member["claimed_user_id"] != user_id:
                log.info("claimed user %r is not %r", member["claimed_user_id"], user_id)
                raise _unauthorized()
            _refuse_delegation(body)
            identity = hashed_identity(user_id, member["claimed_device_id"], member["id"], go=True)
            room = livekit_room_alias(body["room_id"], body["slot_id"])
            return self._answer(request, identity, room, token["matrix_server_name"])
        except MatrixError as e:
            return _error_response(e)

    async def delegate_delayed_leave(self, request: web.Request) -> web.Response:
        """lk-jwt-service's handleDelegateDelayedLeave: validated in its order."""
        try:
            body = await self._body(request, _DELEGATE_FIELDS)
            if body is None:
                return web.Response(headers=CORS_HEADERS)
            token, member = body["openid_token"], body["member"]
            _check_member_request(body, article="")
            if not body["delay_id"] or body["delay_timeout"] <= 0 or not body["delay_cs_api_url"]:
                raise MatrixError(
                    400,
                    "M_BAD_JSON",
                    "The request body is missing `delay_id`, `delay_timeout` or `delay_cs_api_url`",
                )
            user_id = await self._user_id(token)
            if member["claimed_user_id"] != user_id:
                raise _unauthorized()
            if not self.is_full_access(token["matrix_server_name"]):
                raise MatrixError(
                    403,
                    "M_FORBIDDEN",
                    "Delegation of delayed events is only supported for full access users",
                )
            # The Go service resolves the CS API from the server name (not delay_cs_api_url);
            # here that is the one homeserver this service belongs to.
            identity = hashed_identity(user_id, member["claimed_device_id"], member["id"], go=True)
            self.delayed_leaves.add(
                Job(
                    cs_api_url=self.homeserver,
                    delay_id=body["delay_id"],
                    timeout_s=body["delay_timeout"] / 1000,
                    room=livekit_room_alias(body["room_id"], body["slot_id"]),
                    identity=identity,
                )
            )
            log.info("watching the delayed leave of %s", identity)
            return web.json_response({}, headers=CORS_HEADERS)
        except MatrixError as e:
            return _error_response(e)


def _refuse_delegation(body: dict[str, Any]) -> None:
    # What lk-jwt-service answers users of homeservers without "full access".
    if body["delay_id"]:
        raise MatrixError(
            400,
            "M_BAD_JSON",
            "Delegation of delayed events is only supported for full access users",
        )


def _error_response(e: MatrixError) -> web.Response:
    if e.status == 405:  # the Go service writes no body here
        return web.Response(status=405, headers=CORS_HEADERS)
    return e.response()
