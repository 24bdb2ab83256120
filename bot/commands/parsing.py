"""Reading a command out of a message's plain-text body.

Only the plain ``body`` is read, never ``formatted_body``: HTML would leak tags into the
arguments, and every client sends a plain body.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass

from bot.commands.registry import Command
from bot.errors import UsageError

#: Longest message body read as a command; longer ones get a short refusal.
MAX_COMMAND_LENGTH = 4000
_NAME_RE = re.compile(r"([^\s]+)(?:\s+(.*))?", re.DOTALL)


@dataclass(frozen=True)
class ParsedCommand:
    name: str  # lowercased
    argtext: str  # everything after the name, stripped


def strip_reply_fallback(body: str) -> str:
    """Drop the "> <@user> quoted text" lines a client puts before the text of a reply."""
    lines = body.split("\n")
    if not lines or not lines[0].startswith("> "):
        return body
    i = 0
    while i < len(lines) and lines[i].startswith(">"):
        i += 1
    return "\n".join(lines[i:]).lstrip("\n")


def parse_command(body: str, prefix: str) -> ParsedCommand | None:
    """The command in a message body, or None if the message is not a command.

    A message is a command when, after any reply fallback, it starts with the prefix
    immediately followed by a name (``!help``; ``! help`` and a bare ``!`` are not).
    """
    text = strip_reply_fallback(body).strip()
    if not text.startswith(prefix) or len(text) == len(prefix):
        return None
    m = _NAME_RE.fullmatch(text[len(prefix) :])
    if m is None:
        return None
    name = m.group(1).lower()
    if not name[0].isalnum():  # "!!!", "!?": punctuation, not a command
        return None
    return ParsedCommand(name, (m.group(2) or "").strip())


def bind_args(cmd: Command, argtext: str, prefix: str) -> dict[str, str]:
    """Match the argument text to the command's declared arguments."""
    usage = f"Usage: {cmd.usage(prefix)}"
    try:
        tokens = shlex.split(argtext)
    except ValueError as e:  # unbalanced quotes
        raise UsageError(f"Could not read the arguments ({e}). {usage}") from None
    bound: dict[str, str] = {}
    for i, arg in enumerate(cmd.args):
        if i >= len(tokens):
            if arg.required:
                raise UsageError(f"Missing <{arg.name}>. {usage}")
            break
        if arg.rest:
            bound[arg.name] = " ".join(tokens[i:])
            tokens = tokens[: i + 1]
            break
        bound[arg.name] = tokens[i]
    if len(tokens) > len(cmd.args):
        raise UsageError(f"Too many arguments. {usage}")
    return bound
