from __future__ import annotations

from bot.commands.permissions import UserPatterns, refusal
from bot.commands.registry import Command


async def _noop(ctx) -> None:
    pass


def test_user_patterns() -> None:
    p = UserPatterns(["@*:example.org", "@alice:other.net", "@bot?:x"])
    assert p.matches("@bob:example.org")
    assert p.matches("@alice:other.net")
    assert p.matches("@bot1:x")
    assert not p.matches("@bob:example.org.evil")
    assert not p.matches("@mallory:other.net")
    assert not p.matches("@BOB:EXAMPLE.ORG.x")
    assert not UserPatterns(["@[a]:x"]).matches("@a:x")  # "[" is literal, not a class


def test_refusal_checks_every_requirement() -> None:
    allowed = UserPatterns(["@*:example.org"])
    open_cmd = Command("help", _noop, "h", allowed_users_only=False)
    restricted = Command("status", _noop, "s")
    moderated = Command("kick", _noop, "k", allowed_users_only=False, power_level=50)
    both = Command("rec", _noop, "r", power_level=50)
    stranger, member = "@eve:evil.net", "@bob:example.org"
    assert refusal(open_cmd, stranger, 0, allowed) is None
    assert refusal(restricted, stranger, 100, allowed) == "it is limited to the bot's allowed users"
    assert refusal(restricted, member, 0, allowed) is None
    assert refusal(moderated, stranger, 50, allowed) is None
    assert "needs power level 50" in refusal(moderated, member, 49, allowed)
    assert refusal(both, member, 50, allowed) is None
    assert refusal(both, member, 0, allowed) is not None
    assert refusal(both, stranger, 100, allowed) is not None
