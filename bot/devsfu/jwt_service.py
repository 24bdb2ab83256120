"""The MatrixRTC authorization service (lk-jwt-service): ``POST /sfu/get`` and ``/get_token``.

A client proves who it is with an OpenID token from its homeserver and gets a LiveKit token
for the identity and room that every other MatrixRTC client will expect
(shared/docs/matrixrtc-protocol.md §4.5, §5):

- ``/sfu/get`` (legacy memberships): identity ``{user_id}:{device_id}``, room = alias of
  ``[room, "m.call#ROOM"]``.
- ``/get_token`` (MSC4195, sticky memberships): identity = hash of
  ``[user_id, claimed_device_id, member.id]``, room = alias of ``[room_id, slot_id]``.

Requests are decoded the way the Go service decodes them (unknown fields and wrong types are
400 M_NOT_JSON), validated in its order and answered with its error codes. The OpenID token is
checked at the configured homeserver's federation ``openid/userinfo``, and the user it names
must belong to ``matrix_server_name``. It creates no rooms. ``/delegate_delayed_leave``
takes over the delayed leave of a member of the configured homeserver (its "full access"
users; others get lk-jwt-service's M_FORBIDDEN) and watches it as lk-jwt-service does
(``bot.devsfu.delegation``); the older delay fields of the token requests stay refused.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

import aiohttp
from aiohttp import web

from bot.devsfu.auth import TokenAuthority
from bot.devsfu.delegation import DelayedLeaves, Job, Presence
from bot.rtc.identity import hashed_identity, legacy_identity, livekit_room_alias

log = logging.getLogger(__name__)

LEGACY_SLOT_ID = "m.call#ROOM"  # /sfu/get predates slots; the service hard-codes this one
USERINFO_TIMEOUT = aiohttp.ClientTimeout(total=10)

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
        present: Presence = lambda room, identity: False,
    ) -> None:
        self.homeserver = homeserver.rstrip("/")
        self.authority = authority
        self._livekit_url = livekit_url
        self.delayed_leaves = DelayedLeaves(present)

    def add_routes(self, app: web.Application) -> None:
        app.router.add_route("*", "/sfu/get", self.sfu_get)
        app.router.add_route("*", "/get_token", self.get_token)
        app.router.add_route("*", "/delegate_delayed_leave", self.delegate_delayed_leave)

    async def _user_id(self, token: dict[str, Any]) -> str:
        """The Matrix user the OpenID token belongs to, as its homeserver says."""
        url = f"{self.homeserver}/_matrix/federation/v1/openid/userinfo"
        try:
            async with (
                aiohttp.ClientSession(timeout=USERINFO_TIMEOUT) as http,
                http.get(url, params={"access_token": token["access_token"]}) as resp,
            ):
                if resp.status != 200:
                    log.info("OpenID token refused by the homeserver (HTTP %d)", resp.status)
                    raise _unauthorized()
                info = await resp.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as e:
            log.warning("OpenID userinfo request failed: %s", e)
            raise _unauthorized() from e
        sub = info.get("sub") if isinstance(info, dict) else None
        # As gomatrixserverlib's LookupUserInfo: the user must be on the named server.
        if not isinstance(sub, str) or sub.partition(":")[2] != token["matrix_server_name"]:
            log.info("OpenID user %r is not on %r", sub, token["matrix_server_name"])
            raise _unauthorized()
        return sub

    def _answer(self, request: web.Request, identity: str, room: str) -> web.Response:
        jwt = self.authority.mint(identity, room)
        log.info("issued a token for %s in room %s", identity, room)
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
            return self._answer(request, identity, livekit_room_alias(body["room"], LEGACY_SLOT_ID))
        except MatrixError as e:
            return _error_response(e)

    async def get_token(self, request: web.Request) -> web.Response:
        try:
            body = await self._body(request, _GET_TOKEN_FIELDS)
            if body is None:
                return web.Response(headers=CORS_HEADERS)
            token, member = body["openid_token"], body["member"]
            if not body["room_id"] or not body["slot_id"]:
                raise MatrixError(
                    400, "M_BAD_JSON", "The request body is missing `room_id` or `slot_id`"
                )
            if not all(member[k] for k in _MEMBER_FIELDS):
                raise MatrixError(
                    400,
                    "M_BAD_JSON",
                    "The request body `member` is missing a `id`, `claimed_user_id` or "
                    "`claimed_device_id`",
                )
            if not token["access_token"] or not token["matrix_server_name"]:
                raise MatrixError(
                    400,
                    "M_BAD_JSON",
                    "The request body `openid_token` is missing a `access_token` or "
                    "`matrix_server_name`",
                )
            _check_delay_fields(body)
            user_id = await self._user_id(token)
            if member["claimed_user_id"] != user_id:
                log.info("claimed user %r is not %r", member["claimed_user_id"], user_id)
                raise _unauthorized()
            _refuse_delegation(body)
            identity = hashed_identity(user_id, member["claimed_device_id"], member["id"], go=True)
            room = livekit_room_alias(body["room_id"], body["slot_id"])
            return self._answer(request, identity, room)
        except MatrixError as e:
            return _error_response(e)

    async def delegate_delayed_leave(self, request: web.Request) -> web.Response:
        """lk-jwt-service's handleDelegateDelayedLeave: validated in its order."""
        try:
            body = await self._body(request, _DELEGATE_FIELDS)
            if body is None:
                return web.Response(headers=CORS_HEADERS)
            token, member = body["openid_token"], body["member"]
            if not body["room_id"] or not body["slot_id"]:
                raise MatrixError(
                    400, "M_BAD_JSON", "The request body is missing `room_id` or `slot_id`"
                )
            if not all(member[k] for k in _MEMBER_FIELDS):
                raise MatrixError(
                    400,
                    "M_BAD_JSON",
                    "The request body `member` is missing `id`, `claimed_user_id` or "
                    "`claimed_device_id`",
                )
            if not token["access_token"] or not token["matrix_server_name"]:
                raise MatrixError(
                    400,
                    "M_BAD_JSON",
                    "The request body `openid_token` is missing `access_token` or "
                    "`matrix_server_name`",
                )
            if not body["delay_id"] or body["delay_timeout"] <= 0 or not body["delay_cs_api_url"]:
                raise MatrixError(
                    400,
                    "M_BAD_JSON",
                    "The request body is missing `delay_id`, `delay_timeout` or `delay_cs_api_url`",
                )
            user_id = await self._user_id(token)
            if member["claimed_user_id"] != user_id:
                raise _unauthorized()
            # The service resolves the CS API from the server name (not delay_cs_api_url);
            # here that is the one homeserver it checks OpenID tokens at.
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
