from __future__ import annotations

import pytest

from bot.commands.registry import Arg, CommandContext, CommandRegistry, command
from bot.config import CommandConfig


class Sample:
    @command(help="Say hi", allowed_users_only=False, aliases=["hi"])
    async def hello(self, ctx: CommandContext) -> None:
        pass

    @command("play-it", help="Play", args=[Arg("source")], power_level=50)
    async def play(self, ctx: CommandContext, source: str) -> None:
        pass

    async def not_a_command(self) -> None:
        pass


def test_register_collects_decorated_methods() -> None:
    reg = CommandRegistry()
    owner = Sample()
    added = reg.register(owner)
    assert sorted(c.name for c in added) == ["hello", "play-it"]
    assert reg.get("hi") is reg.get("hello")
    assert reg.get("hello").handler.__self__ is owner
    assert reg.get("play-it").power_level == 50
    assert reg.get("play-it").usage("!") == "!play-it <source>"
    assert reg.get("not_a_command") is None


def test_duplicates_are_refused() -> None:
    reg = CommandRegistry()
    reg.register(Sample())
    with pytest.raises(ValueError, match="already registered"):
        reg.register(Sample())


def test_declaration_mistakes_fail_at_decoration() -> None:
    def blocking(ctx) -> None: ...

    with pytest.raises(TypeError, match="must be an async function"):
        command(help="x")(blocking)
    with pytest.raises(ValueError, match="command name 'Bad Name'"):

        @command("Bad Name", help="x")
        async def bad(ctx) -> None: ...

    with pytest.raises(ValueError, match="help text is required"):

        @command(help=" ")
        async def nohelp(ctx) -> None: ...

    with pytest.raises(ValueError, match="after an optional one"):

        @command(help="x", args=[Arg("a", required=False), Arg("b")])
        async def order(ctx, a=None, b=None) -> None: ...

    with pytest.raises(ValueError, match="only the last argument may be rest"):

        @command(help="x", args=[Arg("a", rest=True), Arg("b")])
        async def rest(ctx, a, b) -> None: ...


def test_overrides_from_config() -> None:
    reg = CommandRegistry()
    reg.register(Sample())
    reg.apply_overrides({"hello": CommandConfig(power_level=10, allowed_users_only=True)})
    hello = reg.get("hi")
    assert hello.power_level == 10
    assert hello.allowed_users_only is True
    reg.apply_overrides({"play-it": CommandConfig()})
    assert reg.get("play-it").power_level == 50
