from bot.rtc.identity import hashed_identity, legacy_identity, livekit_room_alias


def test_msc4195_vectors() -> None:
    assert livekit_room_alias("!roomid:example.com", "slot1234") == (
        "O8437W3+jmzMVjoIP3tNwbm+XxHQk2iKpOA7aqw3qSc"
    )
    assert hashed_identity("@alice:example.com", "DEVICE123", "memberABC") == (
        "J+T45tGruxc+HrUOqJJlyQSV33m728Cme4+vt8/SWrU"
    )
    assert livekit_room_alias("!roomid:example.com", "m.call#ROOM") == (
        "F4oOprKFBq6JHqy2qYpq6UQQmR7hCvxkQQoUrd0+SbI"
    )


def test_go_and_js_escaping_differ_only_for_special_characters() -> None:
    assert hashed_identity("@a:x", "D", "m") == hashed_identity("@a:x", "D", "m", go=True)
    assert hashed_identity("@a:x", "D", "<m>") != hashed_identity("@a:x", "D", "<m>", go=True)
    assert len(hashed_identity("@a:x", "D", "é")) == 43


def test_legacy_identity() -> None:
    assert legacy_identity("@bot:example.org", "BOTDEV") == "@bot:example.org:BOTDEV"
