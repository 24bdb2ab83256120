"""The plugin test kit, exercised on the example plugin of docs/plugins.md."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from bot.plugin import (
    Arg,
    AudioFrame,
    AudioWants,
    CommandContext,
    CommandError,
    Overflow,
    ParticipantChange,
    ParticipantEvent,
    Plugin,
    command,
)
from bot.testing import PluginHarness

EXAMPLE = Path(__file__).resolve().parent.parent / "docs" / "examples" / "speaking_time.py"


def load_example():
    spec = importlib.util.spec_from_file_location("speaking_time", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.SpeakingTime


async def test_example_plugin_reports_speaking_time() -> None:
    h = PluginHarness(load_example()())
    await h.start()
    alice = h.participant("@alice:example.org", display_name="Alice")
    bob = h.participant("@bob:example.org")
    await h.feed_audio(alice, seconds=3.0, freq=300)
    await h.feed_audio(bob, seconds=1.0, freq=500)
    await h.feed_audio(bob, seconds=2.0)  # silence does not count
    await h.end()
    assert h.posts == ["Speaking time\nAlice: 3 s\n@bob:example.org: 1 s"]


async def test_published_audio_is_recorded() -> None:
    class Echo(Plugin):
        name = "echo"
        audio = AudioWants(sample_rate=48_000)
        overflow = Overflow.LOSSLESS

        async def on_call_start(self, call) -> None:
            self.out = await call.publish_audio("echo")

        async def on_audio(self, frame: AudioFrame) -> None:
            await self.out.write(frame.pcm)

    h = PluginHarness(Echo())
    await h.start()
    await h.feed_audio(h.participant("@a:x"), seconds=0.5, freq=440)
    await h.end()
    (out,) = h.call.outputs
    assert out.pcm.shape == (24_000, 1)
    spectrum = np.abs(np.fft.rfft(out.pcm[:, 0]))
    assert abs(np.argmax(spectrum) * 48_000 / 24_000 - 440) < 5


def test_a_plugin_needs_no_import_but_bot_plugin() -> None:
    """Issue 19: the plugin API in one import. The shipped plugins show it: of the bot's own
    modules they import bot.plugin only."""
    import ast

    for path in sorted(Path("plugins").glob("*/plugin.py")):
        tree = ast.parse(path.read_text())
        used = {
            node.module
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("bot")
        }
        assert used == {"bot.plugin"}, (path, used)


class Greeter(Plugin):
    name = "greeter"

    def __init__(self) -> None:
        self.speaking: list[tuple[str, bool]] = []

    @command(help="Greet someone", args=[Arg("who")], allowed_users_only=False)
    async def greet(self, ctx: CommandContext, who: str) -> None:
        if who == "nobody":
            raise CommandError("Greet whom?")
        await ctx.reply(f"Hello, {who} (asked by {ctx.sender})")

    async def on_participant(self, event: ParticipantEvent) -> None:
        if event.change in (ParticipantChange.SPEAKING, ParticipantChange.SILENT):
            self.speaking.append(
                (event.participant.user_id, event.change is ParticipantChange.SPEAKING)
            )


async def test_the_kit_runs_commands_and_tells_speaking() -> None:
    h = PluginHarness(Greeter())
    await h.start()
    assert await h.command("!greet alice", sender="@bob:x") == ["Hello, alice (asked by @bob:x)"]
    assert await h.command("!greet nobody") == ["Greet whom?"]
    assert "Usage" in (await h.command("!greet"))[0]
    alice = h.participant("@alice:x")
    h.speaking(alice)
    h.speaking(alice, False)
    await h.settle()
    assert h.plugin.speaking == [("@alice:x", True), ("@alice:x", False)]
