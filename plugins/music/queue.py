"""The play queue: what plays now, what comes next, and the loop mode.

Bounded (``max_size`` tracks): a full queue refuses new tracks ("reject newest") and says so,
so one person cannot queue a day of music by accident.
"""

from __future__ import annotations

import enum
import random
from collections import deque
from dataclasses import dataclass, field
from typing import Any


class LoopMode(enum.Enum):
    OFF = "off"
    ONE = "one"  # the current track again and again
    ALL = "all"  # a finished track goes to the end of the queue


@dataclass(eq=False)
class Track:
    """One thing to play, as the user asked for it (``query``) and as it turned out."""

    query: str
    requested_by: str
    #: When it was asked for (the player's clock): for the !play -> first audio delay.
    requested_at: float = 0.0
    title: str | None = None
    duration: float | None = None  # None: unknown yet, or a live stream
    #: What to open (``plugins.music.sources.Source``), checked when it was queued.
    source: Any = None

    @property
    def name(self) -> str:
        return self.title or self.query


class QueueFull(Exception):
    pass


@dataclass
class PlayQueue:
    max_size: int = 100
    loop: LoopMode = LoopMode.OFF
    current: Track | None = None
    upcoming: deque[Track] = field(default_factory=deque)

    def add(self, track: Track) -> int:
        """Append a track; its position in ``upcoming`` (1 = next). Raises QueueFull."""
        if len(self.upcoming) >= self.max_size:
            raise QueueFull(f"The queue is full ({self.max_size} tracks).")
        self.upcoming.append(track)
        return len(self.upcoming)

    def advance(self) -> Track | None:
        """The current track ended by itself: the next one, as the loop mode says."""
        done = self.current
        if done is not None and self.loop is LoopMode.ONE:
            return done
        if done is not None and self.loop is LoopMode.ALL:
            self.upcoming.append(done)
        self.current = self.upcoming.popleft() if self.upcoming else None
        return self.current

    def skip(self) -> Track | None:
        """Leave the current track (``loop all`` keeps it in the round)."""
        if self.current is not None and self.loop is LoopMode.ALL:
            self.upcoming.append(self.current)
        self.current = self.upcoming.popleft() if self.upcoming else None
        return self.current

    def drop_current(self) -> Track | None:
        """The current track failed: it leaves the queue whatever the loop mode."""
        self.current = self.upcoming.popleft() if self.upcoming else None
        return self.current

    def remove(self, position: int) -> Track:
        """Remove the ``position``-th upcoming track (1 = next)."""
        if not 1 <= position <= len(self.upcoming):
            raise IndexError(position)
        track = self.upcoming[position - 1]
        del self.upcoming[position - 1]
        return track

    def shuffle(self, rng: random.Random | None = None) -> None:
        items = list(self.upcoming)
        (rng or random).shuffle(items)
        self.upcoming = deque(items)

    def clear(self) -> int:
        """Drop everything upcoming (the current track plays on); how many were dropped."""
        n = len(self.upcoming)
        self.upcoming.clear()
        return n

    def __len__(self) -> int:
        return len(self.upcoming)
