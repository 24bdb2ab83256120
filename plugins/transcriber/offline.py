"""Transcribing afterwards: a recording's call folder (one file per person, so every line has
its speaker) or any audio file FFmpeg reads (one unnamed speaker)."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import av
import numpy as np

from plugins.transcriber.engine import Recognized, SpeechEngine, TranscriptionError
from plugins.transcriber.samples import decode
from plugins.transcriber.transcript import Line, Transcript

RATE = 16_000
Progress = Callable[[float, float], None]  # (seconds of the input done, seconds in all)


@dataclass(frozen=True)
class _Track:
    path: Path
    user_id: str
    display_name: str | None


def transcribe_folder(
    folder: Path, engine: SpeechEngine, progress: Progress | None = None
) -> Transcript:
    """The transcript of a recording folder (``meta.json`` and one file per person)."""
    meta = _read_meta(folder)
    tracks = [
        _Track(folder / p["file"], p["user_id"], p.get("display_name"))
        for p in meta.get("participants", [])
    ]
    missing = [t.path.name for t in tracks if not t.path.is_file()]
    if missing:
        raise TranscriptionError(f"{folder}: missing recording files: {', '.join(missing)}")
    offset = float(meta.get("call_offset_s", 0.0))
    transcript = Transcript(folder.name, room_id=meta.get("room_id"))
    # One person's audio in memory at a time (an hour of 16 kHz float32 is 230 MB); the
    # progress total comes from the containers' durations.
    total = sum(_duration(t.path) for t in tracks)
    done = 0.0
    for track in tracks:
        audio = _decode(track.path)

        def step(seconds: float, base: float = done) -> None:
            if progress is not None:
                progress(min(total, base + seconds), total)

        for r in _recognize(engine, audio, offset, step):
            transcript.add(_line(track.user_id, track.display_name, r))
        done += audio.size / RATE
    if progress is not None:
        progress(total, total)
    return transcript


def transcribe_file(
    path: Path, engine: SpeechEngine, progress: Progress | None = None
) -> Transcript:
    """The transcript of one audio file; time 0 is its start."""
    audio = _decode(path)
    total = audio.size / RATE
    transcript = Transcript(path.name)

    def step(seconds: float) -> None:
        if progress is not None:
            progress(min(total, seconds), total)

    for r in _recognize(engine, audio, 0.0, step):
        transcript.add(_line("", None, r))
    step(total)
    return transcript


def _recognize(
    engine: SpeechEngine, audio: np.ndarray, offset: float, progress: Callable[[float], None]
) -> list[Recognized]:
    if not audio.size:
        return []
    # Whole files: faster-whisper's own VAD skips the silences and the model sees up to 30 s
    # at a time, which is more accurate than utterance by utterance (offline-asr-media.md).
    return engine.recognize(audio, offset, vad_filter=True, progress=progress)


def _line(user_id: str, display_name: str | None, r: Recognized) -> Line:
    return Line(user_id, display_name, round(r.start, 3), round(r.end, 3), r.text, r.words)


def _read_meta(folder: Path) -> dict[str, Any]:
    try:
        meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TranscriptionError(f"{folder} is not a call folder (it has no meta.json)") from None
    except (OSError, ValueError) as e:
        raise TranscriptionError(f"{folder}/meta.json cannot be read: {e}") from None
    if not isinstance(meta, dict):
        raise TranscriptionError(f"{folder}/meta.json is not a recording's meta file")
    return meta


def _duration(path: Path) -> float:
    """Seconds of audio in a file, from its container (no decoding); 0 if unknown."""
    try:
        with av.open(str(path)) as container:
            return (container.duration or 0) / 1e6
    except Exception:  # _decode says what is wrong with it
        return 0.0


def _decode(path: Path) -> np.ndarray:
    try:
        return decode(path, RATE).astype(np.float32) / 32768.0
    except Exception as e:  # av raises many kinds; all mean the same to the user
        raise TranscriptionError(f"{path}: not an audio file FFmpeg can read ({e})") from None


class ProgressBar:
    """``[#####.....]  50%  1:05 / 2:10`` on one line of ``out``, redrawn at most 10 times a
    second, for inputs of at least ``min_total`` seconds."""

    def __init__(self, out: TextIO = sys.stderr, min_total: float = 30.0, width: int = 30) -> None:
        self.out, self.min_total, self.width = out, min_total, width
        self._shown = 0.0
        self.drawn = False

    def __call__(self, done: float, total: float) -> None:
        now = time.monotonic()
        finished = done >= total
        if total < self.min_total or (now - self._shown < 0.1 and not finished):
            return
        self._shown = now
        part = min(1.0, done / total) if total else 1.0
        bar = "#" * round(part * self.width)
        end = "\n" if finished else ""
        self.out.write(f"\r[{bar:.<{self.width}}] {part:4.0%}  {_mmss(done)} / {_mmss(total)}{end}")
        self.out.flush()
        self.drawn = True


def _mmss(seconds: float) -> str:
    m, s = divmod(round(seconds), 60)
    return f"{m}:{s:02d}"
