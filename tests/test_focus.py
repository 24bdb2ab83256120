from __future__ import annotations

from livekit import api

from bot.config import RtcConfig
from bot.rtc.focus import livekit_transport, mint_access
from bot.rtc.identity import hashed_identity, livekit_room_alias

CFG = RtcConfig(
    livekit_url="wss://lk.example",
    livekit_api_key="devkey",
    livekit_api_secret="a-secret-of-some-length-0123456789",
)


def _claims(jwt: str) -> api.Claims:
    return api.TokenVerifier("devkey", "a-secret-of-some-length-0123456789").verify(jwt)


def test_minted_token_matches_what_the_jwt_service_issues() -> None:
    access = mint_access(CFG, "@bot:x", "DEV", "!room:x", livekit_transport("https://jwt.x"))
    assert access.url == "wss://lk.example"
    assert access.identity == "@bot:x:DEV"
    claims = _claims(access.jwt)
    assert claims.identity == "@bot:x:DEV"
    assert claims.video.room == livekit_room_alias("!room:x", "m.call#ROOM")
    assert claims.video.room_join and claims.video.can_publish and claims.video.can_subscribe
    assert not claims.video.room_create
    assert "a-secret" not in repr(access) and access.jwt not in repr(access)


def test_minted_token_for_a_sticky_membership() -> None:
    access = mint_access(
        CFG, "@bot:x", "DEV", "!room:x", livekit_transport("https://jwt.x"), member_id="m-1"
    )
    assert _claims(access.jwt).identity == hashed_identity("@bot:x", "DEV", "m-1", go=True)
