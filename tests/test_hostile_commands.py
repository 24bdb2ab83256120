"""Every registered command, of the core and every shipped plugin, with hostile text.

The real bot (``CallBot`` from a config with the recorder, transcriber, music player and
scheduling on), its real registry and dispatcher; plugins run in a fake call (the plugin test
kit) instead of a real one, and replies are collected instead of sent. For each command,
hypothesis writes arguments from the command's own grammar (numbers, times, keywords, the
schedule forms) mixed with what an attacker or an unlucky paste brings: digits that are not
ASCII (``²``, ``٣``), NUL and other control characters, direction marks, quotes, newlines,
emoji, and strings near the 4,000-character limit. Any text must get an answer (a reply, or
what the plugin posts to the room), never the internal-error reply, never an answer longer
than a screen, and never the whole text echoed back.
"""

from __future__ import annotations

import asyncio
import shlex
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from bot.app import CallBot
from bot.commands.parsing import MAX_COMMAND_LENGTH
from bot.config import parse_config
from bot.matrix.messages import IncomingMessage
from bot.plugin import Plugin
from bot.plugin_loader import load_plugins
from bot.testing import FakeCall, PluginHarness

ROOM = "!hostile:example.org"
USER = "@mallory:example.org"
INTERNAL = "failed with an internal error"
#: the longest answer a command may give to one line of arguments (!help's list is longer,
#: and bounded by the registry: checked separately)
MAX_ANSWER = 1500
#: longer argument texts must not come back whole (a short one may: "There is no #7")
ECHO_LIMIT = 64

DIGITS = "²³¹⁰₀½Ⅻ٣٤۵߁०১੨૩୪௫౬೭൮๙໑༢၃០᠑１９𝟘𝟙"
CONTROLS = ["\x00", "\x01", "\x07", "\x1b[31m", "\x7f", "\x85", "\u2028", "\r", "\t", "\x0b"]
MARKS = ["\u200b", "\u200d", "\u200e", "\u200f", "\u202e", "\u2066", "\ufeff", "\u0301"]
QUOTES = ['"', "'", '"unbalanced', "'it''s'", "\\", "`", '""', "''", "\\\\\\"]
EMOJI = ["🎵", "👨‍👩‍👧", "🏳️‍🌈", "🇩🇪", "\U0001d54f"]

#: each command's own words and shapes, so hypothesis gets past the first check
GRAMMAR: dict[str, list[str]] = {
    "help": ["help", "!play", "PLAY", "!", "status", "nosuch"],
    "record": ["start", "stop", "START", "stop please"],
    # "start" would load the speech model: the transcriber's own tests do that
    "transcribe": ["stop", "STOP", "begin"],
    "play": ["a.flac", "../../etc/passwd", "/etc/passwd", "http://[::1", "file:///x", "music/"],
    "seek": ["1:30", "+15", "-10", "90", "1:02:03", "99:99", "1e9", "0x10", ":", "1.5.5"],
    "volume": ["50", "200", "201", "-1", "50%", "%", "0", "007", "1e2", "٣٠"],
    "loop": ["off", "one", "all", "ALL", "none"],
    "remove": ["1", "0", "-1", "99999999999999999999", "1.0", "#1"],
    "schedule": [
        "in 10m",
        "tomorrow 09:00",
        "daily 09:00",
        "mon,wed 14:30",
        "cron 30 9 * * 1-5",
        "for 1h",
        "for 0s",
        "play x",
        "in",
        "10m",
        "for",
        "0s",
        "1h",
        "record",
        "transcribe",
        "play",
        "tomorrow",
        "daily",
        "09:00",
        "25:61",
        "mon,wed",
        "mon-fri",
        "cron",
        "*/5",
        "*",
        "2026-11-25T09:30",
        "9999-99-99T99:99",
        "weekly",
    ],
    "unschedule": ["abcdef0123", "ABC", "*"],
    "timezone": ["Europe/Berlin", "UTC", "../../etc/localtime", "Etc/GMT+14", "Mars/Olympus"],
}


def _piece(name: str) -> st.SearchStrategy[str]:
    words = [*GRAMMAR.get(name, []), "x"]
    return st.one_of(
        st.sampled_from(words),
        st.sampled_from(words).map(lambda w: w.upper()),
        st.sampled_from(DIGITS),
        st.text(DIGITS + "0123456789:+-.%", min_size=1, max_size=6),
        st.sampled_from(CONTROLS + MARKS + QUOTES + EMOJI),
        st.text(max_size=12),
        # long runs: a name of thousands of characters, digits past int()'s limits
        st.sampled_from(["a", "9", "²", "/", "ä", "🎵", "x "]).flatmap(
            lambda c: st.integers(200, 1900).map(lambda n: c * n)
        ),
    )


def arguments(name: str) -> st.SearchStrategy[str]:
    """The text after ``!<name> ``: pieces of the grammar and hostile ones, glued by spaces,
    nothing, newlines or tabs."""
    glue = st.sampled_from([" ", " ", "", "\n", "\t", "  "])
    return st.lists(st.tuples(_piece(name), glue), min_size=1, max_size=7).map(
        lambda parts: "".join(p + g for p, g in parts)
    )


class World:
    """The bot with every shipped plugin in a fake call of ROOM, answering into lists."""

    def __init__(self, tmp: Path) -> None:
        music = tmp / "music"
        music.mkdir()
        (music / "notes.txt").write_text("not audio")
        raw: dict[str, Any] = {
            "matrix": {
                "homeserver": "http://127.0.0.1:1",
                "user_id": "@bot:example.org",
                "password": "p",
            },
            "bot": {"data_dir": str(tmp / "data"), "allowed_users": ["@*:example.org"]},
            "plugins": {
                "enabled": ["recorder", "transcriber", "music"],
                "recorder": {"upload_mixed": False},
                # URLs would be fetched: the outbound-URL policy has its own tests
                "music": {"music_dir": str(music), "allow_urls": False},
            },
            "schedule": {"enabled": True},
        }
        self.config = parse_config(raw, base_dir=tmp, environ={})
        self.bot = CallBot(self.config)
        self.replies: list[str] = []
        self.calls: list[FakeCall] = []
        self.instances: dict[type[Plugin], Plugin] = {}
        self.harnesses: list[PluginHarness] = []

    async def start(self) -> None:
        for loaded in load_plugins(self.config.plugins):
            call = FakeCall(ROOM, self.config.bot.data_dir / "calls")
            harness = PluginHarness(loaded.make(), call)
            await harness.start()
            self.harnesses.append(harness)
            self.calls.append(call)
            self.instances[loaded.cls] = harness.plugin

        async def in_call(room_id: str, cls: type[Plugin]) -> Plugin | None:
            return self.instances.get(cls)

        async def reply(msg: IncomingMessage, text: str, html: str | None) -> str:
            self.replies.append(text)
            return "$reply"

        async def power_level(room_id: str, user_id: str) -> int:
            return 100  # every check passes: the argument parsers are what is tried

        self.bot._plugin_in_call = in_call  # type: ignore[method-assign]
        d = self.bot.dispatcher
        d._reply = reply
        d.power_level_of = power_level
        d._insecure_device = None
        schedule = self.bot.registry.get("schedule")
        assert schedule is not None
        schedule.handler.__self__._power_level_of = power_level  # type: ignore[attr-defined]
        assert self.bot.jobs is not None

        class Idle:
            async def fire(self, plan: dict) -> None: ...

        self.bot.jobs.start(Idle())

    def _posted(self) -> list[str]:
        return [p for c in self.calls for p in c.posts]

    async def send(self, body: str) -> list[str]:
        """What the bot answers to ``body``: replies, and what plugins post to the room."""
        replies, posts = len(self.replies), len(self._posted())
        msg = IncomingMessage(ROOM, "$cmd", USER, body, int(time.time() * 1000))
        await asyncio.wait_for(self.bot.dispatcher.handle(msg), 30)
        return self.replies[replies:] + self._posted()[posts:]

    async def stop(self) -> None:
        for h in self.harnesses:
            await h.end()
        assert self.bot.jobs is not None
        self.bot.jobs.shutdown()


def _run(tmp: Path, check: Callable[[World, asyncio.Runner], None]) -> None:
    with asyncio.Runner() as runner:
        world = World(tmp)
        runner.run(world.start())
        try:
            check(world, runner)
        finally:
            runner.run(world.stop())


def _commands() -> list[str]:
    # Built once at collection: the list of what to try is the real registry's.
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        return sorted(World(Path(tmp)).bot.registry.names())


COMMANDS = _commands()


def test_every_shipped_command_is_tried() -> None:
    # A new command is tried without anyone adding it here; this says what "every" is.
    assert {"help", "status", "join", "leave", "optout", "optin"} <= set(COMMANDS)
    assert {"record", "transcribe", "play", "volume", "remove", "seek"} <= set(COMMANDS)
    assert {"schedule", "schedules", "unschedule", "timezone"} <= set(COMMANDS)
    assert len(COMMANDS) >= 25


def _echoes(argtext: str) -> set[str]:
    """The forms in which a reply could repeat the text: whole, as the arguments a command
    gets (one each, or the rest joined), each long enough to be more than a short quote."""
    forms = {argtext.strip()}
    try:
        tokens = shlex.split(argtext)
    except ValueError:
        tokens = []
    forms |= {" ".join(tokens[i:]) for i in range(len(tokens))} | set(tokens)
    return {f for f in forms if len(f.strip()) > ECHO_LIMIT}


def _judge(name: str, argtext: str, answers: list[str]) -> None:
    body = f"!{name} {argtext}"
    assert answers, f"no answer to {body[:80]!r}"
    forms = _echoes(argtext)
    for text in answers:
        assert INTERNAL not in text, (body[:200], text)
        is_list = name == "help" and not argtext.strip()
        assert len(text) <= (4000 if is_list else MAX_ANSWER), (body[:80], len(text))
        for form in forms:
            shown = (form, repr(form)[1:-1], form.strip(), repr(form.strip())[1:-1])
            assert not any(f in text for f in shown), (body[:80], text[:200])


@pytest.mark.parametrize("name", COMMANDS)
def test_any_text_gets_an_answer_never_an_internal_error(tmp_path: Path, name: str) -> None:
    def check(world: World, runner: asyncio.Runner) -> None:
        @settings(
            max_examples=100,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
            database=None,
        )
        @given(arguments(name))
        def one(argtext: str) -> None:
            body = f"!{name} {argtext}"
            if name in ("join", "leave"):
                # with no argument they join or leave for real (the rtc tests do that)
                assume(argtext.strip() and len(body) <= MAX_COMMAND_LENGTH)
            _judge(name, argtext, runner.run(world.send(body)))

        one()

    _run(tmp_path, check)


@pytest.mark.parametrize(
    "body",
    [
        # found by a hostile test: each ended in an internal error
        "!volume ²",
        "!remove ²",
        "!play \x00",
        "!play a\x00b",
        "!play http://[::1",
        "!play " + "n" * 3900,
        "!play " + "n/" * 1950,
        # and their neighbours
        "!volume ٣٠",
        "!volume ①",
        "!remove ٣",
        "!remove " + "9" * 3990,
        "!seek ²",
        "!schedule in ²m",
        "!schedule in 10m for 0s",
        "!timezone \x00",
        "!timezone " + "Europe/" * 500,
        "!unschedule \x00",
        "!help " + "h" * 3990,
        "!loop \x00",
        "!record \u202estart",
    ],
)
def test_known_hostile_commands(tmp_path: Path, body: str) -> None:
    def check(world: World, runner: asyncio.Runner) -> None:
        name, argtext = body[1:].split(" ", 1)
        _judge(name, argtext, runner.run(world.send(body)))

    _run(tmp_path, check)
