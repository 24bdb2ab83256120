from __future__ import annotations

from hypothesis import given, settings

from bot.matrix.sticky import StickyStore
from tests.strategies import json_values

TYPE = "org.matrix.msc4143.rtc.member"


def ev(event_id: str, ots: int, key: str = "k", sender: str = "@a:x", **top) -> dict:
    event = {
        "type": TYPE,
        "sender": sender,
        "event_id": event_id,
        "origin_server_ts": ots,
        "content": {"msc4354_sticky_key": key},
        "msc4354_sticky": {"duration_ms": 3_600_000},
    }
    event.update(top)
    return event


def test_newest_event_per_key_wins() -> None:
    store = StickyStore()
    assert store.add(ev("$b", 2000), received_ms=2000)
    assert not store.add(ev("$a", 1000), received_ms=2100)  # older: ignored
    assert store.add(ev("$c", 2000), received_ms=2200)  # same ts: higher event ID wins
    assert store.add(ev("$z", 500, key="other"), received_ms=2200)
    assert sorted(e["event_id"] for e in store.current(TYPE, now_ms=2300)) == ["$c", "$z"]
    assert store.current("other.type", now_ms=2300) == []


def test_expiry() -> None:
    store = StickyStore()
    store.add(ev("$a", 1000, msc4354_sticky={"duration_ms": 10_000_000}), received_ms=1000)
    assert store.next_expiry() == 1000 + 3_600_000  # capped at 1 h
    store.add(
        ev("$t", 0, key="t", unsigned={"msc4354_sticky_duration_ttl_ms": 500}), received_ms=5000
    )
    assert [e["event_id"] for e in store.current(TYPE, now_ms=5400)] == ["$a", "$t"]
    assert [e["event_id"] for e in store.current(TYPE, now_ms=5600)] == ["$a"]
    assert store.current(TYPE, now_ms=1000 + 3_600_000) == []


def test_non_sticky_and_malformed_events_are_refused() -> None:
    store = StickyStore()
    plain = ev("$p", 1)
    del plain["msc4354_sticky"]
    assert not store.add(plain)
    assert not store.add({**ev("$q", 1), "content": {}})
    assert not store.add({**ev("$r", 1), "origin_server_ts": "1"})


@settings(max_examples=200, deadline=None)
@given(json_values)
def test_never_raises(value) -> None:
    store = StickyStore()
    store.add(value if isinstance(value, dict) else {"x": value}, received_ms=0)
    if isinstance(value, dict):
        store.add({**ev("$a", 1), **value}, received_ms=0)
    store.current(TYPE, now_ms=0)


def test_the_stable_sticky_key_is_read_too() -> None:
    """MSC4143's latest memberships carry ``sticky_key`` (the MSC4354 stable name) only."""
    store = StickyStore()
    spec = {**ev("$s", 1000), "content": {"sticky_key": "member-1"}}
    assert store.add(spec, received_ms=1000)
    newer = {**ev("$t", 2000), "content": {"sticky_key": "member-1", "x": 1}}
    assert store.add(newer, received_ms=2000)  # the same key: it replaces the first
    assert [e["event_id"] for e in store.current(TYPE, now_ms=2000)] == ["$t"]
    both = {**ev("$u", 3000, key="k2"), "content": {"msc4354_sticky_key": "k2", "sticky_key": "k3"}}
    assert store.add(both, received_ms=3000)  # the unstable name wins, as js reads it
    assert len(store.current(TYPE, now_ms=3000)) == 2
