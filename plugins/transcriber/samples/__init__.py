"""Speech samples that ship with the bot: two flite voices ("slt", "rms"), four sentences
each, with their text. For the demo, the tests and the benchmarks."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import av
import numpy as np

FOLDER = Path(__file__).parent


@dataclass(frozen=True)
class Sample:
    path: Path
    voice: str
    text: str
    seconds: float

    def pcm(self, rate: int = 48_000) -> np.ndarray:
        """int16 mono samples at ``rate``."""
        return decode(self.path, rate)


@cache
def samples() -> dict[str, Sample]:
    """By file stem, e.g. "slt-1"."""
    data = json.loads((FOLDER / "sentences.json").read_text(encoding="utf-8"))
    return {
        Path(name).stem: Sample(FOLDER / name, d["voice"], d["text"], d["seconds"])
        for name, d in data.items()
    }


def decode(path: Path, rate: int = 48_000) -> np.ndarray:
    """Any audio file FFmpeg reads, as int16 mono at ``rate``."""
    resampler = av.AudioResampler(format="s16", layout="mono", rate=rate)
    with av.open(str(path)) as container:
        frames = [f for fr in container.decode(audio=0) for f in resampler.resample(fr)]
    frames += resampler.resample(None)
    if not frames:
        return np.zeros(0, dtype=np.int16)
    return np.concatenate([f.to_ndarray().reshape(-1) for f in frames])


def words(text: str) -> list[str]:
    """Lower-case words without punctuation, for comparing transcripts."""
    return re.findall(r"[a-z0-9']+", text.lower())


def word_error_rate(reference: str, hypothesis: str) -> float:
    """(substitutions + deletions + insertions) / reference words (Levenshtein on words)."""
    ref, hyp = words(reference), words(hypothesis)
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        prev, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (r != h))
    return row[-1] / max(1, len(ref))
