from __future__ import annotations

import pytest

from bot.commands.parsing import bind_args, parse_command, strip_reply_fallback
from bot.commands.registry import Arg, Command
from bot.errors import UsageError


async def _noop(ctx, **kw) -> None:
    pass


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("!help", ("help", "")),
        ("  !HELP   status ", ("help", "status")),
        ("!play  a b\nc", ("play", "a b\nc")),
        ("!ünïcode ✓", ("ünïcode", "✓")),
        ("", None),
        ("!", None),
        ("! help", None),
        ("!!!", None),
        ("!?", None),
        ("help", None),
        ("hello !help", None),
        ("<b>!help</b>", None),  # HTML is never read; a plain body with tags is no command
    ],
)
def test_parse_command(body: str, expected: tuple[str, str] | None) -> None:
    parsed = parse_command(body, "!")
    assert (None if parsed is None else (parsed.name, parsed.argtext)) == expected


def test_multi_character_prefix() -> None:
    assert parse_command("!!help", "!!").name == "help"
    assert parse_command("!help", "!!") is None


def test_reply_fallback_is_stripped() -> None:
    body = "> <@alice:x> earlier text\n> more\n\n!status"
    assert strip_reply_fallback(body) == "!status"
    assert parse_command(body, "!").name == "status"
    assert parse_command("> <@alice:x> !help\n\nthanks", "!") is None


def test_bind_args() -> None:
    cmd = Command("play", _noop, "Play", (Arg("source"), Arg("extra", required=False)))
    assert bind_args(cmd, "song.ogg", "!") == {"source": "song.ogg"}
    assert bind_args(cmd, '"my song.ogg" x', "!") == {"source": "my song.ogg", "extra": "x"}
    with pytest.raises(UsageError, match=r"Missing <source>\. Usage: !play <source> \[<extra>\]"):
        bind_args(cmd, "", "!")
    with pytest.raises(UsageError, match="Too many arguments"):
        bind_args(cmd, "a b c", "!")
    with pytest.raises(UsageError, match="No closing quotation"):
        bind_args(cmd, '"unbalanced', "!")


def test_rest_argument() -> None:
    cmd = Command("say", _noop, "Say", (Arg("words", rest=True),))
    assert bind_args(cmd, "hello   big world", "!") == {"words": "hello big world"}
