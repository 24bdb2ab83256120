"""Running one command: the permission check, its arguments, its handler. Used for commands
typed in a room (bot.commands.dispatch) and for those a scheduled call runs
(bot.schedule.runner), so both follow the same rules."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from bot.commands.parsing import bind_args
from bot.commands.permissions import UserPatterns, refusal
from bot.commands.registry import Command, CommandContext, Replier
from bot.errors import PermissionDenied
from bot.log import context

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Invocation:
    """Who runs a command, where, with which power level, and how replies go out."""

    room_id: str
    sender: str
    level: int
    prefix: str
    reply: Replier
    #: the message being answered ("" for a scheduled call's commands: plain notices)
    event_id: str = ""


class Refused(PermissionDenied):
    """The caller may not run the command; ``why`` in words, for the caller's own message."""

    def __init__(self, command: str, why: str) -> None:
        super().__init__(f"You may not run {command}: {why}.")
        self.why = why


async def execute(cmd: Command, argtext: str, inv: Invocation, allowed: UserPatterns) -> None:
    """Check, bind and run. Raises Refused, or CommandError for the caller's mistakes (each
    with a message fit for the room); any other exception is a bug in the command."""
    ctx = context(room=inv.room_id, user=inv.sender)
    why = refusal(cmd, inv.sender, inv.level, allowed)
    if why:
        log.info("refused %s: %s", cmd.name, why, extra=ctx)
        raise Refused(f"{inv.prefix}{cmd.name}", why)
    command_ctx = CommandContext(
        room_id=inv.room_id,
        sender=inv.sender,
        event_id=inv.event_id,
        prefix=inv.prefix,
        reply=inv.reply,
        may_run=lambda c: refusal(c, inv.sender, inv.level, allowed) is None,
    )
    kwargs = bind_args(cmd, argtext, inv.prefix)
    log.info("running %s", cmd.name, extra=ctx)
    await cmd.handler(command_ctx, **kwargs)
