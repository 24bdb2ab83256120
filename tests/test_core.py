from __future__ import annotations

from bot import __version__
from bot.commands.core import CoreCommands, format_duration
from bot.commands.registry import CommandContext, CommandRegistry, command


class Extra:
    @command(help="Secret stuff", power_level=100)
    async def secret(self, ctx: CommandContext) -> None: ...


def _ctx(replies: list, may_run=lambda c: True) -> CommandContext:
    async def reply(text: str, html: str | None = None) -> str:
        replies.append((text, html))
        return "$r"

    return CommandContext("!r:x", "@a:x", "$e", "!", reply, may_run)


def _core(now: list[float]) -> tuple[CoreCommands, CommandRegistry]:
    reg = CommandRegistry()
    core = CoreCommands(reg, active_calls=lambda: ["!call:x"], clock=lambda: now[0])
    reg.register(core)
    reg.register(Extra())
    return core, reg


async def test_help_lists_only_what_the_caller_may_run() -> None:
    core, _ = _core([0.0])
    replies: list = []
    await core.help(_ctx(replies, may_run=lambda c: c.name != "secret"))
    text, html = replies[0]
    assert "!help [<command>]" in text and "!status" in text
    assert "secret" not in text and "secret" not in html
    assert "<code>!status</code>" in html


async def test_help_for_one_command() -> None:
    core, _ = _core([0.0])
    replies: list = []
    await core.help(_ctx(replies, may_run=lambda c: False), command="!secret")
    assert replies[0][0] == (
        "!secret — Secret stuff\nWho: the bot's allowed users with power level 100 or more. "
        "You cannot run it here."
    )


async def test_status() -> None:
    now = [100.0]
    core, _ = _core(now)
    now[0] += 3725.4
    replies: list = []
    await core.status(_ctx(replies))
    assert replies[0][0] == f"matrix-callbot {__version__}\nUptime: 1h 2m 5s\nCalls:\n!call:x"


def test_format_duration() -> None:
    assert format_duration(0) == "0s"
    assert format_duration(59.9) == "59s"
    assert format_duration(86400 * 2 + 61) == "2d 1m 1s"
