"""Audio timestamps counted in samples (bot.media.clock)."""

from __future__ import annotations

import pytest

from bot.media.clock import StreamClock

FRAME = 960  # 20 ms at 48 kHz


def test_late_and_bursty_delivery_keeps_frames_back_to_back() -> None:
    clock = StreamClock(48_000)
    # Frames arrive every 20 ms, then the loop stalls 300 ms and four come at once.
    arrivals = [0.02, 0.04, 0.06, 0.36, 0.36, 0.361, 0.361, 0.38]
    starts = [clock.start_of(FRAME, t) for t in arrivals]
    assert starts == pytest.approx([0.0, 0.02, 0.04, 0.06, 0.08, 0.10, 0.12, 0.14])
    assert clock.resets == 0


def test_a_real_break_starts_again_from_arrival_time() -> None:
    clock = StreamClock(48_000, max_skew_s=1.0)
    assert clock.start_of(FRAME, 0.02) == pytest.approx(0.0)
    assert clock.start_of(FRAME, 5.02) == pytest.approx(5.0)  # 5 s with no frames
    assert clock.start_of(FRAME, 5.04) == pytest.approx(5.02)
    assert clock.resets == 1


def test_frames_faster_than_real_time_do_not_run_ahead_for_ever() -> None:
    clock = StreamClock(16_000, max_skew_s=0.5)
    starts = [clock.start_of(320, 1.0) for _ in range(40)]  # 0.8 s of audio at one instant
    assert starts[0] == pytest.approx(0.98)
    assert max(starts) <= 1.0 + 0.5  # reset once sample time got 0.5 s ahead
    assert clock.resets == 1
