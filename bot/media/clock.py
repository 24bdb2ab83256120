"""Timestamps for a participant's audio: counted in samples, not taken from arrival.

The SDK hands a subscribed track's audio over as one continuous stream (its jitter buffer
conceals network loss, and fills silence while nobody speaks), but the frames reach Python
only when the event loop gets to them: a busy loop delivers 200 ms late and then in a burst.
Stamping each frame with its arrival time turned every such delay into a gap followed by an
overlap in whatever lines frames up by time (the recorder filled the gap with silence and cut
the burst). So a stream's first frame is stamped on arrival and every later one where the
previous one ended; only if that drifts from the arrival time by more than ``MAX_SKEW_S``
(the stream really stopped, or the loop was stuck that long) does it start again from the
arrival time.
"""

from __future__ import annotations

#: How far sample time and arrival time may drift apart before sample time is reset.
MAX_SKEW_S = 1.0


class StreamClock:
    def __init__(self, sample_rate: int, max_skew_s: float = MAX_SKEW_S) -> None:
        self.rate = sample_rate
        self.max_skew = max_skew_s
        self._next: float | None = None
        #: times sample time was reset to arrival time (after the first frame)
        self.resets = 0

    def start_of(self, samples: int, arrived: float) -> float:
        """When a frame of ``samples`` that arrived (fully) at ``arrived`` started."""
        duration = samples / self.rate
        by_arrival = arrived - duration
        if self._next is None or abs(self._next - by_arrival) > self.max_skew:
            if self._next is not None:
                self.resets += 1
            self._next = by_arrival
        start = self._next
        self._next = start + duration
        return start
