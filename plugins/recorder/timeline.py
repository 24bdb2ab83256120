"""Putting each participant's audio on the call's one timeline.

Frames carry the time they arrived (seconds since the call started). A track's file is kept
at ``round(timestamp * rate)`` samples: when frames stop (muted, joined late, network loss)
the gap is filled with silence, so every file lines up with the others and with wall-clock
time. Jitter smaller than ``tolerance`` is absorbed rather than filled.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Placement:
    silence: int  # samples of silence to write first
    pcm: np.ndarray  # then these samples (possibly trimmed at the front)


class TrackTimeline:
    def __init__(self, sample_rate: int, tolerance_s: float = 0.06) -> None:
        self.rate = sample_rate
        self.tolerance = round(tolerance_s * sample_rate)
        self.position = 0  # samples placed so far
        self.gaps: list[tuple[float, float]] = []  # (start, end) seconds filled with silence

    def place(self, timestamp: float, pcm: np.ndarray) -> Placement:
        """Where a frame that started at ``timestamp`` goes."""
        start = max(0, round(timestamp * self.rate))
        silence = 0
        if start > self.position + self.tolerance:
            silence = start - self.position
            self.gaps.append((self.position / self.rate, start / self.rate))
        elif start < self.position - self.tolerance:
            # Arrived late, after time moved on: drop what overlaps what is already written.
            overlap = min(self.position - start, pcm.shape[0])
            pcm = pcm[overlap:]
        self.position += silence + pcm.shape[0]
        return Placement(silence, pcm)
