"""The speech engine: the bundled model, offline, on worker threads, bounded."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import numpy as np
import pytest

from plugins.transcriber.engine import (
    BUNDLED,
    EngineBusy,
    EngineSettings,
    SpeechEngine,
    TranscriptionError,
    model_location,
    shared_engine,
)
from plugins.transcriber.samples import samples, word_error_rate

MODEL_SHA256 = "1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a"


@pytest.fixture(scope="module")
def engine() -> SpeechEngine:
    return shared_engine(EngineSettings())


def test_the_bundled_model_is_the_pinned_tiny_en() -> None:
    where, online = model_location(BUNDLED)
    assert not online
    digest = hashlib.sha256((Path(where) / "model.bin").read_bytes()).hexdigest()
    assert digest == MODEL_SHA256


def test_word_error_rate_on_the_samples_is_under_15_percent(engine: SpeechEngine) -> None:
    errors = words = 0
    for sample in samples().values():
        audio = sample.pcm(16_000).astype(np.float32) / 32768
        text = " ".join(r.text for r in engine.recognize(audio))
        n = len(sample.text.split())
        errors += round(word_error_rate(sample.text, text) * n)
        words += n
    assert errors / words < 0.15, f"WER {errors / words:.1%}"


def test_word_timings_fall_inside_the_speech(engine: SpeechEngine) -> None:
    sample = samples()["slt-1"]
    audio = np.concatenate(
        [np.zeros(16_000, np.float32), sample.pcm(16_000).astype(np.float32) / 32768]
    )
    (result,) = engine.recognize(audio, offset=100.0)
    assert [w.text.strip(".").lower() for w in result.words][:3] == ["the", "quick", "brown"]
    assert all(100.5 <= w.start <= w.end <= 101.2 + sample.seconds for w in result.words)
    assert result.words == tuple(sorted(result.words, key=lambda w: w.start))


def test_silence_and_noise_give_no_text(engine: SpeechEngine) -> None:
    rng = np.random.default_rng(1)
    assert engine.recognize(np.zeros(32_000, np.float32)) == []
    assert engine.recognize((rng.standard_normal(32_000) * 0.01).astype(np.float32)) == []


async def test_transcribing_runs_off_the_event_loop_and_refuses_past_the_queue() -> None:
    engine = SpeechEngine(EngineSettings(max_queue=2))
    await engine.start()
    audio = samples()["rms-1"].pcm(16_000).astype(np.float32) / 32768
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    tick = asyncio.create_task(ticker())
    jobs = [asyncio.create_task(engine.transcribe(audio)) for _ in range(3)]
    results = await asyncio.gather(*jobs, return_exceptions=True)
    tick.cancel()
    assert isinstance(results[2], EngineBusy)
    assert all("hear me" in r[0].text.lower() for r in results[:2])
    assert ticks > 10  # the loop kept running while the model worked
    assert (engine.refused, engine.waiting) == (1, 0)
    engine.close()


def test_a_missing_model_folder_is_a_clear_error() -> None:
    with pytest.raises(TranscriptionError, match="does not exist"):
        SpeechEngine(EngineSettings(model="/nonexistent/model")).load()


@pytest.mark.parametrize(
    "kwargs", [{"device": "tpu"}, {"workers": 0}, {"beam_size": 0}, {"max_queue": 0}]
)
def test_bad_settings_are_refused(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        EngineSettings(**kwargs)
