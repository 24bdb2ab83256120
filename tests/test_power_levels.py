from __future__ import annotations

from bot.matrix.power_levels import creators_are_privileged, creators_from_state


def test_which_room_versions_privilege_creators() -> None:
    assert creators_are_privileged("12")
    assert creators_are_privileged("13")
    assert not creators_are_privileged("11")
    assert not creators_are_privileged("1")
    assert not creators_are_privileged("org.matrix.msc3757.11")


def test_creators_from_state() -> None:
    events = [
        {"type": "m.room.member", "state_key": "@a:x", "sender": "@a:x", "content": {}},
        {
            "type": "m.room.create",
            "state_key": "",
            "sender": "@a:x",
            "content": {"room_version": "12", "additional_creators": ["@b:x", 5]},
        },
    ]
    assert creators_from_state(events) == {"@a:x", "@b:x"}
    assert creators_from_state(events[:1]) == frozenset()
