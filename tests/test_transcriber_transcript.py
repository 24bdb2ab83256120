"""Transcript files: every format from one list of lines, private, and read back."""

from __future__ import annotations

import json
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from plugins.transcriber.engine import Word
from plugins.transcriber.transcript import Line, Transcript


def transcript() -> Transcript:
    t = Transcript("20261125T093000Z", room_id="!r:x")
    t.add(Line("@bob:x", None, 3725.5, 3727.25, "Second <b>line</b> --> here"))
    t.add(Line("@alice:x", "Alice", 1.0, 2.5, "First line.", (Word(1.0, 1.4, "First", 0.9),)))
    return t


def test_formats() -> None:
    t = transcript()
    assert t.to_txt() == (
        "[00:00:01] Alice: First line.\n[01:02:05] @bob:x: Second <b>line</b> --> here\n"
    )
    assert t.to_srt() == (
        "1\n00:00:01,000 --> 00:00:02,500\nAlice: First line.\n\n"
        "2\n01:02:05,500 --> 01:02:07,250\n@bob:x: Second <b>line</b> --> here\n\n"
    )
    assert t.to_vtt() == (
        "WEBVTT\n\n00:00:01.000 --> 00:00:02.500\n<v Alice>First line.\n\n"
        "01:02:05.500 --> 01:02:07.250\n<v @bob:x>Second &lt;b&gt;line&lt;/b&gt; --&gt; here\n\n"
    )
    data = json.loads(t.to_json())
    assert data["origin_utc"] == "20261125T093000Z"
    assert [s["user_id"] for s in data["segments"]] == ["@alice:x", "@bob:x"]
    assert data["segments"][0]["words"] == [
        {"start": 1.0, "end": 1.4, "text": "First", "probability": 0.9}
    ]


def test_written_files_are_private_and_json_reads_back(tmp_path: Path) -> None:
    folder = tmp_path / "call"
    paths = transcript().write(folder)
    assert sorted(p.name for p in paths) == [
        "transcript.json",
        "transcript.srt",
        "transcript.txt",
        "transcript.vtt",
    ]
    assert folder.stat().st_mode & 0o077 == 0
    assert all(p.stat().st_mode & 0o077 == 0 for p in paths)
    again = Transcript.from_json((folder / "transcript.json").read_text())
    assert again.ordered() == transcript().ordered()


@given(st.text(), st.text(min_size=1), st.floats(0, 1e6))
def test_any_text_round_trips_through_json(name: str, text: str, start: float) -> None:
    t = Transcript("x", [Line("@u:x", name or None, start, start + 1, text)])
    assert Transcript.from_json(t.to_json()).lines[0].text == text
    assert t.to_vtt().count("-->") == 1  # speaker text never makes a cue timing line
