"""``callbot transcribe``: a recorder's call folder again, or any audio file."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from bot.cli import main
from bot.plugin import AudioFrame
from bot.testing import FakeCall, PluginHarness
from plugins.recorder.plugin import RATE, Recorder, RecorderConfig
from plugins.transcriber.samples import samples, word_error_rate

FRAME = 960


async def test_a_recorded_call_folder_gets_a_transcript_with_speakers(tmp_path: Path) -> None:
    call = FakeCall(files_dir=tmp_path)
    h = PluginHarness(Recorder(RecorderConfig(upload_mixed=False)), call)
    await h.start()
    alice = h.participant("@alice:x", "A", "Alice")
    bob = h.participant("@bob:x", "B", "Bob")
    # The recording starts 2 s into the call: the transcript counts from the call's start.
    h.clock = 2.0
    await h.plugin.start()  # type: ignore[attr-defined]
    said = {alice: samples()["slt-2"].pcm(), bob: samples()["rms-3"].pcm()}
    # alice speaks first, then bob; both send silence while the other speaks
    timeline = np.zeros(RATE * 8, dtype=np.int16)
    parts = {alice: timeline.copy(), bob: timeline.copy()}
    parts[alice][RATE // 2 : RATE // 2 + said[alice].size] = said[alice]
    parts[bob][RATE * 4 : RATE * 4 + said[bob].size] = said[bob]
    for i in range(0, timeline.size, FRAME):
        for who in (alice, bob):
            frame = parts[who][i : i + FRAME].reshape(-1, 1)
            h.router.push_audio(Recorder.audio, AudioFrame(who, frame, RATE, h.clock))
        h.clock += FRAME / RATE
        await h.settle()
    await h.plugin.stop()  # type: ignore[attr-defined]
    folder = call.folder
    os.chmod(folder, 0o755)  # noqa: S103 (so that we can see the transcriber makes new files private)

    assert main(["transcribe", str(folder), "--no-progress"]) == 0

    data = json.loads((folder / "transcript.json").read_text())
    segs = data["segments"]
    assert data["origin_utc"] == folder.name
    assert [(s["user_id"], s["display_name"]) for s in segs] == [
        ("@alice:x", "Alice"),
        ("@bob:x", "Bob"),
    ]
    assert word_error_rate(samples()["slt-2"].text, segs[0]["text"]) < 0.15
    assert word_error_rate(samples()["rms-3"].text, segs[1]["text"]) < 0.15
    assert segs[0]["start"] == pytest.approx(2.5, abs=0.6)
    assert segs[1]["start"] == pytest.approx(6.0, abs=0.6)
    for name in ("transcript.txt", "transcript.vtt", "transcript.srt"):
        assert (folder / name).stat().st_mode & 0o077 == 0


def test_an_audio_file_is_printed_in_the_chosen_format(
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = samples()["slt-1"].path
    assert main(["transcribe", str(path), "--format", "srt", "--progress"]) == 0
    out, err = capsys.readouterr()
    first, timing, text = out.splitlines()[:3]
    assert first == "1" and timing.startswith("00:00:0") and " --> " in timing
    assert word_error_rate(samples()["slt-1"].text, text) < 0.15
    assert "100%" in err

    assert main(["transcribe", str(path), "--format", "json", "--no-progress"]) == 0
    out, err = capsys.readouterr()
    (seg,) = json.loads(out)["segments"]
    assert seg["user_id"] == "" and seg["words"] and err == ""


@pytest.mark.parametrize(
    ("make", "code", "message"),
    [
        (lambda p: p / "missing.ogg", 2, "does not exist"),
        (lambda p: (p / "x.ogg").write_bytes(b"not audio") and p / "x.ogg", 1, "FFmpeg"),
        (lambda p: p, 1, "not a call folder"),
    ],
)
def test_bad_inputs_get_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], make, code: int, message: str
) -> None:
    assert main(["transcribe", str(make(tmp_path))]) == code
    assert message in capsys.readouterr().err
