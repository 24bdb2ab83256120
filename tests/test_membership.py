from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bot.rtc.membership import (
    DEFAULT_EXPIRE_MS,
    active_memberships,
    is_leave,
    parse_legacy,
    parse_rtc,
    transport_of,
)
from tests.fixtures import fixture
from tests.strategies import json_values

NOW = 1_764_000_000_000
FOCUS = {"type": "livekit", "livekit_service_url": "https://jwt.example", "livekit_alias": "!r"}


def legacy(user: str, device: str, ts: int = NOW - 1000, **content: Any) -> dict:
    body = {
        "application": "m.call",
        "call_id": "",
        "scope": "m.room",
        "device_id": device,
        "expires": DEFAULT_EXPIRE_MS,
        "focus_active": {"type": "livekit", "focus_selection": "multi_sfu"},
        "foci_preferred": [FOCUS],
    }
    body.update(content)
    return {
        "type": "org.matrix.msc3401.call.member",
        "state_key": f"_{user}_{device}_m.call",
        "sender": user,
        "event_id": f"$ev-{user}-{device}-{ts}",
        "origin_server_ts": ts,
        "content": body,
    }


def sticky(user: str, device: str, member_id: str, ts: int = NOW - 1000, **content: Any) -> dict:
    body = {
        "slot_id": "m.call#ROOM",
        "application": {"type": "m.call", "m.call.intent": "audio"},
        "member": {"user_id": user, "device_id": device, "id": member_id},
        "transports": {
            "published": [{"type": "livekit", "livekit_service_url": "https://jwt.example"}],
            "can_subscribe": ["livekit"],
        },
        "versions": [],
        "msc4354_sticky_key": member_id,
    }
    body.update(content)
    return {
        "type": "org.matrix.msc4143.rtc.member",
        "sender": user,
        "event_id": f"$st-{member_id}",
        "origin_server_ts": ts,
        "content": body,
    }


JOINED = {"@a:x", "@b:x", "@c:x"}


def members(state=(), stickies=(), joined=JOINED, now=NOW):
    return active_memberships(
        state_events=state, sticky_events=stickies, joined_users=joined, now_ms=now
    )


def test_legacy_membership_fields() -> None:
    (m,) = members([legacy("@a:x", "DEV", ts=NOW - 5000, created_ts=NOW - 9000)])
    assert (m.user_id, m.device_id, m.kind) == ("@a:x", "DEV", "legacy")
    assert m.rtc_backend_identity == "@a:x:DEV"
    assert m.slot_id == "m.call#ROOM"
    assert m.created_ts == NOW - 9000
    assert m.time_until_expiry(NOW) == DEFAULT_EXPIRE_MS - 9000
    assert m.transports == (FOCUS,)
    assert transport_of(m, [m]) == FOCUS


def test_sorting_expiry_slot_and_joined_filters() -> None:
    events = [
        legacy("@b:x", "B", ts=NOW - 100),
        legacy("@a:x", "A", ts=NOW - 200),
        legacy("@c:x", "C", ts=NOW - DEFAULT_EXPIRE_MS - 1),  # expired
        legacy("@a:x", "OTHERCALL", call_id="abc"),  # another slot
        legacy("@z:x", "Z"),  # not joined to the room
        {**legacy("@b:x", "LEFT"), "content": {}},  # left
        {**legacy("@b:x", "OLD"), "content": {"memberships": []}},  # old MSC3401 format
    ]
    result = members(events)
    assert [(m.user_id, m.device_id) for m in result] == [("@a:x", "A"), ("@b:x", "B")]


def test_expires_is_relative_to_created_ts() -> None:
    ev = legacy("@a:x", "A", ts=NOW - 10, created_ts=NOW - 3 * 3600_000, expires=3 * 3600_000)
    assert members([ev]) == []
    ev["content"]["expires"] = 8 * 3600_000
    assert len(members([ev])) == 1


def test_oldest_membership_focus() -> None:
    old_focus = {"type": "livekit", "livekit_service_url": "https://old.example"}
    oldest = legacy("@a:x", "A", ts=NOW - 500, foci_preferred=[old_focus])
    newer = legacy(
        "@b:x",
        "B",
        ts=NOW - 100,
        focus_active={"type": "livekit", "focus_selection": "oldest_membership"},
    )
    unknown = legacy(
        "@c:x", "C", ts=NOW - 50, focus_active={"type": "livekit", "focus_selection": "magic"}
    )
    ms = members([newer, oldest, unknown])
    by_user = {m.user_id: m for m in ms}
    assert transport_of(by_user["@b:x"], ms) == old_focus
    assert transport_of(by_user["@c:x"], ms) is None


def test_a_created_ts_after_the_event_was_sent_is_its_send_time() -> None:
    # Found by a hostile member: a made-up created_ts far in the future kept the membership
    # alive forever (and out of its place in the oldest-first order).
    sent = NOW - 1000
    ev = legacy("@a:x", "A", ts=sent, created_ts=NOW + 10**12)
    (m,) = members([ev])
    assert m.created_ts == sent
    assert members([ev], now=sent + DEFAULT_EXPIRE_MS) == []
    later = legacy("@b:x", "B", ts=NOW - 500)
    assert [m.user_id for m in members([later, ev])] == ["@a:x", "@b:x"]
    for bad in (float("inf"), float("nan")):
        assert members([legacy("@a:x", "A", created_ts=bad)]) == []
        assert members([legacy("@a:x", "A", expires=bad)]) == []


def test_one_device_counts_once() -> None:
    # Found by a hostile member: !status listed a device three times, once per state key.
    events = [
        {**legacy("@a:x", "A", ts=NOW - 300 + i), "state_key": key, "event_id": f"$a{i}"}
        for i, key in enumerate(["_@a:x_A_m.call", "_@a:x_A_m.callx", "@a:x"])
    ]
    events.append(legacy("@b:x", "B", ts=NOW - 400))
    ms = members(events)
    assert [(m.user_id, m.device_id) for m in ms] == [("@b:x", "B"), ("@a:x", "A")]
    assert ms[1].event_id == "$a2"  # the device's newest event: where it is now
    # the same for an old sticky join lingering beside the new one, and across both forms
    old = sticky("@c:x", "C", "join-1", ts=NOW - 900)
    new = sticky("@c:x", "C", "join-2", ts=NOW - 100)
    ms = members([legacy("@c:x", "C", ts=NOW - 500)], [new, old])
    assert [(m.kind, m.member_id) for m in ms] == [("rtc", "join-2")]


def test_sticky_memberships_and_precedence() -> None:
    st_ev = sticky("@a:x", "A", "uuid-1", ts=NOW - 50)
    shadowed = {**legacy("@a:x", "A"), "state_key": "uuid-1"}
    result = members([shadowed, legacy("@b:x", "B", ts=NOW - 10)], [st_ev])
    assert [(m.kind, m.user_id) for m in result] == [("rtc", "@a:x"), ("legacy", "@b:x")]
    rtc = result[0]
    assert rtc.member_id == "uuid-1"
    assert rtc.transports == ({"type": "livekit", "livekit_service_url": "https://jwt.example"},)
    assert len(rtc.rtc_backend_identity) == 43
    assert rtc.call_intent == "audio"
    assert rtc.absolute_expiry() is None


def test_sticky_rtc_transports_shape_is_read_too() -> None:
    ev = sticky("@a:x", "A", "u")
    del ev["content"]["transports"]
    ev["content"]["rtc_transports"] = [{"type": "livekit", "livekit_service_url": "https://o"}]
    (m,) = members([], [ev])
    assert m.transports[0]["livekit_service_url"] == "https://o"
    del ev["content"]["rtc_transports"]
    assert members([], [ev]) == []


def test_sticky_validation() -> None:
    bad = [
        sticky("@a:x", "A", "u", member={"user_id": "@b:x", "device_id": "A", "id": "u"}),
        sticky("@a:x", "A", "u", slot_id="m.call#ROOM#2"),
        sticky("@a:x", "A", "u", slot_id="other#ROOM"),
        sticky("@a:x", "A", "u", versions=[1]),
        sticky("@a:x", "A", "u", sticky_key="different"),
        sticky("@a:x", "A", "u", transports={"published": [{"url": "no type"}]}),
        sticky("@a:x", "A", "u", transports={"published": [], "can_subscribe": [1]}),
        sticky("@a:x", "A", "u", transports=[]),
        sticky("@a:x", "A", "u", **{"m.relates_to": {"rel_type": "m.thread", "event_id": "$x"}}),
    ]
    for ev in bad:
        assert members([], [ev]) == [], ev["content"]


def test_malformed_legacy_content_is_dropped(caplog) -> None:
    caplog.set_level("INFO")
    ev = legacy("@a:x", "A", device_id=5)
    assert members([ev]) == []
    assert "ignoring a malformed legacy membership" in caplog.text
    ev = legacy("@a:x", "A", focus_active={"focus_selection": "multi_sfu"})
    assert members([ev]) == []
    ev = legacy("@a:x", "A", expires=True)
    assert members([ev]) == []


# --------------------------------------------------------------------------- properties


def _mutations(base: dict) -> st.SearchStrategy[dict]:
    """The base event with one field anywhere replaced by arbitrary JSON (or removed)."""

    def paths(obj: Any, prefix: tuple = ()) -> list[tuple]:
        out = [prefix] if prefix else []
        if isinstance(obj, dict):
            for k, v in obj.items():
                out += paths(v, (*prefix, k))
        return out

    def apply(path: tuple, value: Any, delete: bool) -> dict:
        ev = copy.deepcopy(base)
        target = ev
        for k in path[:-1]:
            target = target[k]
        if delete:
            target.pop(path[-1], None)
        else:
            target[path[-1]] = value
        return ev

    return st.builds(apply, st.sampled_from(paths(base)), json_values, st.booleans())


@settings(max_examples=300, deadline=None)
@given(_mutations(legacy("@a:x", "A")))
def test_legacy_parser_never_raises(event: dict) -> None:
    result = members([event])
    assert all(m.user_id == "@a:x" for m in result)


@settings(max_examples=300, deadline=None)
@given(_mutations(sticky("@a:x", "A", "u")))
def test_sticky_parser_never_raises(event: dict) -> None:
    result = members([], [event])
    assert all(m.user_id == "@a:x" for m in result)


@settings(max_examples=200, deadline=None)
@given(st.lists(json_values, max_size=5), st.lists(json_values, max_size=5))
def test_arbitrary_json_never_raises(state: list, stickies: list) -> None:
    assert members(state, stickies) == []


def test_parse_legacy_rejects_bad_envelopes() -> None:
    import pytest

    from bot.rtc.membership import _Invalid

    for broken in ({"sender": "nobody"}, {**legacy("@a:x", "A"), "origin_server_ts": "soon"}):
        with pytest.raises(_Invalid):
            parse_legacy(broken)


# --------------------------------------------------------------------------- captured forms


def _members_of(*events: dict, joined: frozenset[str] = frozenset()) -> list:
    users = joined or frozenset(e["sender"] for e in events)
    return active_memberships(
        state_events=[], sticky_events=list(events), joined_users=users, now_ms=NOW
    )


def test_js43_js42_and_spec_sticky_forms_are_all_members() -> None:
    js43 = fixture("memberships", "rtc_member_js43")["event"]
    js42 = fixture("memberships", "rtc_member_js42")["event"]
    spec = fixture("memberships", "rtc_member_spec")["event"]
    (m43,) = _members_of(js43)
    assert (m43.device_id, m43.member_id, m43.call_intent) == (
        "JSDEVICE",
        js43["content"]["member"]["id"],
        "video",
    )
    assert m43.transports[0]["livekit_service_url"] == "https://rtc.example.org/livekit/jwt"
    (m42,) = _members_of(js42)
    assert m42.transports == m43.transports
    (ms,) = _members_of(spec)
    assert (ms.user_id, ms.device_id, ms.member_id) == (
        "@bob:example.org",
        "RUSTDEVICE",
        "b0b-member",
    )
    # MSC4195's m.livekit/url is read as the livekit transport js clients understand.
    assert ms.transports == (
        {"type": "livekit", "livekit_service_url": "https://rtc.other.example/livekit/jwt"},
    )
    assert transport_of(ms, [ms]) == ms.transports[0]


def test_a_js43_refresh_is_still_a_member() -> None:
    (m,) = _members_of(fixture("memberships", "rtc_member_js43_refresh")["event"])
    assert m.event_id == "$rtcrefresh43"


def test_leaves_in_both_forms_are_not_members() -> None:
    for join, leave in (
        ("rtc_member_js43", "rtc_member_leave_js43"),
        ("rtc_member_spec", "rtc_member_spec_leave"),
    ):
        left = fixture("memberships", leave)["event"]
        assert is_leave(left["content"])
        assert not is_leave(fixture("memberships", join)["event"]["content"])
        assert _members_of(left) == []
    # A spec leave that kept the rest of the join is no member either.
    join = fixture("memberships", "rtc_member_spec")["event"]
    join["content"]["member"]["membership"] = "leave"
    assert is_leave(join["content"]) and _members_of(join) == []
    with pytest.raises(ValueError, match="not join"):
        parse_rtc(join)


def test_spec_form_checks() -> None:
    base = fixture("memberships", "rtc_member_spec")["event"]

    def with_member(**member: Any) -> dict:
        ev = copy.deepcopy(base)
        ev["content"]["member"] = {"id": "b0b-member", "membership": "join", **member}
        return ev

    assert _members_of(with_member(device_id="D"))[0].device_id == "D"
    assert _members_of(with_member(claimed_device_id="D", claimed_user_id="@bob:example.org"))
    assert _members_of(with_member()) == []  # no device: nothing to attribute keys to
    assert _members_of(with_member(claimed_device_id="D", user_id="@eve:example.org")) == []
    assert _members_of(with_member(claimed_device_id="D", membership="knock")) == []


def test_is_leave_never_raises_and_parsers_agree() -> None:
    for content in ({}, {"slot_id": "x"}, {"sticky_key": "k"}, {"member": "x"}, None, [], 3):
        assert is_leave(content) in (True, False)
