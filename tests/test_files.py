"""Everything the bot writes under its data folder is private to its user whatever the umask:
the helpers, and the recorder, the transcriber and the job store run under umask 022 (what an
embedding application, the demo or a test has; only ``callbot run`` sets 077)."""

from __future__ import annotations

import asyncio
import os
import stat
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import pytest

from bot.consent import OptOuts
from bot.files import private_dir, private_file, write_private_json
from bot.plugin import Participant, VideoFrame
from bot.schedule.scheduler import JobScheduler, default_store_url
from bot.schedule.when import parse_schedule
from bot.testing import FakeCall, PluginHarness
from plugins.recorder.plugin import Recorder, RecorderConfig
from plugins.transcriber.plugin import Transcriber, TranscriberConfig
from plugins.transcriber.samples import samples


@pytest.fixture
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def modes(root: Path) -> dict[str, int]:
    """Every folder and file under ``root`` (itself excluded), relative name -> mode bits."""
    return {
        str(p.relative_to(root)): stat.S_IMODE(p.lstat().st_mode) for p in sorted(root.rglob("*"))
    }


def assert_private(root: Path) -> None:
    found = modes(root)
    wrong = {
        name: oct(mode)
        for name, mode in found.items()
        if mode != (0o700 if (root / name).is_dir() else 0o600)
    }
    assert found and wrong == {}


def test_the_helpers_make_private_folders_and_files_whatever_the_umask(
    tmp_path: Path, umask_022: None
) -> None:
    made = private_dir(tmp_path / "a" / "b" / "c")
    assert made.is_dir()
    assert modes(tmp_path) == {"a": 0o700, "a/b": 0o700, "a/b/c": 0o700}
    # A file for a writer that opens it by path: created 0600, and an older one made so too.
    old = tmp_path / "a" / "old.ogg"
    old.write_bytes(b"kept")
    old.chmod(0o644)
    assert private_file(old).read_bytes() == b"kept"
    new = private_file(tmp_path / "x" / "new.ogg")
    with open(new, "w") as f:  # as FFmpeg and simplematrixbotlib do: O_TRUNC keeps the mode
        f.write("data")
    write_private_json(tmp_path / "y" / "z" / "state.json", {"k": 1})
    assert_private(tmp_path)
    # An existing folder is the operator's (a mounted /data): its mode is left alone.
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    private_dir(shared)
    assert stat.S_IMODE(shared.stat().st_mode) == 0o755


def test_a_symlink_is_not_followed_into_someone_elses_file(tmp_path: Path) -> None:
    target = tmp_path / "target"
    target.write_text("theirs")
    target.chmod(0o644)
    (tmp_path / "link").symlink_to(target)
    with pytest.raises(OSError):
        private_file(tmp_path / "link")
    assert stat.S_IMODE(target.stat().st_mode) == 0o644


async def test_recordings_transcripts_and_the_job_store_are_private_under_umask_022(
    tmp_path: Path, umask_022: None
) -> None:
    data = tmp_path / "data"
    call = FakeCall(files_dir=data / "calls" / "!room:x")
    alice = Participant("@alice:x", "ALICE", "@alice:x:ALICE", "Alice")
    call.members.append(alice)

    # The recorder: per-participant and mixed Opus, a camera's WebM, meta.json.
    recorder = Recorder(RecorderConfig(video=True, video_fps=10))
    rec = PluginHarness(recorder, call)
    await rec.start()
    await recorder.start()
    speech = samples()["slt-1"]
    await rec.feed_pcm(alice, speech.pcm(48_000)[: 48_000 // 2])
    assert recorder.video is not None
    for i in range(5):
        image = np.full((240 * 3 // 2, 320), 128, np.uint8).reshape(-1)
        rec.router.push_video(recorder.video, VideoFrame(alice, image, "yuv420p", 320, 240, i / 10))
        await rec.settle()
    await recorder.stop()

    # The transcriber, in the same call folder: transcript.json/.vtt/.srt/.txt.
    tr = PluginHarness(Transcriber(TranscriberConfig(upload=())), call)
    await tr.start()
    await tr.plugin.start()  # type: ignore[attr-defined]
    await tr.feed_pcm(alice, speech.pcm(16_000))
    await tr.feed_pcm(alice, np.zeros(16_000, dtype=np.int16))
    await tr.end()

    # The job store (SQLite) and the opt-outs.
    async def runner(plan: dict[str, Any]) -> None:
        pass

    scheduler = JobScheduler(default_store_url(data), owner="@bot:x")
    scheduler.start(runner)
    when = parse_schedule("in 1h record", ZoneInfo("UTC"), datetime.now(UTC))
    scheduler.add("!room:x", "@alice:x", when)
    scheduler.shutdown()
    await asyncio.sleep(0.05)
    await OptOuts(data / "optouts.json").set("!room:x", "@alice:x", True)

    folder = call.folder
    names = {p.name for p in folder.iterdir()}
    assert {"alice_x-ALICE.ogg", "mixed.ogg", "alice_x-ALICE.webm", "meta.json"} <= names
    assert {f"transcript.{f}" for f in ("json", "vtt", "srt", "txt")} <= names
    assert (data / "schedule.sqlite").exists() and (data / "optouts.json").exists()
    assert_private(data)
