from __future__ import annotations

import asyncio
import time

import pytest

from bot.commands import dispatch as dispatch_module
from bot.commands.dispatch import Dispatcher
from bot.commands.permissions import UserPatterns
from bot.commands.registry import Arg, CommandContext, CommandRegistry, command
from bot.errors import CommandError
from bot.matrix.messages import IncomingMessage

ROOM = "!room:x"


class Plugin:
    def __init__(self) -> None:
        self.calls: list[tuple[str, dict]] = []
        self.release = asyncio.Event()

    @command(help="Echo", args=[Arg("text", rest=True)], allowed_users_only=False)
    async def echo(self, ctx: CommandContext, text: str) -> None:
        await ctx.reply(text)

    @command(help="Boom")
    async def boom(self, ctx: CommandContext) -> None:
        raise RuntimeError("secret internals")

    @command(help="Refuse politely")
    async def nope(self, ctx: CommandContext) -> None:
        raise CommandError("Not today.")

    @command(help="Mods only", allowed_users_only=False, power_level=50)
    async def mod(self, ctx: CommandContext) -> None:
        await ctx.reply("ok")

    @command(help="Waits", allowed_users_only=False)
    async def slow(self, ctx: CommandContext) -> None:
        await self.release.wait()


@pytest.fixture
def setup():
    replies: list[str] = []

    async def reply(msg: IncomingMessage, text: str, html: str | None) -> str:
        replies.append(text)
        return "$reply"

    reg = CommandRegistry()
    plugin = Plugin()
    reg.register(plugin)
    levels = {"@mod:x": 50}

    async def power_level_of(room: str, user: str) -> int:
        if user == "@broken:x":
            raise ConnectionError("homeserver unreachable")
        return levels.get(user, 0)

    d = Dispatcher(
        reg,
        prefix="!",
        allowed=UserPatterns(["@*:x"]),
        power_level_of=power_level_of,
        reply=reply,
        max_age_s=60,
    )
    return d, replies, plugin


def msg(body: str, sender: str = "@alice:x", age_s: float = 0.0) -> IncomingMessage:
    ts = int((time.time() - age_s) * 1000)
    return IncomingMessage(ROOM, "$ev", sender, body, ts)


async def test_runs_commands_and_replies(setup) -> None:
    d, replies, _ = setup
    await d.handle(msg("!echo héllo   wörld ✓"))
    assert replies == ["héllo wörld ✓"]


async def test_non_commands_are_ignored(setup) -> None:
    d, replies, _ = setup
    for body in ("", "hello", "!", "! echo", "<p>!echo hi</p>", "\u200b"):
        await d.handle(msg(body))
    assert replies == []


async def test_unknown_command(setup) -> None:
    d, replies, _ = setup
    await d.handle(msg("!nosuch"))
    assert replies == ["Unknown command !nosuch. Type !help to see what you can run."]
    await d.handle(msg("!" + "x" * 500))
    assert replies[-1].startswith("Unknown command !" + "x" * 31 + "…")


async def test_refusals(setup) -> None:
    d, replies, _ = setup
    await d.handle(msg("!nope", sender="@eve:evil"))
    assert replies == ["You may not run !nope: it is limited to the bot's allowed users."]
    await d.handle(msg("!mod", sender="@alice:x"))
    assert replies[-1] == "You may not run !mod: it needs power level 50 in this room (you have 0)."
    await d.handle(msg("!mod", sender="@mod:x"))
    assert replies[-1] == "ok"


async def test_errors_become_replies(setup) -> None:
    d, replies, _ = setup
    await d.handle(msg("!nope"))
    assert replies == ["Not today."]
    await d.handle(msg("!boom"))
    assert replies[-1] == "!boom failed with an internal error; the bot's log has the details."
    assert "secret internals" not in replies[-1]
    await d.handle(msg("!echo"))
    assert replies[-1] == "Missing <text>. Usage: !echo <text...>"
    await d.handle(msg("!echo hi", sender="@broken:x"))
    assert replies[-1] == "!echo failed with an internal error; the bot's log has the details."


async def test_too_long_and_stale(setup) -> None:
    d, replies, _ = setup
    await d.handle(msg("!echo " + "a" * 5000))
    assert replies == ["That command is too long (over 4000 chars)."]
    await d.handle(msg("!echo late", age_s=120))
    assert replies == ["That command is too long (over 4000 chars)."]


async def test_running_commands_are_bounded(setup, monkeypatch) -> None:
    d, replies, plugin = setup
    now = [1000.0]
    d._clock = lambda: now[0]
    monkeypatch.setattr(dispatch_module, "MAX_RUNNING_COMMANDS", 2)
    for _ in range(3):
        d.submit(msg("!slow"))
    await asyncio.sleep(0.05)
    assert replies == ["I am busy, please try again shortly."]
    assert d.dropped == 1
    # A flood is counted, and told "busy" once per room and interval, not once per command
    # (found by a hostile test: 500 !np in 10 s).
    for _ in range(200):
        d.submit(msg("!np"))
        d.submit(msg("chat, not a command"))  # never answered "busy", never counted
    await asyncio.sleep(0.05)
    assert replies == ["I am busy, please try again shortly."] and d.dropped == 201
    d.submit(IncomingMessage("!other:x", "$ev", "@alice:x", "!np", int(time.time() * 1000)))
    now[0] += dispatch_module.BUSY_NOTICE_INTERVAL_S
    d.submit(msg("!np"))
    await asyncio.sleep(0.05)
    assert replies == ["I am busy, please try again shortly."] * 3 and d.dropped == 203
    plugin.release.set()
    await d.drain()
    # ... and with the slots free again, commands run
    d.submit(msg("!echo back"))
    await d.drain()
    assert replies[-1] == "back" and d.dropped == 203


async def test_a_failing_reply_does_not_raise(setup) -> None:
    d, _, _ = setup

    async def broken(msg, text, html) -> str:
        raise ConnectionError("homeserver down")

    d._reply = broken
    await d.handle(msg("!nosuch"))  # logged, not raised
