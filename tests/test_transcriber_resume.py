"""A transcript that a crash interrupted goes on when the call is resumed (a restarted bot, or
the fleet worker taking the call over): real speech engine, through the plugin test kit."""

from __future__ import annotations

import json

from bot.testing import FakeCall, PluginHarness
from plugins.transcriber.plugin import Transcriber, TranscriberConfig
from plugins.transcriber.resume import PARTIAL_FILE
from plugins.transcriber.samples import samples, word_error_rate
from tests.peer import wait_until
from tests.test_transcriber import say


async def test_an_interrupted_transcript_goes_on_in_the_resumed_call() -> None:
    first = PluginHarness(Transcriber(TranscriberConfig()))
    await first.start()
    plugin: Transcriber = first.plugin  # type: ignore[assignment]
    await plugin.start()
    folder = first.call.folder
    # kept on disk from the start, and after every line
    assert json.loads((folder / PARTIAL_FILE).read_text())["segments"] == []
    await say(first, first.participant("@alice:x", "A", "Alice"), "slt-1")
    await wait_until(
        lambda: json.loads((folder / PARTIAL_FILE).read_text())["segments"], 60, "a line"
    )
    # The bot dies here: no stop, no transcript files; the partial transcript is all there is.
    assert not (folder / "transcript.json").exists()

    call = FakeCall(files_dir=first.call.files_dir)
    call.resumed = True  # what bot.rtc.resume or a fleet takeover says
    second = PluginHarness(Transcriber(TranscriberConfig()), call)
    await second.start()  # on_call_start: finds the partial transcript and goes on
    assert call.posts[0].startswith("📝 This call is being transcribed again")
    await say(second, second.participant("@bob:x", "B", "Bob"), "rms-2")
    await second.settle()
    await second.end()

    assert not (folder / PARTIAL_FILE).exists()
    segments = json.loads((folder / "transcript.json").read_text())["segments"]
    assert [s["user_id"] for s in segments] == ["@alice:x", "@bob:x"]
    assert word_error_rate(samples()["slt-1"].text, segments[0]["text"]) < 0.15
    assert word_error_rate(samples()["rms-2"].text, segments[1]["text"]) < 0.15
    # the new lines come after the earlier ones, in the call's time
    assert segments[1]["start"] > segments[0]["end"]
    assert call.posts[-1].startswith("📝 Transcription stopped: 2 lines from 2 speakers")
    await first.call.worker.close()  # the dead bot's threads
