"""Call notifications and declines (bot.rtc.notification), from matrix-js-sdk 43's events."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from bot.rtc.notification import (
    MAX_LIFETIME_MS,
    NOTIFICATION_TYPE,
    NotificationLog,
    notification_content,
    parse_decline,
    parse_notification,
)
from tests.fixtures import fixture
from tests.strategies import json_values


def test_js43_notification_and_decline() -> None:
    event = fixture("notifications", "notification_js43")["event"]
    n = parse_notification(event)
    assert n is not None and (n.event_id, n.sender, n.slot_id) == (
        "$notify43",
        "@alice:example.org",
        "m.call#ROOM",
    )
    assert n.expires_ms == event["content"]["sender_ts"] + 90_000
    d = parse_decline(fixture("notifications", "decline_js43")["event"])
    assert d is not None and (d.user_id, d.notification_id) == ("@bob:example.org", "$notify43")


def test_lifetime_cap_and_clock_skew_as_js() -> None:
    event = fixture("notifications", "notification_js43")["event"]
    event["content"]["lifetime"] = 10 * MAX_LIFETIME_MS
    n = parse_notification(event)
    assert n is not None and n.expires_ms == event["content"]["sender_ts"] + MAX_LIFETIME_MS
    # sender_ts more than 20 s ahead of the server: the server's time counts (js
    # getCallNotificationExpiry)
    event["content"]["sender_ts"] = event["origin_server_ts"] + 60_000
    n = parse_notification(event)
    assert n is not None and n.expires_ms == event["origin_server_ts"] + MAX_LIFETIME_MS


def test_what_the_bot_sends_has_js43s_shape() -> None:
    js = fixture("notifications", "notification_js43")["event"]["content"]
    ours = notification_content(
        slot_id="m.call#ROOM", notification_type="ring", membership_event_id="$m", now_ms=5
    )
    assert set(ours) == set(js)
    assert ours["msc4354_sticky_key"] == ours["slot_id"] == "m.call#ROOM"
    assert ours["m.relates_to"] == {"rel_type": "m.reference", "event_id": "$m"}
    long = notification_content(
        slot_id="m.call#ROOM", notification_type="ring", membership_event_id="$m", now_ms=5,
        lifetime_ms=10**9, call_intent=None,
    )  # fmt: skip
    assert long["lifetime"] == MAX_LIFETIME_MS and "m.call.intent" not in long


@settings(max_examples=200, deadline=None)
@given(
    kind=st.sampled_from(["ring", "notification"]),
    now=st.integers(0, 2**50),
    lifetime=st.integers(0, 10**7),
    event_id=st.text(min_size=1, max_size=20),
)
def test_what_the_bot_sends_reads_back(kind, now, lifetime, event_id) -> None:
    content = notification_content(
        slot_id="m.call#ROOM",
        notification_type=kind,
        membership_event_id=event_id,
        now_ms=now,
        lifetime_ms=lifetime,
    )
    event = {
        "type": NOTIFICATION_TYPE,
        "event_id": "$n",
        "sender": "@b:x",
        "origin_server_ts": now,
        "content": content,
    }
    n = parse_notification(event)
    assert n is not None and n.expires_ms == now + min(lifetime, MAX_LIFETIME_MS)


def test_the_log_keeps_declines_of_the_latest_notification_only() -> None:
    log = NotificationLog()
    decline = fixture("notifications", "decline_js43")["event"]
    assert log.add_event(decline)  # before its notification: kept, not shown yet
    assert log.declines() == []
    assert log.add_event(fixture("notifications", "notification_js43")["event"])
    assert [d.user_id for d in log.declines()] == ["@bob:example.org"]
    log.add_event(decline)  # the same user twice counts once
    assert len(log.declines()) == 1
    later = fixture("notifications", "notification_js43")["event"]
    later["event_id"] = "$notify-later"
    log.add_event(later)
    assert log.declines() == []
    assert not log.add_event({"type": "m.room.message", "content": {}})
    for i in range(500):  # a flood of declines of made-up notifications stays bounded
        log.add_event(
            {
                **decline,
                "content": {"m.relates_to": {"rel_type": "m.reference", "event_id": f"${i}"}},
            }
        )
    assert len(log._declines) <= 51


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_never_raises(value) -> None:
    log = NotificationLog()
    for name in ("notification_js43", "decline_js43"):
        event = fixture("notifications", name)["event"]
        log.add_event({**event, "content": value})
        if isinstance(value, dict):
            log.add_event({**event, **value})
            log.add_event({**event, "content": {**event["content"], **value}})
    log.declines()
