"""The music's gain stages, per 20 ms frame of 48 kHz mono float32 (1.0 = full scale):
loudness normalization, volume, ducking under speech, fades, and a peak limiter.

Every gain change is ramped across the frame, so nothing clicks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from plugins.music.decoder import FRAME, FRAME_S, RATE

#: BS.1770 K-weighting filters at 48 kHz (a high shelf, then a high-pass): (b, a).
_K_STAGES = (
    (
        (1.53512485958697, -2.69169618940638, 1.19839281085285),
        (1.0, -1.69065929318241, 0.73248077421585),
    ),
    ((1.0, -2.0, 1.0), (1.0, -1.99004745483398, 0.99007225036621)),
)


def _k_weights(n: int) -> np.ndarray:
    """|H|^2 of the K-weighting at the rfft bins of an n-sample frame, with the factor 2 for
    the bins that stand for two (negative and positive) frequencies."""
    w = 2 * np.pi * np.fft.rfftfreq(n, 1 / RATE) / RATE
    z = np.exp(-1j * w)
    h = np.ones_like(z)
    for b, a in _K_STAGES:
        h *= (b[0] + b[1] * z + b[2] * z * z) / (a[0] + a[1] * z + a[2] * z * z)
    weights = np.abs(h) ** 2
    weights[1 : (n + 1) // 2] *= 2
    return weights / (n * n)


_WEIGHTS = _k_weights(FRAME)


def loudness(frame: np.ndarray) -> float:
    """BS.1770 loudness (LUFS, mono) of one frame; K-weighting applied in the frequency
    domain, which for 20 ms frames differs from the time-domain filters by well under 1 dB
    for music."""
    power = float(np.dot(_WEIGHTS, np.abs(np.fft.rfft(frame)) ** 2))
    return -0.691 + 10 * math.log10(power) if power > 1e-12 else -120.0


def db(value: float) -> float:
    return 10 ** (value / 20)


class Normalizer:
    """Brings each track to ``target`` LUFS: a running (3 s, like short-term loudness)
    average of the gated frames' power, turned into a gain within [-max_cut, +max_boost] dB.

    Gating as BS.1770: frames under -70 LUFS (silence) and 20 dB under the running level
    (quiet passages) do not count, so a soft intro is not pumped up."""

    def __init__(
        self, target: float = -20.0, max_boost: float = 12.0, max_cut: float = 24.0
    ) -> None:
        self.target, self.max_boost, self.max_cut = target, max_boost, max_cut
        self.reset()

    def reset(self) -> None:
        self._power = 0.0
        self._frames = 0
        self.gain_db = 0.0

    @property
    def level(self) -> float:
        return -0.691 + 10 * math.log10(self._power) if self._power > 0 else -120.0

    def update(self, frame: np.ndarray) -> float:
        """The gain (linear) for this frame."""
        lufs = loudness(frame)
        if lufs > -70 and (self._frames == 0 or lufs > self.level - 20):
            power = 10 ** ((lufs + 0.691) / 10)
            self._frames += 1
            # The first 3 s: the plain mean of what we heard; then a 3 s moving average.
            alpha = max(1 / self._frames, FRAME_S / 3.0)
            self._power += alpha * (power - self._power)
            want = min(self.max_boost, max(-self.max_cut, self.target - self.level))
            # After the first half second, move at most 6 dB/s: no audible pumping.
            step = 6.0 * FRAME_S if self._frames > 25 else 100.0
            self.gain_db += max(-step, min(step, want - self.gain_db))
        return db(self.gain_db)


class Ramp:
    """A gain that moves towards a target at a given speed (in dB per second, on a dB
    scale down to ``floor`` dB, where it counts as silence)."""

    def __init__(self, value_db: float = 0.0, floor: float = -60.0) -> None:
        self.value_db = value_db
        self.target_db = value_db
        self.rate = 0.0
        self.floor = floor

    def go(self, target_db: float, seconds: float) -> None:
        self.target_db = target_db
        distance = abs(target_db - self.value_db)
        self.rate = distance / seconds if seconds > 0 else math.inf

    def step(self) -> float:
        delta = self.target_db - self.value_db
        move = self.rate * FRAME_S
        self.value_db = (
            self.target_db if abs(delta) <= move else self.value_db + math.copysign(move, delta)
        )
        return self.gain

    @property
    def gain(self) -> float:
        return 0.0 if self.value_db <= self.floor else db(self.value_db)

    @property
    def settled(self) -> bool:
        return self.value_db == self.target_db


@dataclass
class DspSettings:
    normalize: bool = True
    target_lufs: float = -20.0
    max_boost_db: float = 12.0
    duck_db: float = -12.0
    duck_attack_s: float = 0.15
    duck_release_s: float = 0.8
    fade_s: float = 0.2


_RELEASE = db(3.0 * FRAME_S)


class Chain:
    """All gain stages of the player, one frame at a time."""

    def __init__(self, settings: DspSettings, volume: float = 1.0) -> None:
        self.settings = settings
        self.normalizer = Normalizer(settings.target_lufs, settings.max_boost_db)
        self.volume = volume  # 0..2, ramped per frame
        self.duck = Ramp()
        self.fade = Ramp(-60.0)  # silent until faded in
        self._last = 0.0  # the total gain at the end of the previous frame
        self._limit = 1.0
        self._ramp = np.linspace(0.0, 1.0, FRAME, endpoint=False, dtype=np.float32)

    def new_track(self, fade_in: bool = False) -> None:
        """A track starts (or continues after a seek): measure its loudness afresh."""
        self.normalizer.reset()
        if fade_in:
            self.fade = Ramp(-60.0)
            self.fade.go(0.0, self.settings.fade_s)
        else:
            self.fade = Ramp(0.0)
        self._last = 0.0 if fade_in else self._last

    def fade_out(self) -> None:
        self.fade.go(self.fade.floor, self.settings.fade_s)

    def fade_in(self) -> None:
        self.fade.go(0.0, self.settings.fade_s)

    @property
    def faded_out(self) -> bool:
        return self.fade.settled and self.fade.value_db <= self.fade.floor

    def ducking(self, on: bool) -> None:
        s = self.settings
        if on:
            self.duck.go(s.duck_db, s.duck_attack_s)
        else:
            self.duck.go(0.0, s.duck_release_s)

    def process(self, frame: np.ndarray) -> np.ndarray:
        """float32 samples in, int16 samples (FRAME x 1) out."""
        gain = self.normalizer.update(frame) if self.settings.normalize else 1.0
        gain *= self.volume * self.duck.step() * self.fade.step()
        # The limiter: keeps the peak under full scale at once, lets go slowly (3 dB/s) so
        # that it does not pump; it is part of the ramped gain, so it does not click.
        peak = float(np.max(np.abs(frame))) * gain
        self._limit = min(self._limit * _RELEASE, 1.0, 0.98 / peak if peak > 0 else 1.0)
        gain *= self._limit
        ramp = self._last + (gain - self._last) * self._ramp
        self._last = gain
        out = frame * ramp
        # np.clip: what a rising ramp within one frame could still let through.
        return (np.clip(out, -1.0, 1.0) * 32767).astype(np.int16).reshape(-1, 1)
