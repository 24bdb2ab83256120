"""The gain stages: loudness (BS.1770 reference values), normalization, ducking, fades, the
limiter."""

from __future__ import annotations

import numpy as np

from plugins.music.decoder import FRAME, RATE
from plugins.music.dsp import Chain, DspSettings, Normalizer, loudness
from tests.music_files import rms


def sine(freq: float, amplitude: float, frames: int = 1, start: int = 0) -> list[np.ndarray]:
    out = []
    for i in range(start, start + frames):
        t = np.arange(i * FRAME, (i + 1) * FRAME) / RATE
        out.append((amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32))
    return out


def test_loudness_matches_bs1770() -> None:
    # BS.1770: a full-scale 997 Hz sine reads -3.01 LUFS; K-weighting lifts 5 kHz by ~+4 dB
    # and cuts 30 Hz.
    (frame,) = sine(997, 1.0)
    assert abs(loudness(frame) - (-3.01)) < 0.2
    (quiet,) = sine(997, 0.1)
    assert abs(loudness(quiet) - (-23.01)) < 0.2
    assert 3.0 < loudness(sine(5000, 0.1)[0]) - loudness(quiet) < 5.0
    assert loudness(sine(30, 0.1)[0]) < loudness(quiet) - 1.0
    assert loudness(np.zeros(FRAME, np.float32)) == -120.0


def test_normalization_brings_loud_and_quiet_tracks_together() -> None:
    levels = []
    for amplitude in (0.05, 0.8):
        norm = Normalizer(target=-20.0)
        frames = sine(440, amplitude, frames=250)  # 5 s
        for frame in frames[:-1]:
            norm.update(frame)
        levels.append(loudness(frames[-1] * norm.update(frames[-1])))
    assert all(abs(level - (-20.0)) < 1.0 for level in levels), levels
    # A quiet passage does not pump the gain up (gated), and boost is limited.
    norm = Normalizer(target=-20.0, max_boost=12.0)
    for frame in sine(440, 0.05, frames=250) + sine(440, 0.001, frames=100):
        gain = norm.update(frame)
    assert 20 * np.log10(gain) <= 12.0


def test_ducking_fades_and_volume() -> None:
    settings = DspSettings(normalize=False, duck_db=-12.0, duck_attack_s=0.1, fade_s=0.2)
    chain = Chain(settings, volume=1.0)
    chain.new_track()
    frames = iter(sine(440, 0.5, frames=400))

    def level(n: int = 5) -> float:
        return rms(np.concatenate([chain.process(next(frames)) for _ in range(n)]))

    level(1)  # the first frame ramps up from silence
    full = level()
    chain.ducking(True)
    level(6)  # the 0.1 s attack
    assert abs(20 * np.log10(level() / full) - (-12.0)) < 0.5
    chain.ducking(False)
    level(45)  # the 0.8 s release
    assert abs(level() / full - 1) < 0.02
    chain.volume = 0.5
    level(1)
    assert abs(level() / full - 0.5) < 0.02
    chain.fade_out()
    level(10)
    assert chain.faded_out and level() == 0.0
    chain.fade_in()
    level(10)
    assert abs(level() / full - 0.5) < 0.02


def test_the_limiter_keeps_loud_music_from_wrapping() -> None:
    chain = Chain(DspSettings(normalize=False), volume=2.0)
    chain.new_track()
    out = np.concatenate([chain.process(f) for f in sine(440, 0.9, frames=50)])
    assert out.dtype == np.int16 and out.shape[1] == 1
    assert np.abs(out.astype(np.int32)).max() <= 32767
    tail = out[-4800:, 0]
    # Limited, not clipped: still a clean sine (the 3rd harmonic stays small).
    spectrum = np.abs(np.fft.rfft(tail * np.hanning(tail.size)))
    assert spectrum[round(1320 * tail.size / RATE)] < 0.01 * spectrum.max()
