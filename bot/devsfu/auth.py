"""LiveKit access tokens: verifying what clients present, minting what the JWT service issues.

Tokens are the ones LiveKit uses: HS256 JWTs with ``iss`` = API key, ``sub`` = identity and the
grants under ``video``. The defaults are those of ``livekit-server --dev``.
"""

from __future__ import annotations

import contextlib
import datetime
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field

from aiohttp import web
from livekit import api

from bot.rtc.focus import TOKEN_TTL, mint_token

DEFAULT_API_KEY = "devkey"
DEFAULT_API_SECRET = "secret"  # noqa: S105 - livekit-server --dev's, for tests only


class TokenError(Exception):
    """The token is missing, forged, expired or grants no room; the message says which."""


@dataclass(frozen=True)
class Grant:
    """What a verified token allows: who joins which room, with which permissions."""

    identity: str
    room: str
    name: str = ""
    metadata: str = ""
    attributes: dict[str, str] = field(default_factory=dict)
    can_publish: bool = True
    can_subscribe: bool = True
    can_publish_data: bool = True
    can_update_metadata: bool = False
    hidden: bool = False


@contextlib.contextmanager
def _short_keys_allowed() -> Iterator[None]:
    """PyJWT warns about HMAC keys under 32 bytes; the dev default "secret" is one on purpose."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The HMAC key is")
        yield


class TokenAuthority:
    """Verifies and mints tokens for one API key and secret."""

    def __init__(
        self, api_key: str = DEFAULT_API_KEY, api_secret: str = DEFAULT_API_SECRET
    ) -> None:
        self.api_key = api_key
        self._secret = api_secret
        self._verifier = api.TokenVerifier(api_key, api_secret)

    def verify(self, token: str) -> Grant:
        if not token:
            raise TokenError("no access token")
        try:
            with _short_keys_allowed():
                claims = self._verifier.verify(token)  # signature, iss, exp/nbf, 60 s leeway
        except Exception as e:  # PyJWT's errors, and malformed claims the verifier trips on
            raise TokenError(f"invalid token: {e}") from e
        video = claims.video
        if video is None or not video.room_join or not video.room:
            raise TokenError("invalid token: no roomJoin grant for a room")
        if not claims.identity:
            raise TokenError("invalid token: no identity")
        return Grant(
            identity=str(claims.identity),
            room=str(video.room),
            name=str(claims.name or ""),
            metadata=str(claims.metadata or ""),
            attributes={str(k): str(v) for k, v in (claims.attributes or {}).items()},
            can_publish=video.can_publish is not False,
            can_subscribe=video.can_subscribe is not False,
            can_publish_data=video.can_publish_data is not False,
            can_update_metadata=bool(video.can_update_own_metadata),
            hidden=bool(video.hidden),
        )

    def mint(
        self,
        identity: str,
        room: str,
        ttl: datetime.timedelta = TOKEN_TTL,
        *,
        can_publish: bool = True,
    ) -> str:
        """A token with the grants lk-jwt-service gives (join, publish, subscribe, own
        metadata; no room creation); without ``can_publish``, what it gives users of other
        homeservers than its full-access ones: the same, but subscribe-only."""
        with _short_keys_allowed():
            if can_publish:
                return mint_token(self.api_key, self._secret, identity, room, ttl)
            grants = api.VideoGrants(
                room=room,
                room_join=True,
                room_create=False,
                can_publish=False,
                can_subscribe=True,
                can_update_own_metadata=True,
            )
            token = api.AccessToken(self.api_key, self._secret).with_identity(identity)
            return token.with_grants(grants).with_ttl(ttl).to_jwt()


def bearer_token(request: web.Request) -> str:
    """The token of a signalling request: the Authorization header (what the SDKs send) or the
    ``access_token`` query parameter (older livekit-client versions)."""
    auth = request.headers.get("Authorization", "")
    if auth.startswith("Bearer "):
        return auth[7:].strip()
    return request.query.get("access_token", "")
