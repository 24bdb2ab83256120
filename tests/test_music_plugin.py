"""The music plugin through the plugin test kit: commands, what is published, ducking."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bot.commands.registry import CommandContext, CommandRegistry
from bot.errors import CommandError
from bot.plugin import ParticipantChange, ParticipantEvent
from bot.testing import FakeCall, PluginHarness
from plugins.music.config import MusicConfig
from plugins.music.player import State
from plugins.music.plugin import SPEECH_WATCH, MusicPlayer, parse_time
from tests.music_files import dominant, rms, write_tones

FRAME = 960


class Replies:
    def __init__(self) -> None:
        self.texts: list[str] = []

    def ctx(self) -> CommandContext:
        async def reply(text: str, html: str | None = None) -> str:
            self.texts.append(text)
            return "$reply"

        return CommandContext("!r:x", "@dj:x", "$ev", "!", reply, lambda c: True)


async def until(cond, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


def heard(call: FakeCall, seconds: float = 0.2) -> tuple[float, float]:
    """(frequency, rms) of the last ``seconds`` published."""
    pcm = call.outputs[0].pcm[:, 0][-int(seconds * 48_000) :].astype(np.float64)
    return dominant(pcm), rms(pcm)


async def test_play_queue_skip_seek_volume_pause_and_a_bad_file(tmp_path: Path) -> None:
    music = tmp_path / "music"
    music.mkdir()
    write_tones(music / "a.flac", [(440, 2.0), (660, 2.0)])
    write_tones(music / "b.mp3", [(880, 5.0)], codec="libmp3lame")
    (music / "broken.ogg").write_bytes(b"OggS" + bytes(range(200)) * 10)
    call = FakeCall()
    plugin = MusicPlayer(MusicConfig(music_dir=music, fade_s=0.05, lead_ms=200))
    h = PluginHarness(plugin, call)
    await h.start()
    r = Replies()
    await plugin.np(r.ctx())
    assert r.texts[-1] == "Nothing is playing."
    with pytest.raises(CommandError, match="Nothing is playing"):
        await plugin.skip(r.ctx())

    await plugin.play(r.ctx(), "a.flac")
    await plugin.play(r.ctx(), "broken")
    await plugin.play(r.ctx(), "b.mp3")
    assert r.texts[-3:] == ["Starting a.flac …", "Queued as #1: broken.ogg", "Queued as #2: b.mp3"]
    await until(lambda: call.outputs and call.outputs[0].pcm.shape[0] > 0.5 * 48_000)
    assert abs(heard(call)[0] - 440) < 10
    await plugin.show_queue(r.ctx())
    assert r.texts[-1].startswith("▶ a.flac: 0:0") and r.texts[-1].endswith(
        "1. broken.ogg, asked for by @dj:x\n2. b.mp3, asked for by @dj:x"
    )

    # Volume 50%: half the amplitude.
    level = heard(call)[1]
    await plugin.volume(r.ctx(), "50")
    n = call.outputs[0].pcm.shape[0]
    await until(lambda: call.outputs[0].pcm.shape[0] > n + 0.4 * 48_000)
    assert abs(heard(call)[1] / level - 0.5) < 0.05

    # Seek into the second tone.
    await plugin.seek(r.ctx(), "0:03")
    assert r.texts[-1] == "Jumping to 0:03."
    await until(lambda: plugin.player.position > 3.3)
    assert abs(heard(call, 0.1)[0] - 660) < 10

    # Pause: nothing is written; resume: it goes on.
    await plugin.pause(r.ctx())
    await until(lambda: plugin.player.state is State.PAUSED)
    n = call.outputs[0].pcm.shape[0]
    await asyncio.sleep(0.3)
    assert call.outputs[0].pcm.shape[0] == n
    await plugin.np(r.ctx())
    assert "(paused)" in r.texts[-1]
    await plugin.resume(r.ctx())
    await until(lambda: call.outputs[0].pcm.shape[0] > n + 0.1 * 48_000)

    # Skip: the broken file is reported and skipped; b plays.
    await plugin.skip(r.ctx())
    assert r.texts[-1] == "Skipped. Next: broken.ogg"
    await until(lambda: plugin.queue.current is not None and plugin.queue.current.query == "b.mp3")
    await until(lambda: abs(heard(call)[0] - 880) < 10)
    assert [p for p in call.posts if p.startswith("⚠")] == [
        "⚠ Could not play broken.ogg: it ends before any audio (damaged or empty). Skipping it."
    ]
    assert plugin.player.stats.failed == 1

    await plugin.stop(r.ctx())
    await until(lambda: plugin.player.state is State.IDLE)
    assert plugin.queue.current is None
    await h.end()


async def test_ducking_follows_who_speaks(tmp_path: Path) -> None:
    write_tones(tmp_path / "a.flac", [(440, 6.0)])
    call = FakeCall()
    config = MusicConfig(music_dir=tmp_path, duck_db=-12.0, duck_attack_s=0.05)
    plugin = MusicPlayer(config)
    assert plugin.audio == SPEECH_WATCH  # asks for the cheapest audio, to hear who speaks
    assert MusicPlayer(MusicConfig(duck=False)).audio is None
    h = PluginHarness(plugin, call)
    await h.start()
    alice = h.participant("@alice:x")
    await plugin.play(Replies().ctx(), "a.flac")
    await until(lambda: call.outputs and call.outputs[0].pcm.shape[0] > 1.2 * 48_000)
    full = heard(call)[1]
    h.router.push_event(ParticipantEvent(ParticipantChange.SPEAKING, alice, 1.0))
    n = call.outputs[0].pcm.shape[0]
    await until(lambda: call.outputs[0].pcm.shape[0] > n + 0.6 * 48_000)
    assert abs(20 * np.log10(heard(call)[1] / full) - (-12)) < 1
    h.router.push_event(ParticipantEvent(ParticipantChange.SILENT, alice, 2.0))
    n = call.outputs[0].pcm.shape[0]
    await until(lambda: call.outputs[0].pcm.shape[0] > n + 1.2 * 48_000)
    assert abs(heard(call)[1] / full - 1) < 0.1
    # The call ends mid-track: the decoding thread ends with it.
    await h.end()
    await until(lambda: not [t for t in threading.enumerate() if t.name == "music-decoder"])


async def test_refusals_in_words(tmp_path: Path) -> None:
    write_tones(tmp_path / "a.flac", [(440, 1.0)])
    plugin = MusicPlayer(MusicConfig(music_dir=tmp_path, max_queue=1))
    h = PluginHarness(plugin)
    await h.start()
    ctx = Replies().ctx()
    for args, message in [
        (("../x.mp3",), "leads out of the music folder"),
        (("https://youtu.be/x",), "needs yt-dlp, which is not installed"),
    ]:
        with pytest.raises(CommandError, match=message):
            await plugin.play(ctx, *args)
    plugin.player.state = State.PLAYING  # hold the queue still: nothing starts
    plugin.queue.current = plugin.queue.current or object()  # type: ignore[assignment]
    await plugin.play(ctx, "a.flac")
    with pytest.raises(CommandError, match=r"The queue is full \(1 tracks\)"):
        await plugin.play(ctx, "a.flac")
    for command, arg, message in [
        (plugin.volume, "300", "Usage: !volume 0-200"),
        (plugin.loop, "twice", "Usage: !loop off|one|all"),
        (plugin.remove, "5", "There is no #5"),
        (plugin.remove, "x", "Usage: !remove <n>"),
    ]:
        with pytest.raises(CommandError, match=message):
            await command(ctx, arg)
    plugin.queue.current = None
    plugin.player.state = State.IDLE
    await h.end()


def test_who_may_run_what() -> None:
    registry = CommandRegistry()
    commands = {c.name: c for c in registry.register_plugin_class(MusicPlayer, lambda r: None, "")}
    assert set(commands) == {
        "play", "queue", "np", "skip", "pause", "resume", "stop",
        "seek", "volume", "loop", "shuffle", "remove", "clear",
    }  # fmt: skip
    assert {n for n, c in commands.items() if not c.allowed_users_only} == {"queue", "np"}


def test_parse_time() -> None:
    assert parse_time("1:30") == 90 and parse_time("1:02:03") == 3723
    assert parse_time("45") == 45 and parse_time("2.5") == 2.5
    assert parse_time("+15", now=100) == 115 and parse_time("-10", now=5) == 0
    assert parse_time("1:75") is None and parse_time("abc") is None
    assert parse_time("\u0663:\u0660\u0665") == 185  # decimal digits of any script are read ...
    assert parse_time("²") is None and parse_time("1:²") is None  # ... other digits are not


@settings(max_examples=300, deadline=None)
@given(
    st.text(alphabet="0123456789:+-.²٣①", max_size=30)
    | st.integers(4000, 5000).map(lambda n: "9" * n + ":00:00")
)
def test_parse_time_is_total(text: str) -> None:
    # int() refuses numbers of over 4,300 digits: hours of that many must be refused
    value = parse_time(text, now=10.0)
    assert value is None or value >= 0
