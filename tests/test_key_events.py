"""Media key to-device events in both wire forms (bot.rtc.key_events), from captured payloads."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bot.rtc.key_events import (
    ELEMENT_CALL_TYPE,
    KEY_EVENT_TYPES,
    SPEC_TYPE,
    SPEC_UNSTABLE_TYPE,
    claimed_member_of_another_device,
    encode_key_events,
    key_maker,
    parse_key_event,
)
from bot.rtc.keys import MediaKey
from bot.rtc.membership import parse_legacy, parse_rtc
from tests.fixtures import fixture
from tests.strategies import json_values

ROOM = "!HvPqzhPxdWkmNlCbqG:example.org"
ALICE = "@alice:example.org"


def test_element_call_payload_of_js43() -> None:
    f = fixture("key_events", "element_call_js43")
    k = parse_key_event(f["type"], f["content"], ALICE, "JSDEVICE", ROOM, 1.0)
    assert k is not None
    assert (k.user_id, k.device_id, k.member_id) == (
        ALICE,
        "JSDEVICE",
        f["content"]["member"]["id"],
    )
    assert (k.key.key, k.key.index, k.sent_ts) == (bytes(range(16)), 3, 1764870000000)


def test_spec_payload_takes_the_device_from_olm_only() -> None:
    f = fixture("key_events", "spec_msc4143")
    for event_type in (SPEC_TYPE, SPEC_UNSTABLE_TYPE):
        k = parse_key_event(event_type, f["content"], ALICE, "OLMDEVICE", ROOM, 1.0)
        assert k is not None
        assert (k.user_id, k.device_id) == (ALICE, "OLMDEVICE")
        assert (k.key.key, k.key.index) == (bytes(range(32)), 255)
        assert k.member_id == f["content"]["member_id"]
    # A device named in the content changes nothing: the spec form has no such field.
    f["content"]["member"] = {"claimed_device_id": "FORGED"}
    f["content"]["claimed_device_id"] = "FORGED"
    k = parse_key_event(SPEC_TYPE, f["content"], ALICE, "OLMDEVICE", ROOM, 1.0)
    assert k is not None and k.device_id == "OLMDEVICE"
    # Without an Olm-established device there is nothing to attribute the key to.
    assert parse_key_event(SPEC_TYPE, f["content"], ALICE, None, ROOM, 1.0) is None


def test_spec_payload_refusals(caplog) -> None:
    caplog.set_level("INFO")
    base = fixture("key_events", "spec_msc4143")["content"]
    short = base64.b64encode(bytes(20)).decode().rstrip("=")
    bad = [
        {**base, "room_id": "!other:x"},
        {k: v for k, v in base.items() if k != "member_id"},
        {**base, "member_id": 7},
        {**base, "media_key": {"index": 1}},
        {**base, "media_key": {**base["media_key"], "index": 256}},
        {**base, "media_key": {**base["media_key"], "index": True}},
        {**base, "media_key": {**base["media_key"], "format": 1}},
        {**base, "media_key": {**base["media_key"], "key": short}},
        {**base, "media_key": {**base["media_key"], "key": "!!"}},
        {**base, "media_key": [base["media_key"]]},
    ]
    for content in bad:
        assert parse_key_event(SPEC_TYPE, content, ALICE, "D", ROOM, 0.0) is None, content
    assert short not in caplog.text and base["media_key"]["key"] not in caplog.text


def test_other_types_are_not_keys() -> None:
    f = fixture("key_events", "element_call_js43")
    assert parse_key_event("m.room_key", f["content"], ALICE, "JSDEVICE", ROOM, 0.0) is None
    assert KEY_EVENT_TYPES == {ELEMENT_CALL_TYPE, SPEC_TYPE, SPEC_UNSTABLE_TYPE}


def test_js_accepts_16_and_the_spec_32_byte_keys_in_both_forms() -> None:
    for size in (16, 32, 64):
        key = MediaKey(bytes([7]) * size, 9)
        for event_type, content in encode_key_events("both", ROOM, key, "DEV", "mem", 5):
            k = parse_key_event(event_type, content, ALICE, "DEV", ROOM, 0.0)
            assert k is not None and k.key == key


def test_what_each_format_sends() -> None:
    key = key_maker("spec")(4)
    assert len(key.key) == 32 and len(key_maker("element_call")(4).key) == 16
    assert len(key_maker("both")(4).key) == 32
    types = {
        f: [t for t, _ in encode_key_events(f, ROOM, key, "D", "m", 1)]
        for f in ("element_call", "spec", "both")
    }
    assert types == {
        "element_call": [ELEMENT_CALL_TYPE],
        "spec": [SPEC_TYPE],
        "both": [ELEMENT_CALL_TYPE, SPEC_TYPE],
    }
    _, spec = encode_key_events("spec", ROOM, key, "D", "m", 1)[0]
    assert set(spec) == {"room_id", "member_id", "media_key"}
    assert set(spec["media_key"]) == {"index", "key", "format"}
    assert "=" not in spec["media_key"]["key"]  # unpadded
    _, ec = encode_key_events("element_call", ROOM, key, "D", "m", 1)[0]
    assert set(ec) == set(fixture("key_events", "element_call_js43")["content"])


@settings(max_examples=200, deadline=None)
@given(
    fmt=st.sampled_from(["element_call", "spec", "both"]),
    index=st.integers(0, 255),
    raw=st.sampled_from([16, 32, 48, 64]).flatmap(lambda n: st.binary(min_size=n, max_size=n)),
    device=st.text(min_size=1, max_size=20),
    member=st.text(max_size=40),
    now=st.integers(0, 2**53),
)
def test_what_the_bot_sends_reads_back(fmt, index, raw, device, member, now) -> None:
    key = MediaKey(raw, index)
    events = encode_key_events(fmt, ROOM, key, device, member, now)
    assert events
    for event_type, content in events:
        k = parse_key_event(event_type, content, ALICE, device, ROOM, 0.0)
        assert k is not None
        assert (k.key, k.device_id, k.member_id, k.user_id) == (key, device, member, ALICE)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(sorted(KEY_EVENT_TYPES)), json_values, st.none() | st.text(max_size=8))
def test_parsers_never_raise(event_type, value, device) -> None:
    parse_key_event(event_type, value, ALICE, device, ROOM, 0.0)
    if isinstance(value, dict):
        base = fixture("key_events", "spec_msc4143")["content"]
        parse_key_event(event_type, {**base, **value}, ALICE, device, ROOM, 0.0)
        parse_key_event(event_type, {**base, "media_key": value}, ALICE, device, ROOM, 0.0)


@pytest.fixture
def members():
    rtc = parse_rtc(fixture("memberships", "rtc_member_js43")["event"])
    legacy_event = {
        "type": "org.matrix.msc3401.call.member",
        "sender": ALICE,
        "event_id": "$legacy",
        "origin_server_ts": 1,
        "state_key": f"_{ALICE}_OTHER_m.call",
        "content": {
            "application": "m.call",
            "call_id": "",
            "device_id": "OTHER",
            "focus_active": {"type": "livekit", "focus_selection": "multi_sfu"},
        },
    }
    return [rtc, parse_legacy(legacy_event)]


def test_a_spec_key_naming_another_devices_membership(members) -> None:
    rtc, legacy = members
    content = fixture("key_events", "spec_msc4143")["content"]
    content["member_id"] = rtc.member_id
    assert not claimed_member_of_another_device(SPEC_TYPE, content, ALICE, "JSDEVICE", members)
    assert claimed_member_of_another_device(SPEC_TYPE, content, ALICE, "OTHER", members)
    assert claimed_member_of_another_device(SPEC_TYPE, content, "@eve:x", "JSDEVICE", members)
    content["member_id"] = legacy.member_id  # "@alice:example.org:OTHER"
    assert claimed_member_of_another_device(SPEC_UNSTABLE_TYPE, content, ALICE, "JSDEVICE", members)
    content["member_id"] = "no-such-member"  # not a member yet: held until one appears
    assert not claimed_member_of_another_device(SPEC_TYPE, content, ALICE, "JSDEVICE", members)
    # The Element Call form is checked by its claimed device instead (the session does).
    assert not claimed_member_of_another_device(ELEMENT_CALL_TYPE, content, ALICE, "X", members)
