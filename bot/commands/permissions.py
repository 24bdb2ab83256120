"""Who may run a command: ``bot.allowed_users`` patterns and room power levels."""

from __future__ import annotations

from collections.abc import Iterable
from fnmatch import fnmatchcase

from bot.commands.registry import Command


class UserPatterns:
    """Matrix user ID patterns with ``*`` and ``?`` wildcards, e.g. ``@*:example.org``."""

    def __init__(self, patterns: Iterable[str]) -> None:
        # "[" would start a character class in fnmatch; user IDs never need one.
        self.patterns = tuple(p.replace("[", "[[]") for p in patterns)

    def matches(self, user_id: str) -> bool:
        return any(fnmatchcase(user_id, p) for p in self.patterns)


def refusal(cmd: Command, user_id: str, power_level: int, allowed: UserPatterns) -> str | None:
    """Why ``user_id`` (at ``power_level`` in the room) may not run ``cmd``, or None if they may."""
    if cmd.allowed_users_only and not allowed.matches(user_id):
        return "it is limited to the bot's allowed users"
    if cmd.power_level is not None and power_level < cmd.power_level:
        return f"it needs power level {cmd.power_level} in this room (you have {power_level})"
    return None
