"""Streaming voice activity detection: utterances cut where people pause."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from plugins.transcriber.samples import samples
from plugins.transcriber.vad import RATE, WINDOW, Segmenter, SpeechProbability, VadSettings


def speech(*parts: str | float) -> np.ndarray:
    """Samples and silences (seconds) one after another, float32 at 16 kHz."""
    out = []
    for part in parts:
        if isinstance(part, str):
            out.append(samples()[part].pcm(RATE).astype(np.float32) / 32768)
        else:
            out.append(np.zeros(round(part * RATE), dtype=np.float32))
    return np.concatenate(out)


def stream(segmenter: Segmenter, audio: np.ndarray, step: int = 320, t0: float = 0.0) -> list:
    done = []
    for i in range(0, audio.size, step):
        done += segmenter.feed(audio[i : i + step], t0 + i / RATE)
    return done + segmenter.flush()


def test_streaming_gives_the_probabilities_of_the_whole_file_run() -> None:
    from faster_whisper.vad import get_vad_model

    audio = speech(0.5, "slt-1", 0.5, "rms-1", 0.5)
    audio = audio[: audio.size // WINDOW * WINDOW]
    whole = get_vad_model()(audio).reshape(-1)
    prob = SpeechProbability()
    windows = audio.reshape(-1, WINDOW)
    streamed = np.concatenate([prob(windows[i : i + 3]) for i in range(0, len(windows), 3)])
    np.testing.assert_allclose(streamed, whole, atol=1e-5)
    assert (whole > 0.5).any() and (whole < 0.2).any()


def test_each_sentence_is_one_utterance_with_its_times() -> None:
    a, b = samples()["slt-1"].seconds, samples()["rms-1"].seconds
    utterances = stream(Segmenter(), speech(1.0, "slt-1", 1.0, "rms-1", 1.0), t0=10.0)
    assert len(utterances) == 2
    first, second = utterances
    # within the pad (150 ms) plus a VAD window of the true edges
    assert first.start == pytest.approx(11.0, abs=0.2)
    assert first.end == pytest.approx(11.0 + a, abs=0.25)
    assert second.start == pytest.approx(12.0 + a, abs=0.2)
    assert second.end == pytest.approx(12.0 + a + b, abs=0.25)
    assert first.audio.size == pytest.approx((first.end - first.start) * RATE, abs=1)


def test_the_same_audio_gives_the_same_utterances_whatever_its_chunks_and_grid() -> None:
    """In a call the VAD's 32 ms grid falls wherever the person's stream began; the utterances
    (the audio Whisper gets) must not depend on it, nor on how the audio arrives."""
    said = speech(0.5, "slt-1", 1.0, "slt-2", 1.0, "rms-4", 1.0)
    rng = np.random.default_rng(25)

    def cut(lead: int, chunks: list[int] | int) -> list:
        audio = np.concatenate([np.zeros(lead, np.float32), said])
        seg, done, at = Segmenter(), [], 0
        for n in chunks if isinstance(chunks, list) else itertools.repeat(chunks):
            if at >= audio.size:
                break
            done += seg.feed(audio[at : at + n], 5.0 + at / RATE)
            at += n
        done += seg.flush()
        assert len(done) == 3
        return [(round(u.start - lead / RATE, 6), u.audio) for u in done]

    reference = cut(0, 320)
    for lead, chunks in [
        (0, 2560),
        (0, list(rng.integers(1, 4000, size=2000))),
        (3 * 64, 320),  # the grid falls 12 ms later in the speech
        (5 * 64 + 7, 960),
        (WINDOW - 1, list(rng.integers(1, 700, size=5000))),
    ]:
        got = cut(lead, chunks)
        # the same start, to well within a sample (62.5 us)
        assert [start for start, _ in got] == pytest.approx([s for s, _ in reference], abs=1e-5)
        for (_, audio), (_, ref) in zip(got, reference, strict=True):
            assert np.array_equal(audio, ref)


def test_silence_and_a_click_are_not_utterances() -> None:
    click = np.zeros(RATE * 2, dtype=np.float32)
    click[RATE : RATE + 160] = 0.9
    assert stream(Segmenter(), click) == []


def test_long_speech_is_cut_at_a_pause_below_the_limit() -> None:
    # Two sentences with a 250 ms pause: too short to end an utterance (400 ms), but the
    # 4 s limit cuts there rather than in a word.
    audio = speech(0.5, "slt-2", 0.25, "slt-3", 0.5)
    utterances = stream(Segmenter(VadSettings(max_utterance_s=4.0)), audio)
    assert len(utterances) >= 2
    assert all(u.end - u.start <= 4.0 + 0.05 for u in utterances)
    pause_start = 0.5 + samples()["slt-2"].seconds
    assert any(abs(u.end - (pause_start + 0.125)) < 0.45 for u in utterances)


def test_a_jump_in_time_ends_the_utterance() -> None:
    seg = Segmenter()
    audio = speech("slt-1")
    half = audio.size // 2 // 320 * 320
    for i in range(0, half, 320):
        assert seg.feed(audio[i : i + 320], i / RATE) == []
    # muted for 5 s: the next audio starts later
    done = seg.feed(audio[half : half + 320], 5.0 + half / RATE)
    assert len(done) == 1
    assert done[0].end == pytest.approx(half / RATE, abs=0.05)


@pytest.mark.parametrize(
    "kwargs", [{"threshold": 0.05}, {"min_silence_ms": 10}, {"max_utterance_s": 60}]
)
def test_settings_out_of_range_are_refused(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        VadSettings(**kwargs)
