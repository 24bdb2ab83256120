"""Units for the call's other SFUs (bot.media.sfus): which SFUs members publish on, and the
set of subscribing connections as members come and go. The federated call itself is tested
against real parts in tests/test_federation.py."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from bot.media import sfus as sfus_module
from bot.media.connection import MediaConnection
from bot.media.sfus import MAX_REMOTE_SFUS, RemoteSfus, SfuUse, sfus_in_use, transport_key
from bot.outbound import OutboundPolicy
from bot.rtc.focus import RtcError, SfuAccess
from bot.rtc.membership import CallMembership

ME = ("@bot:one.org", "BOTDEV")
OWN = {"type": "livekit", "livekit_service_url": "https://rtc.one.org/jwt"}
OTHER = {"type": "livekit", "livekit_service_url": "https://rtc.two.org/jwt/"}


def _member(
    user: str, device: str, transport: dict[str, Any] | None, selection: str = "multi_sfu", ts=1
) -> CallMembership:
    return CallMembership(
        kind="legacy",
        event_id=f"$ev-{device}",
        user_id=user,
        device_id=device,
        application="m.call",
        slot_id="m.call#ROOM",
        member_id=f"{user}:{device}",
        transports=(transport,) if transport else (),
        created_ts=ts,
        origin_server_ts=ts,
        focus_selection=selection,
    )


def test_each_sfu_once_without_ours_and_without_me() -> None:
    members = [
        _member("@alice:one.org", "A", OWN, ts=1),
        _member(*ME, OTHER, ts=2),  # the bot itself: never a reason to connect
        _member("@bob:two.org", "B", OTHER, ts=3),
        _member("@bob:two.org", "B2", {**OTHER, "livekit_alias": "x"}, ts=4),
        _member("@eve:two.org", "E", {"type": "full-mesh"}, ts=5),  # not LiveKit
    ]
    uses = sfus_in_use(members, ME, transport_key(OWN))
    assert list(uses) == [transport_key(OTHER)]
    (use,) = uses.values()
    # The trailing slash and the alias do not make another SFU.
    assert [m.device_id for m in use.members] == ["B", "B2"]
    assert use.server_name == "two.org" and use.host == "rtc.two.org"


def test_oldest_membership_members_publish_on_the_oldest_members_sfu() -> None:
    members = [
        _member("@carol:two.org", "C", OTHER, selection="oldest_membership", ts=1),
        _member("@dave:one.org", "D", OWN, selection="oldest_membership", ts=2),
    ]
    uses = sfus_in_use(members, ME, transport_key(OWN))
    (use,) = uses.values()
    assert use.key == transport_key(OTHER)
    assert [m.device_id for m in use.members] == ["C", "D"]


def test_a_member_without_a_transport_names_no_sfu() -> None:
    members = [_member("@x:two.org", "X", None), _member("@y:two.org", "Y", OTHER, "unknown")]
    assert sfus_in_use(members, ME, None) == {}


def test_openid_goes_to_a_members_own_homeserver_only() -> None:
    policy = OutboundPolicy()
    assert policy.trusts_openid("https://rtc.two.org/jwt", member_server="two.org")
    assert policy.trusts_openid("https://two.org:8443/jwt", member_server="two.org:8448")
    assert not policy.trusts_openid("https://rtc.evil.org/jwt", member_server="two.org")
    assert not policy.trusts_openid("https://nottwo.org/jwt", member_server="two.org")
    assert not policy.trusts_openid("https://rtc.two.org/jwt")
    off = OutboundPolicy(openid_member_homeservers=False)
    assert not off.trusts_openid("https://rtc.two.org/jwt", member_server="two.org")


class Ring:
    def current_keys(self) -> list[Any]:
        return []


class Harness:
    """RemoteSfus with connections that succeed or fail as told, and what it said."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.failing: set[str] = set()
        self.connected: list[str] = []
        self.closed: list[str] = []
        self.told: list[str] = []
        harness = self

        async def connect(conn: MediaConnection) -> None:
            access = conn.access = await conn._get_access()
            if access.url in harness.failing:
                raise RtcError(f"the call's authorization service {access.url} refused: HTTP 500")
            harness.connected.append(access.url)

        async def reconnect(conn: MediaConnection) -> None:
            await connect(conn)

        async def close(conn: MediaConnection) -> None:
            if conn.access is not None:
                harness.closed.append(conn.access.url)

        monkeypatch.setattr(MediaConnection, "connect", connect)
        monkeypatch.setattr(MediaConnection, "reconnect", reconnect)
        monkeypatch.setattr(MediaConnection, "close", close)
        monkeypatch.setattr(sfus_module, "RETRY_FIRST_S", 0.01)
        monkeypatch.setattr(sfus_module, "RETRY_MAX_S", 0.02)

        async def access(use: SfuUse) -> SfuAccess:
            return SfuAccess(use.host, "jwt", "@bot:one.org:BOTDEV", use.transport)

        def on_connected(key: str, room: object) -> None:
            pass

        self.sfus = RemoteSfus(
            "!room:one.org",
            access,
            lambda key, room: None,
            on_connected,
            Ring(),
            self.told.append,
            str,
        )

    def uses(self, *hosts: str) -> dict[str, SfuUse]:
        members = [
            _member(f"@u:{h}", f"D{i}", {"type": "livekit", "livekit_service_url": f"https://{h}"})
            for i, h in enumerate(hosts)
        ]
        return sfus_in_use(members, ME, None)


async def _settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0.01)


async def test_connections_follow_the_members(monkeypatch: pytest.MonkeyPatch) -> None:
    h = Harness(monkeypatch)
    h.sfus.update(h.uses("two.org"))
    await _settle()
    assert h.connected == ["two.org"]
    h.sfus.update(h.uses("two.org", "three.org"))  # someone from a third server joins
    await _settle()
    assert h.connected == ["two.org", "three.org"]
    h.sfus.update(h.uses("three.org"))  # the last member on two.org left
    await _settle()
    assert h.closed == ["two.org"] and list(h.sfus.sfus) == [
        transport_key({"type": "livekit", "livekit_service_url": "https://three.org"})
    ]
    await h.sfus.stop()
    assert h.closed == ["two.org", "three.org"]
    assert h.told == []


async def test_a_failing_sfu_is_retried_and_told_once(monkeypatch: pytest.MonkeyPatch) -> None:
    h = Harness(monkeypatch)
    h.failing.add("two.org")
    h.sfus.update(h.uses("two.org"))
    await _settle()
    (sfu,) = h.sfus.sfus.values()
    assert sfu.attempts >= 3 and not sfu.connected
    assert h.told == [
        "I can't hear the members on two.org (the call's authorization service two.org "
        "refused: HTTP 500); I keep trying."
    ]
    assert "not connected" in sfu.line(lambda m: m.user_id)
    h.failing.clear()
    await _settle()
    assert sfu.connected and h.connected == ["two.org"]
    assert h.told[-1] == "I can hear the members on two.org now."
    assert "connected; @u:two.org" in sfu.line(lambda m: m.user_id)
    await h.sfus.stop()


async def test_members_cannot_make_the_bot_connect_everywhere(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    h = Harness(monkeypatch)
    hosts = [f"sfu{i}.evil.org" for i in range(MAX_REMOTE_SFUS + 5)]
    h.sfus.update(h.uses(*hosts))
    await _settle()
    assert len(h.connected) == MAX_REMOTE_SFUS
    assert h.sfus.over_limit == 5
    assert "5 more SFU(s)" in h.sfus.lines(lambda m: m.user_id)[-1]
    await h.sfus.stop()
