"""bot.commands.executor: the one way a command runs, typed or scheduled."""

from __future__ import annotations

import pytest

from bot.commands.executor import Invocation, Refused, execute
from bot.commands.permissions import UserPatterns
from bot.commands.registry import Arg, CommandContext, CommandRegistry, command
from bot.errors import CommandError


class Commands:
    def __init__(self) -> None:
        self.seen: list[tuple[str, str, bool]] = []

    @command(help="Say", args=[Arg("text", rest=True)], allowed_users_only=False)
    async def say(self, ctx: CommandContext, text: str) -> None:
        may_mod = ctx.may_run(registry.get("mod"))  # type: ignore[arg-type]
        self.seen.append((ctx.sender, text, may_mod))
        await ctx.reply(text)

    @command(help="Mods only", allowed_users_only=False, power_level=50)
    async def mod(self, ctx: CommandContext) -> None:
        await ctx.reply("ok")

    @command(help="Counts", args=[Arg("n")])
    async def count(self, ctx: CommandContext, n: str) -> None:
        await ctx.reply(n)


registry = CommandRegistry()
commands = Commands()
registry.register(commands)
ALLOWED = UserPatterns(["@*:x"])


def invocation(sender: str = "@alice:x", level: int = 0) -> tuple[Invocation, list[str]]:
    replies: list[str] = []

    async def reply(text: str, html: str | None = None) -> str:
        replies.append(text)
        return "$r"

    return Invocation("!r:x", sender, level, "!", reply, "$msg"), replies


async def test_a_command_runs_with_its_arguments_and_the_callers_rights() -> None:
    inv, replies = invocation(level=0)
    await execute(registry.get("say"), "hello there", inv, ALLOWED)  # type: ignore[arg-type]
    assert replies == ["hello there"]
    assert commands.seen[-1] == ("@alice:x", "hello there", False)
    inv, _ = invocation(sender="@mod:x", level=50)
    await execute(registry.get("say"), "hi", inv, ALLOWED)  # type: ignore[arg-type]
    assert commands.seen[-1] == ("@mod:x", "hi", True)


async def test_refusals_carry_the_reason_for_each_callers_own_wording() -> None:
    inv, replies = invocation(level=10)
    with pytest.raises(Refused) as refused:
        await execute(registry.get("mod"), "", inv, ALLOWED)  # type: ignore[arg-type]
    assert "power level 50" in refused.value.why
    assert str(refused.value).startswith("You may not run !mod: ")
    inv, _ = invocation(sender="@eve:elsewhere")
    with pytest.raises(Refused):
        await execute(registry.get("count"), "1", inv, ALLOWED)  # type: ignore[arg-type]
    assert replies == []


async def test_bad_arguments_are_a_command_error_not_a_crash() -> None:
    inv, _ = invocation()
    with pytest.raises(CommandError):
        await execute(registry.get("count"), "1 2 3", inv, ALLOWED)  # type: ignore[arg-type]
