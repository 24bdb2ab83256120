"""A call's transcript and its files: transcript.json, .vtt, .srt and .txt."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from bot.files import write_private
from plugins.transcriber.engine import Word

Format = Literal["txt", "json", "vtt", "srt"]
FORMATS: tuple[Format, ...] = ("json", "vtt", "srt", "txt")


@dataclass(frozen=True)
class Line:
    """What one person said, ``start``/``end`` in seconds from the transcript's origin."""

    user_id: str
    display_name: str | None
    start: float
    end: float
    text: str
    words: tuple[Word, ...] = ()

    @property
    def speaker(self) -> str:
        """Who said it ("" when not known, e.g. a plain audio file)."""
        return self.display_name or self.user_id

    @property
    def _said(self) -> str:
        return f"{self.speaker}: {self.text}" if self.speaker else self.text


@dataclass
class Transcript:
    #: What time 0 is (e.g. "20261125T093000Z", the UTC time the bot joined the call).
    origin_utc: str
    lines: list[Line] = field(default_factory=list)
    room_id: str | None = None
    #: Utterances that were not transcribed (engine overloaded), per user.
    missed: dict[str, int] = field(default_factory=dict)

    def add(self, line: Line) -> None:
        self.lines.append(line)

    def ordered(self) -> list[Line]:
        return sorted(self.lines, key=lambda line: (line.start, line.end))

    # ---------------------------------------------------------------- formats

    def render(self, fmt: Format) -> str:
        return {"json": self.to_json, "vtt": self.to_vtt, "srt": self.to_srt, "txt": self.to_txt}[
            fmt
        ]()

    def to_json(self) -> str:
        data: dict[str, Any] = {
            "origin_utc": self.origin_utc,
            "room_id": self.room_id,
            "segments": [
                {
                    "user_id": line.user_id,
                    "display_name": line.display_name,
                    "start": round(line.start, 3),
                    "end": round(line.end, 3),
                    "text": line.text,
                    "words": [asdict(w) for w in line.words],
                }
                for line in self.ordered()
            ],
            "missed_utterances": self.missed,
        }
        return json.dumps(data, indent=1, ensure_ascii=False) + "\n"

    def to_vtt(self) -> str:
        cues = [
            f"{_clock(line.start, '.')} --> {_clock(line.end, '.')}\n"
            + (f"<v {_vtt_escape(line.speaker)}>" if line.speaker else "")
            + _vtt_escape(line.text)
            for line in self.ordered()
        ]
        return "WEBVTT\n\n" + "".join(f"{cue}\n\n" for cue in cues)

    def to_srt(self) -> str:
        return "".join(
            f"{i}\n{_clock(line.start, ',')} --> {_clock(line.end, ',')}\n{line._said}\n\n"
            for i, line in enumerate(self.ordered(), 1)
        )

    def to_txt(self) -> str:
        return "".join(f"[{_clock(line.start, '.')[:8]}] {line._said}\n" for line in self.ordered())

    @classmethod
    def from_json(cls, text: str) -> Transcript:
        data = json.loads(text)
        lines = [
            Line(
                s["user_id"],
                s.get("display_name"),
                float(s["start"]),
                float(s["end"]),
                s["text"],
                tuple(Word(**w) for w in s.get("words", ())),
            )
            for s in data["segments"]
        ]
        return cls(
            data["origin_utc"], lines, data.get("room_id"), data.get("missed_utterances", {})
        )

    def write(self, folder: Path, formats: Iterable[Format] = FORMATS) -> list[Path]:
        """``transcript.<fmt>`` files in ``folder``, private to the bot's user."""
        written = []
        for fmt in formats:
            path = folder / f"transcript.{fmt}"
            write_private(path, self.render(fmt))
            written.append(path)
        return written


def _clock(seconds: float, sep: str) -> str:
    ms = max(0, round(seconds * 1000))
    h, rest = divmod(ms, 3_600_000)
    m, rest = divmod(rest, 60_000)
    s, ms = divmod(rest, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


def _vtt_escape(text: str) -> str:
    # "-->" would end a cue timing line; < and & start tags and entities.
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
