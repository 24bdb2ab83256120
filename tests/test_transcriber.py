"""The transcriber plugin with the real speech engine, fed through the plugin test kit."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from bot.errors import CommandError
from bot.testing import FakeCall, PluginHarness
from plugins.transcriber.engine import EngineBusy
from plugins.transcriber.plugin import Transcriber, TranscriberConfig
from plugins.transcriber.samples import samples, word_error_rate
from tests.peer import wait_until

SILENCE = np.zeros(16_000, dtype=np.int16)


async def say(h: PluginHarness, who, name: str) -> None:  # type: ignore[no-untyped-def]
    await h.feed_pcm(who, samples()[name].pcm(16_000))
    await h.feed_pcm(who, SILENCE)


async def started(config: TranscriberConfig | None = None) -> PluginHarness:
    h = PluginHarness(Transcriber(config or TranscriberConfig()))
    await h.start()
    await h.plugin.start()  # type: ignore[attr-defined]
    return h


async def test_captions_name_each_speaker_in_a_thread_and_files_are_written() -> None:
    h = await started()
    call: FakeCall = h.call
    alice = h.participant("@alice:x", "A", "Alice")
    bob = h.participant("@bob:x", "B", "Bob")
    assert call.posts[0].startswith("📝 This call is being transcribed")
    await say(h, alice, "slt-1")
    await say(h, bob, "rms-2")
    await h.settle()
    plugin: Transcriber = h.plugin  # type: ignore[assignment]
    assert re.fullmatch(
        r"speech engine: [0-2] of 64 utterances waiting \(all calls\), 0 missed in this call"
        r"(, captions \d+\.\d s after speech \(median\))?",
        plugin.status() or "",
    )
    await wait_until(lambda: len(plugin.latencies) == 2, 60, "both captions")
    assert re.fullmatch(
        r"speech engine: 0 of 64 .*, 0 missed in this call, captions \d+\.\d s after speech "
        r"\(median\)",
        plugin.status() or "",
    )
    await h.end()

    captions = [(p, t) for p, t in zip(call.posts, call.threads, strict=True) if t]
    assert [t for _, t in captions] == ["$post1", "$post1"]
    (alice_line,) = [p for p, _ in captions if p.startswith("Alice: ")]
    (bob_line,) = [p for p, _ in captions if p.startswith("Bob: ")]
    assert word_error_rate(samples()["slt-1"].text, alice_line[7:]) < 0.15
    assert word_error_rate(samples()["rms-2"].text, bob_line[5:]) < 0.15
    assert call.posts[-1].startswith("📝 Transcription stopped: 2 lines from 2 speakers")
    assert len(plugin.latencies) == 2

    data = json.loads((call.folder / "transcript.json").read_text())
    segs = data["segments"]
    assert [(s["user_id"], s["display_name"]) for s in segs] == [
        ("@alice:x", "Alice"),
        ("@bob:x", "Bob"),
    ]
    # Alice spoke from 0 s, Bob after her sentence and a second of silence.
    assert segs[0]["start"] == pytest.approx(0.0, abs=0.2)
    assert segs[1]["start"] == pytest.approx(samples()["slt-1"].seconds + 1.0, abs=0.3)
    assert segs[0]["words"] and all(
        segs[0]["start"] - 0.2 <= w["start"] <= segs[0]["end"] + 0.2 for w in segs[0]["words"]
    )
    assert "] alice: the quick brown fox" in (call.folder / "transcript.txt").read_text().lower()
    assert [(p.name, m) for p, m, _ in call.uploads] == [
        ("transcript.txt", "text/plain"),
        ("transcript.vtt", "text/vtt"),
        ("transcript.srt", "application/x-subrip"),
        ("transcript.json", "application/json"),
    ]


async def test_opted_out_people_are_never_transcribed() -> None:
    h = await started()
    alice = h.participant("@alice:x", "A", "Alice")
    carol = h.participant("@carol:x", "C", "Carol")
    h.call.opted_out_users.add(carol.user_id)
    await say(h, carol, "slt-2")
    await say(h, alice, "rms-1")
    await h.end()
    text = (h.call.folder / "transcript.json").read_text()
    assert "@carol:x" not in text and "finance" not in text.lower()
    assert "hear me" in text.lower()
    assert not any(p.startswith("Carol") for p in h.posts)


async def test_edit_mode_rewrites_one_message_with_the_latest_lines() -> None:
    h = await started(TranscriberConfig(captions="edit", caption_lines=1, upload=()))
    alice = h.participant("@alice:x", "A", "Alice")
    await say(h, alice, "slt-3")
    await say(h, alice, "slt-1")
    await h.end()
    assert [e for e, _ in h.call.edits] == ["$post1", "$post1"]
    assert "thursday" in h.call.edits[0][1].lower()
    last = h.call.edits[1][1]
    assert "fox" in last.lower() and "thursday" not in last.lower()  # only the last line
    assert h.call.uploads == []


async def test_someone_leaving_mid_sentence_is_transcribed_up_to_there() -> None:
    h = await started()
    alice = h.participant("@alice:x", "A", "Alice")
    await h.feed_pcm(alice, samples()["slt-1"].pcm(16_000))  # no silence after it
    h.leave(alice)
    await h.settle()
    await h.end()
    assert any(p.lower().startswith("alice: the quick brown fox") for p in h.posts), h.posts


async def test_nothing_said_writes_an_empty_transcript_and_uploads_nothing() -> None:
    h = await started()
    await h.feed_pcm(h.participant("@alice:x"), SILENCE)
    await h.end()
    assert h.posts[-1].startswith("📝 Transcription stopped: 0 lines")
    assert h.call.uploads == []
    assert (h.call.folder / "transcript.vtt").read_text() == "WEBVTT\n\n"


async def test_an_overloaded_engine_counts_what_it_missed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    h = await started(TranscriberConfig(upload=()))
    plugin: Transcriber = h.plugin  # type: ignore[assignment]

    async def busy(audio: np.ndarray) -> list:
        raise EngineBusy("full")

    # The engine is the process's shared one: monkeypatch puts it back afterwards.
    monkeypatch.setattr(plugin.engine, "transcribe", busy)
    alice = h.participant("@alice:x")
    await say(h, alice, "slt-1")
    await h.settle()
    # !status shows the backlog of the shared engine and what this call missed.
    assert plugin.status() == (
        "speech engine: 0 of 64 utterances waiting (all calls), 1 missed in this call"
    )
    await h.end()
    assert plugin.status() is None  # not transcribing
    assert "1 utterances missed" in h.posts[-1]
    data = json.loads((h.call.folder / "transcript.json").read_text())
    assert data["missed_utterances"] == {"@alice:x": 1}


async def test_commands_and_the_notice_that_must_be_posted() -> None:
    class Mute(FakeCall):
        async def post(self, text: str, html: str | None = None, thread: str | None = None) -> str:
            raise RuntimeError("M_FORBIDDEN")

    h = PluginHarness(Transcriber(), Mute())
    await h.start()
    with pytest.raises(CommandError, match="not transcribing: M_FORBIDDEN"):
        await h.plugin.start()  # type: ignore[attr-defined]
    assert h.plugin.transcript is None  # type: ignore[attr-defined]


def test_config_checks() -> None:
    with pytest.raises(ValueError, match="unknown format 'doc'"):
        TranscriberConfig(upload=("doc",))
    with pytest.raises(ValueError, match="workers"):
        TranscriberConfig(workers=0)
    with pytest.raises(ValueError, match="min_silence_ms"):
        TranscriberConfig(min_silence_ms=5)


async def test_it_starts_by_itself_in_auto_rooms_and_not_elsewhere() -> None:
    auto = TranscriberConfig(auto_rooms=("!auto:x",))
    h = PluginHarness(Transcriber(auto), FakeCall(room_id="!auto:x"))
    await h.start()
    assert h.plugin.transcript is not None  # type: ignore[attr-defined]
    other = PluginHarness(Transcriber(auto), FakeCall(room_id="!other:x"))
    await other.start()
    assert other.plugin.transcript is None  # type: ignore[attr-defined]
    assert other.posts == []


def test_a_local_model_folder_is_accepted_and_used(tmp_path: Path) -> None:
    """``[plugins.transcriber] model`` may name a folder with a faster-whisper (CTranslate2)
    model, e.g. one copied to an offline machine; check-config refuses what cannot work."""
    from bot.config import PluginsConfig
    from bot.errors import ConfigError
    from bot.plugin_loader import load_plugins
    from plugins.transcriber.engine import BUNDLED, SpeechEngine, model_location

    folder = tmp_path / "faster-whisper-tiny.en"
    folder.mkdir()
    for f in Path(model_location(BUNDLED)[0]).iterdir():
        (folder / f.name).symlink_to(f)

    def load(model: str) -> TranscriberConfig:
        plugins = PluginsConfig(enabled=["transcriber"], sections={"transcriber": {"model": model}})
        (loaded,) = load_plugins(plugins, {"transcriber": Transcriber})
        return loaded.config

    config = load(str(folder))
    assert config.model == str(folder)
    engine = SpeechEngine(config.engine_settings())
    audio = samples()["rms-1"].pcm(16_000).astype(np.float32) / 32768
    text = " ".join(r.text for r in engine.recognize(audio))
    assert word_error_rate(samples()["rms-1"].text, text) < 0.2
    engine.close()

    empty = tmp_path / "empty"
    empty.mkdir()
    for model, why in [
        ("models/small.en", "give the folder as an absolute path"),
        (str(tmp_path / "missing"), "does not exist"),
        (str(empty), "holds no model.bin"),
    ]:
        with pytest.raises(ConfigError) as e:
            load(model)
        (problem,) = e.value.problems
        assert problem.startswith("plugins.transcriber") and why in problem, problem
    assert load("small.en").model == "small.en"  # a name faster-whisper downloads
