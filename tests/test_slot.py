"""MatrixRTC slots (bot.rtc.slot), from matrix-js-sdk 43's slot events."""

from __future__ import annotations

import pytest
from hypothesis import given, settings

from bot.rtc.focus import RtcError
from bot.rtc.slot import check_joinable, parse_slot
from tests.fixtures import fixture
from tests.strategies import json_values


def test_open_and_closed_slots_of_js43() -> None:
    opened = parse_slot(fixture("slots", "open_js43")["event"])
    closed = parse_slot(fixture("slots", "closed_js43")["event"])
    assert opened is not None and closed is not None
    assert (opened.slot_id, opened.open, opened.application) == ("m.call#ROOM", True, "m.call")
    assert opened.encryption == "org.matrix.msc4143.per_member"
    assert not closed.open
    check_joinable(opened, "m.call#ROOM")
    check_joinable(None, "m.call#ROOM")  # no slot event: js joins, and so does the bot
    with pytest.raises(RtcError, match="closed") as e:
        check_joinable(closed, "m.call#ROOM")
    assert "m.call" not in str(e.value) or "MatrixRTC slot" in str(e.value)
    check_joinable(closed, "m.call#OTHER")  # another slot's state says nothing about ours


def test_what_js_counts_as_closed() -> None:
    event = fixture("slots", "open_js43")["event"]
    for content in (
        {"status": "closed", "application": {"type": "m.call"}},
        {"status": "open"},  # no application object
        {"status": "open", "application": {"type": "m.other"}},  # not the slot's application
        {"status": "OPEN", "application": {"type": "m.call"}},
        {},
    ):
        slot = parse_slot({**event, "content": content})
        assert slot is not None and not slot.open, content
    assert parse_slot({**event, "type": "m.rtc.slot"}).open  # the stable name is read too
    assert parse_slot({**event, "type": "m.room.name"}) is None
    assert parse_slot({**event, "state_key": None}) is None


@settings(max_examples=200, deadline=None)
@given(json_values)
def test_never_raises(value) -> None:
    event = fixture("slots", "open_js43")["event"]
    parse_slot({**event, "content": value})
    if isinstance(value, dict):
        parse_slot({**event, **value})
