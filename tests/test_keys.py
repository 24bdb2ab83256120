from __future__ import annotations

import base64

import pytest
from hypothesis import given, settings

from bot.rtc.key_events import decode_key, encode_key_content, parse_key_content
from bot.rtc.keys import MediaKey, OwnKey, ReceivedKeys
from tests.strategies import json_values

ROOM = "!room:x"
RAW = bytes(range(16))


def content(**over) -> dict:
    c = encode_key_content(ROOM, MediaKey(RAW, 3), "DEV", "member-uuid", 1_000)
    c.update(over)
    return c


def test_wire_format_matches_js() -> None:
    c = content()
    assert c["keys"] == {"index": 3, "key": base64.b64encode(RAW).decode()}
    assert c["keys"]["key"].endswith("==") and len(c["keys"]["key"]) == 24
    assert c["member"] == {"claimed_device_id": "DEV", "id": "member-uuid"}
    assert c["session"] == {"application": "m.call", "call_id": "", "scope": "m.room"}
    assert c["room_id"] == ROOM and c["sent_ts"] == 1_000


def test_parse_round_trip_and_lenient_base64() -> None:
    k = parse_key_content(content(), "@a:x", ROOM, 5.0)
    assert (k.user_id, k.device_id, k.member_id, k.key.key, k.key.index) == (
        "@a:x",
        "DEV",
        "member-uuid",
        RAW,
        3,
    )
    urlsafe = base64.urlsafe_b64encode(b"\xfb\xff" * 8).decode().rstrip("=")
    assert decode_key(urlsafe) == b"\xfb\xff" * 8


@pytest.mark.parametrize("size", [1, 15, 17, 31, 65, 1000])
def test_keys_of_another_length_are_refused_without_logging_them(caplog, size: int) -> None:
    # Found by a hostile peer: 1- and 17-byte keys were applied. 16 (Element Call) and
    # 32..64 (MSC4195: at least 32) are taken.
    caplog.set_level("DEBUG")
    raw = bytes([0xA5]) * size
    for text in (base64.b64encode(raw).decode(), base64.urlsafe_b64encode(raw).decode()):
        c = content(keys={"index": 1, "key": text})
        assert parse_key_content(c, "@a:x", ROOM, 0.0) is None
        assert f"the key is {size} bytes, not 16 or 32..64" in caplog.text
        assert text.rstrip("=") not in caplog.text
    with pytest.raises(ValueError, match=f"the key is {size} bytes") as e:
        MediaKey(raw, 0)
    assert repr(raw) not in str(e.value)


def test_key_bytes_never_in_repr() -> None:
    k = parse_key_content(content(), "@a:x", ROOM, 5.0)
    assert repr(RAW) not in repr(k)
    assert base64.b64encode(RAW).decode() not in repr(k)


def test_invalid_contents_are_ignored(caplog) -> None:
    caplog.set_level("INFO")
    bad = [
        content(room_id="!other:x"),
        content(keys={"index": 1}),
        content(keys={"index": "1", "key": "AAAA"}),
        content(keys={"index": 256, "key": "AAAA"}),
        content(keys={"index": True, "key": "AAAA"}),
        content(keys={"index": 1, "key": "!!not base64!!"}),
        content(keys={"index": 1, "key": ""}),
        content(member={}),
        content(keys=[{"index": 1, "key": "AAAA"}]),  # the old array form
    ]
    for c in bad:
        assert parse_key_content(c, "@a:x", ROOM, 0.0) is None, c
    assert "ignoring a media key event from @a:x" in caplog.text


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_parser_never_raises(value) -> None:
    parse_key_content(value, "@a:x", ROOM, 0.0)
    if isinstance(value, dict):
        parse_key_content({**content(), **value}, "@a:x", ROOM, 0.0)


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_rotation_rules() -> None:
    clock = Clock()
    own = OwnKey(grace_ms=10_000, clock=clock)
    a, b, c = ("@a:x", "A", 1), ("@b:x", "B", 2), ("@c:x", "C", 3)

    first = own.plan([a])
    assert (first.key.index, first.targets, first.rotated, first.first) == (0, {a}, False, True)
    assert own.plan([a]) is None  # nothing changed

    clock.t = 5.0  # a join within the grace period: the current key, to the joiner only
    joined = own.plan([a, b])
    assert (joined.key, joined.targets, joined.rotated) == (first.key, {b}, False)

    clock.t = 20.0  # a join after the grace period: a new key for everyone
    late = own.plan([a, b, c])
    assert (late.key.index, late.targets, late.rotated) == (1, {a, b, c}, True)
    assert late.key.key != first.key.key

    clock.t = 21.0  # a leave: always a new key for everyone left
    left = own.plan([a, c])
    assert (left.key.index, left.targets, left.rotated) == (2, {a, c}, True)

    rejoined = own.plan([a, ("@c:x", "C", 99)])  # a re-join (new created_ts) counts as leave
    assert rejoined.rotated and rejoined.key.index == 3


def test_index_wraps_at_256() -> None:
    own = OwnKey(clock=Clock())
    own.plan([("@a:x", "A", 1)])
    for i in range(256):
        d = own.plan([("@a:x", "A", i + 2)])
    assert d.key.index == 0  # 256 rotations after index 0


def test_received_keys_stale_and_pending() -> None:
    keys = ReceivedKeys(max_per_sender=2)

    def rk(ts: int, dev: str = "A", index: int = 0):
        c = content(sent_ts=ts, member={"claimed_device_id": dev, "id": "m"})
        c["keys"]["index"] = index
        return parse_key_content(c, "@a:x", ROOM, 0.0)

    new, old = rk(200), rk(100)
    keys.applied(new)
    assert keys.is_stale(old)
    assert not keys.is_stale(rk(300))
    assert not keys.is_stale(rk(100, index=1))
    assert keys.has_key_from("@a:x", "A")

    keys.hold(rk(1, dev="X"))
    keys.hold(rk(2, dev="Y"))
    keys.hold(rk(3, dev="Z"))  # bounded: X is dropped
    assert keys.take_pending({("@a:x", "X")}) == []
    taken = keys.take_pending({("@a:x", "Y"), ("@a:x", "Z")})
    assert [k.device_id for k in taken] == ["Y", "Z"]
    assert keys.take_pending({("@a:x", "Y")}) == []


def test_a_flooding_non_member_cannot_push_out_a_members_early_keys() -> None:
    """Issue 19: one pool of 256 for everyone let any sender evict real members' keys."""
    keys = ReceivedKeys(max_per_sender=4, max_senders=3)

    def rk(user: str, dev: str, index: int = 0):
        c = content(sent_ts=index, member={"claimed_device_id": dev, "id": "m"})
        c["keys"]["index"] = index
        return parse_key_content(c, user, ROOM, 0.0)

    keys.hold(rk("@bob:x", "B"))  # a member whose membership has not synced yet
    for i in range(1000):  # a flood from one sender, from many made-up devices
        keys.hold(rk("@mallory:x", f"M{i}", i % 256))
        if i % 100 == 0:
            keys.hold(rk("@bob:x", "B", 1 + i // 100))
    taken = keys.take_pending({("@bob:x", "B")})
    assert [k.key.index for k in taken] == [7, 8, 9, 10]  # bob's four newest, all there
    # Past max_senders, the sender heard from least recently is forgotten.
    keys.hold(rk("@carol:x", "C"))
    keys.hold(rk("@dave:x", "D"))
    keys.hold(rk("@erin:x", "E"))
    assert keys.take_pending({("@mallory:x", "M999")}) == []
    assert len(keys.take_pending({("@carol:x", "C"), ("@erin:x", "E")})) == 2
