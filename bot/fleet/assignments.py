"""Which worker gets a call: the least loaded one, within each worker's ``rtc.max_calls``.

Pure functions over what the database says (the leader decides, and alone writes the
assignments), so they are tested without a server.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from bot.fleet.db import Assignment, Worker


@dataclass(frozen=True)
class Load:
    worker: Worker
    calls: int

    @property
    def share(self) -> float:
        return self.calls / self.worker.max_calls

    @property
    def full(self) -> bool:
        return self.calls >= self.worker.max_calls


def loads(workers: Iterable[Worker], assignments: Iterable[Assignment]) -> list[Load]:
    """Each live worker's calls: those assigned to it (joined or still joining)."""
    counts = Counter(a.worker for a in assignments)
    return [Load(w, counts[w.device_id]) for w in workers]


def choose(
    workers: Iterable[Worker], assignments: Iterable[Assignment], exclude: str | None = None
) -> Worker | None:
    """The worker with the smallest share of its limit (then the fewest calls, then the
    oldest: the list's order); None if every one is full."""
    free = [load for load in loads(workers, assignments) if not load.full]
    free = [load for load in free if load.worker.device_id != exclude]
    if not free:
        return None
    return min(enumerate(free), key=lambda i: (i[1].share, i[1].calls, i[0]))[1].worker


def orphaned(workers: Iterable[Worker], assignments: Iterable[Assignment]) -> list[Assignment]:
    """Assignments whose worker is no longer alive: their calls need another worker."""
    alive = {w.device_id for w in workers}
    return [a for a in assignments if a.worker not in alive]
