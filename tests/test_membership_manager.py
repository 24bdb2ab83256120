"""Our own membership's delayed leave (bot.rtc.membership_manager), with the homeserver
calls replaced: what happens when the server ignores the delay, and when the leave is
handed to the JWT service."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

from bot.config import RtcConfig
from bot.matrix import rest, sticky
from bot.rtc import delegation
from bot.rtc.membership_manager import MembershipManager

TRANSPORT = {"type": "livekit", "livekit_service_url": "https://jwt.example"}


def client() -> Any:
    return SimpleNamespace(user_id="@bot:x", device_id="BOT", rooms={}, homeserver="https://hs")


@pytest.fixture
def homeserver(monkeypatch):
    """Records the membership calls; the feature flags are the test's to set."""
    calls: dict[str, Any] = {"features": {}, "sent": [], "delegated": []}

    async def unstable_features(_c):
        return calls["features"]

    async def put_state(_c, room, typ, key, content):
        calls["sent"].append(("state", content))
        return "$state"

    async def put_delayed_state(_c, room, typ, key, content, delay_ms):
        return await calls["delayed"](content)

    async def sticky_send(_c, room, typ, content, *, delay_ms=None, sticky_ms=None):
        if delay_ms is not None:
            return await calls["delayed"](content)
        calls["sent"].append(("sticky", content))
        return "$sticky"

    async def action(_c, delay_id, what):
        calls["sent"].append((what, delay_id))

    async def delegate(_c, service, leave, policy=None):
        calls["delegated"].append((service, leave))
        return True

    async def delayed(content):
        return "delay-1"

    calls["delayed"] = delayed
    monkeypatch.setattr(rest, "unstable_features", unstable_features)
    monkeypatch.setattr(rest, "put_state", put_state)
    monkeypatch.setattr(rest, "put_delayed_state", put_delayed_state)
    monkeypatch.setattr(rest, "delayed_event_action", action)
    monkeypatch.setattr(sticky, "send", sticky_send)
    monkeypatch.setattr(delegation, "delegate", delegate)
    return calls


async def test_a_server_that_ignores_the_delay_counts_as_without_delayed_events(
    homeserver, caplog
) -> None:
    homeserver["features"] = {"org.matrix.msc4140": True}

    async def ignored(content):
        raise rest.DelayIgnored("scheduling: the homeserver sent it at once (no delay_id)")

    homeserver["delayed"] = ignored
    mm = MembershipManager(client(), "!r:x", RtcConfig(), on_error=lambda e: None)
    assert await mm.join(dict(TRANSPORT)) == "$state"
    assert mm.delayed_leave_supported is False and mm._delay_id is None
    assert "ignored the delay" in caplog.text
    assert not [c for c in homeserver["sent"] if c[0] == "restart"]  # nothing to restart
    await mm.leave()
    assert homeserver["sent"][-1] == ("state", {})  # the leave, sent directly


async def test_a_sticky_leave_is_handed_to_the_jwt_service(homeserver) -> None:
    homeserver["features"] = {"org.matrix.msc4140": True, "org.matrix.msc4354": True}
    cfg = RtcConfig(membership_format="sticky")
    mm = MembershipManager(client(), "!r:x", cfg, on_error=lambda e: None)
    member_id = await mm.prepare()
    await mm.join(dict(TRANSPORT))
    await asyncio.sleep(0)  # the hand-over runs in the background
    await asyncio.sleep(0)
    ((service, leave),) = homeserver["delegated"]
    assert service == "https://jwt.example"
    assert leave == delegation.DelayedLeave(
        "!r:x", "m.call#ROOM", member_id, "delay-1", cfg.delayed_leave_ms
    )
    assert mm.delegated
    # js 43's leave content: the slot and the sticky key only
    assert mm.leave_content() == {"slot_id": "m.call#ROOM", "msc4354_sticky_key": member_id}
    await mm.leave()


@pytest.mark.parametrize(
    "cfg",
    [
        RtcConfig(),  # legacy memberships: the service cannot find the member on the SFU
        RtcConfig(
            membership_format="sticky",
            livekit_url="wss://lk.x",
            livekit_api_key="k",
            livekit_api_secret="s" * 32,
        ),  # tokens minted by the bot: no JWT service at all
    ],
)
async def test_no_hand_over_without_a_sticky_membership_on_a_jwt_service(homeserver, cfg) -> None:
    homeserver["features"] = {"org.matrix.msc4140": True, "org.matrix.msc4354": True}
    mm = MembershipManager(client(), "!r:x", cfg, on_error=lambda e: None)
    await mm.prepare()
    await mm.join(dict(TRANSPORT))
    await asyncio.sleep(0)
    assert homeserver["delegated"] == [] and not mm.delegated
    await mm.leave()


async def test_a_replaced_delayed_leave_is_handed_over_again(homeserver, monkeypatch) -> None:
    """The service's job ends with the old delay ID (404 on its restart): a new one goes too."""
    homeserver["features"] = {"org.matrix.msc4140": True, "org.matrix.msc4354": True}
    ids = iter(["delay-1", "delay-2"])

    async def delayed(content):
        return next(ids)

    homeserver["delayed"] = delayed
    mm = MembershipManager(
        client(), "!r:x", RtcConfig(membership_format="sticky"), on_error=lambda e: None
    )
    await mm.prepare()
    await mm.join(dict(TRANSPORT))
    await asyncio.sleep(0)

    async def gone(_c, delay_id, what):
        raise rest.MatrixHttpError(404, {"errcode": "M_NOT_FOUND"}, "restart")

    monkeypatch.setattr(rest, "delayed_event_action", gone)
    await mm._restart_delayed_leave()
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert [leave.delay_id for _, leave in homeserver["delegated"]] == ["delay-1", "delay-2"]
    mm.joined = False
    await mm._stop_tasks()
