"""The commands every bot has: ``!help`` and ``!status``."""

from __future__ import annotations

import html
import time
from collections.abc import Callable

from bot import __version__
from bot.commands.registry import Arg, Command, CommandContext, CommandRegistry, command
from bot.errors import UsageError


class CoreCommands:
    def __init__(
        self,
        registry: CommandRegistry,
        #: lines describing the calls (empty: none)
        active_calls: Callable[[], list[str]],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.registry = registry
        self.active_calls = active_calls
        self._clock = clock
        self._started = clock()

    @command(
        help="List the commands you can run here, or explain one",
        args=[Arg("command", required=False)],
        allowed_users_only=False,
    )
    async def help(self, ctx: CommandContext, command: str | None = None) -> None:
        if command is not None:
            await self._help_one(ctx, command)
            return
        usable = [c for c in self.registry if ctx.may_run(c)]
        lines = [f"{c.usage(ctx.prefix)} — {c.help}" for c in usable]
        items = "".join(
            f"<li><code>{html.escape(c.usage(ctx.prefix))}</code> — {html.escape(c.help)}</li>"
            for c in usable
        )
        await ctx.reply(
            "Commands you can run here:\n" + "\n".join(lines),
            f"<p>Commands you can run here:</p><ul>{items}</ul>",
        )

    async def _help_one(self, ctx: CommandContext, name: str) -> None:
        cmd = self.registry.get(name.removeprefix(ctx.prefix).lower())
        if cmd is None:
            raise UsageError(
                f"There is no command {name[:32]!r}. Type {ctx.prefix}help for the list."
            )
        who = _who(cmd)
        mine = "You can run it here." if ctx.may_run(cmd) else "You cannot run it here."
        await ctx.reply(f"{cmd.usage(ctx.prefix)} — {cmd.help}\nWho: {who}. {mine}")

    @command(help="Show the bot's version, uptime and the calls it is in")
    async def status(self, ctx: CommandContext) -> None:
        calls = self.active_calls()
        await ctx.reply(
            f"matrix-callbot {__version__}\n"
            f"Uptime: {format_duration(self._clock() - self._started)}\n"
            + ("Calls:\n" + "\n".join(calls) if calls else "Calls: none")
        )


def _who(cmd: Command) -> str:
    parts = ["the bot's allowed users" if cmd.allowed_users_only else "anyone in the room"]
    if cmd.power_level is not None:
        parts.append(f"with power level {cmd.power_level} or more")
    return " ".join(parts)


def format_duration(seconds: float) -> str:
    """``3725.2`` -> ``1h 2m 5s``; ``42`` -> ``42s``."""
    s = int(seconds)
    days, s = divmod(s, 86400)
    hours, s = divmod(s, 3600)
    minutes, s = divmod(s, 60)
    parts = [f"{v}{u}" for v, u in ((days, "d"), (hours, "h"), (minutes, "m")) if v]
    return " ".join([*parts, f"{s}s"])
