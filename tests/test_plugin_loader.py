from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from bot.app import CallBot
from bot.commands.registry import CommandContext, command
from bot.config import PluginsConfig, parse_config
from bot.errors import CommandError, ConfigError
from bot.plugin import Plugin
from bot.plugin_loader import load_plugins

BASE = {
    "matrix": {"homeserver": "https://hs.x", "user_id": "@bot:hs.x", "password": "pw"},
    "bot": {"data_dir": "data"},
}


@dataclass(frozen=True)
class GreeterConfig:
    greeting: str = "hello"
    times: int = 1


class Greeter(Plugin):
    name = "greeter"
    Config = GreeterConfig

    def __init__(self, config: GreeterConfig) -> None:
        self.config = config

    @command(help="Greet the room", allowed_users_only=False)
    async def greet(self, ctx: CommandContext) -> None:
        await ctx.reply(self.config.greeting * self.config.times)


class Plain(Plugin):
    name = "plain"


EXTRA = {"greeter": Greeter, "plain": Plain}


def cfg(plugins: dict):
    return parse_config({**BASE, "plugins": plugins}, base_dir=Path("/srv"), environ={})


def test_enabled_plugins_get_their_validated_config() -> None:
    (greeter, plain) = load_plugins(
        cfg(
            {"enabled": ["greeter", "plain"], "greeter": {"greeting": "hi", "rooms": ["!a:x"]}}
        ).plugins,
        EXTRA,
    )
    assert greeter.config == GreeterConfig(greeting="hi")
    assert greeter.rooms == {"!a:x"} and greeter.runs_in("!a:x") and not greeter.runs_in("!b:x")
    assert isinstance(greeter.make(), Greeter) and greeter.make().config.greeting == "hi"
    assert plain.config is None and plain.rooms is None and isinstance(plain.make(), Plain)


@pytest.mark.parametrize(
    ("plugins", "problem"),
    [
        (
            {"enabled": ["greter"]},
            "plugins.enabled: no plugin named 'greter' is installed (did you mean 'greeter'?)",
        ),
        (
            {"enabled": ["greeter"], "greeter": {"greting": "x"}},
            "plugins.greeter.greting: unknown key (did you mean 'greeting'?)",
        ),
        (
            {"enabled": ["greeter"], "greeter": {"times": "two"}},
            "plugins.greeter.times: must be an integer, got a string",
        ),
        (
            {"enabled": ["plain"], "plain": {"x": 1}},
            "plugins.plain.x: unknown key (the plugin takes no options)",
        ),
        (
            {"enabled": ["plain"], "plain": {"rooms": "!a:x"}},
            "plugins.plain.rooms: must be a list of room IDs",
        ),
        ({"nope": {}}, "plugins.nope: no plugin named 'nope' is installed"),
    ],
)
def test_plugin_config_problems_are_named(plugins: dict, problem: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_plugins(cfg(plugins).plugins, EXTRA)
    assert info.value.problems == [problem]


def test_bad_plugins_section_shapes() -> None:
    with pytest.raises(ConfigError) as info:
        cfg({"enabled": "greeter", "greeter": 3})
    assert info.value.problems == [
        "plugins.enabled: must be a list of plugin names, got a string",
        "plugins.greeter: must be a table ([plugins.greeter])",
    ]


async def test_plugin_commands_run_on_the_calls_instance() -> None:
    bot = CallBot(cfg({"enabled": ["greeter"], "greeter": {"greeting": "hey"}}), EXTRA)
    greet = bot.registry.get("greet")
    assert greet is not None and greet.help == "Greet the room"
    replies: list[str] = []

    async def reply(text: str, html: str | None = None) -> str:
        replies.append(text)
        return "$r"

    ctx = CommandContext("!room:x", "@a:x", "$e", "!", reply, lambda c: True)
    with pytest.raises(CommandError, match=r"I am not in this room's call; type !join first\."):
        await greet.handler(ctx)
    instance = Greeter(GreeterConfig(greeting="yo", times=2))
    bot.media.instance = lambda room_id, cls: instance if room_id == "!room:x" else None
    await greet.handler(ctx)
    assert replies == ["yoyo"]


def test_the_recorder_is_installed_as_a_plugin(tmp_path: Path) -> None:
    from plugins.recorder.plugin import Recorder

    (loaded,) = load_plugins(
        cfg({"enabled": ["recorder"], "recorder": {"max_upload_mb": 5}}).plugins
    )
    assert loaded.cls is Recorder and loaded.config.max_upload_mb == 5.0


def test_a_plugin_whose_extra_is_missing_names_the_extra(monkeypatch) -> None:
    """Issue 19: the transcriber's speech-to-text is the [transcriber] extra now; enabling it
    without that says what to install, not an ImportError at the first utterance."""
    import bot.extras
    from plugins.transcriber.plugin import Transcriber

    real = bot.extras.find_spec
    monkeypatch.setattr(
        bot.extras, "find_spec", lambda name: None if name == "faster_whisper" else real(name)
    )
    with pytest.raises(ConfigError) as e:
        load_plugins(PluginsConfig(enabled=["transcriber"]), {"transcriber": Transcriber})
    assert e.value.problems == [
        "plugins.enabled: plugin 'transcriber' needs the [transcriber] extra: "
        "pip install 'matrix-callbot[transcriber]'"
    ]


def test_the_dev_sfu_without_its_extra_says_which(monkeypatch, capsys) -> None:
    import bot.extras
    from bot.cli import main

    monkeypatch.setattr(bot.extras, "find_spec", lambda name: None)
    assert main(["dev-sfu", "--host", "127.0.0.1", "--homeserver", "http://127.0.0.1:1"]) == 2
    assert "pip install 'matrix-callbot[devsfu]'" in capsys.readouterr().err
