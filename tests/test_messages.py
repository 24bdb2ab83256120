from __future__ import annotations

from bot.matrix.messages import in_reply, notice, thread_root_of


def test_notice() -> None:
    assert notice("hi") == {"msgtype": "m.notice", "body": "hi"}
    assert notice("hi", "<b>hi</b>")["format"] == "org.matrix.custom.html"


def test_reply_mode() -> None:
    c = in_reply(notice("x"), "$cmd", None, "reply")
    assert c["m.relates_to"] == {"m.in_reply_to": {"event_id": "$cmd"}}


def test_thread_mode_starts_a_thread_at_the_command() -> None:
    c = in_reply(notice("x"), "$cmd", None, "thread")
    assert c["m.relates_to"] == {
        "rel_type": "m.thread",
        "event_id": "$cmd",
        "is_falling_back": True,
        "m.in_reply_to": {"event_id": "$cmd"},
    }


def test_commands_in_a_thread_are_answered_there_in_any_mode() -> None:
    for mode in ("reply", "thread"):
        rel = in_reply(notice("x"), "$cmd", "$root", mode)["m.relates_to"]
        assert rel["rel_type"] == "m.thread"
        assert rel["event_id"] == "$root"
        assert rel["is_falling_back"] is False
        assert rel["m.in_reply_to"] == {"event_id": "$cmd"}


def test_thread_root_of() -> None:
    assert thread_root_of({"m.relates_to": {"rel_type": "m.thread", "event_id": "$r"}}) == "$r"
    assert thread_root_of({"m.relates_to": {"m.in_reply_to": {"event_id": "$e"}}}) is None
    assert thread_root_of({"m.relates_to": "junk"}) is None
    assert thread_root_of({}) is None
