"""Cutting one person's audio into utterances as it arrives, with the Silero VAD that
faster-whisper ships (``faster_whisper/assets/silero_vad_v6.onnx``).

faster-whisper's own ``get_speech_timestamps`` needs the whole audio; here the model's LSTM
state (``h``, ``c``) and the 64-sample context are carried from one call to the next, which
gives exactly the probabilities of the whole-file run (checked in tests/test_vad.py).

The VAD decides per 32 ms window, and where that grid falls on the speech depends on when the
person's stream began, which differs from call to call. Cut on the grid, the same sentence
reached Whisper with up to 32 ms more or less silence around it, and tiny.en's text changed
with that alone (the four demo sentences: 9% to 21% WER over eight grid offsets). So each
utterance's edges are set by its content instead: ``pad_ms`` before its first and after its
last sample louder than ``EDGE_LEVEL``; the same audio gives the same utterances, however it
is chunked and wherever the grid falls (tests/test_transcriber_vad.py).
"""

from __future__ import annotations

import functools
import threading
import time
from dataclasses import dataclass, field

import numpy as np

RATE = 16_000
WINDOW = 512  # samples per VAD decision (32 ms); the model is trained on this size
CONTEXT = 64
#: Samples louder than this (-41 dBFS) are the speech's edges. Background noise above it
#: makes the edges those of the VAD's windows again, no worse than without.
EDGE_LEVEL = 300 / 32768
#: Audio kept before the window where speech was detected, beyond the pad: the first sounds
#: of a word come before the VAD is sure (its threshold crossing lags the onset).
LOOKBACK_S = 0.35


@functools.cache
def _session() -> object:
    """The ONNX session, loaded once per process (``run`` is thread-safe)."""
    from faster_whisper.vad import get_vad_model

    return get_vad_model().session


class SpeechProbability:
    """Speech probability per 32 ms window of one continuous stream."""

    def __init__(self) -> None:
        self._h = np.zeros((1, 1, 128), dtype=np.float32)
        self._c = np.zeros((1, 1, 128), dtype=np.float32)
        self._context = np.zeros(CONTEXT, dtype=np.float32)

    def __call__(self, windows: np.ndarray) -> np.ndarray:
        """``windows``: float32 of shape (n, 512); one probability per window."""
        previous = np.concatenate([self._context[None, :], windows[:-1, -CONTEXT:]])
        batch = np.concatenate([previous, windows], axis=1)
        out, self._h, self._c = _session().run(  # type: ignore[attr-defined]
            None, {"input": batch, "h": self._h, "c": self._c}
        )
        self._context = windows[-1, -CONTEXT:].copy()
        return np.asarray(out, dtype=np.float32).reshape(-1)

    def reset(self) -> None:
        self.__init__()  # type: ignore[misc]


@dataclass(frozen=True)
class VadSettings:
    threshold: float = 0.5
    #: When speech ends: this long below ``threshold - 0.15``.
    min_silence_ms: int = 400
    #: Speech shorter than this is a cough or a click, not an utterance.
    min_speech_ms: int = 250
    #: Kept before and after the speech, so first and last sounds are not clipped.
    pad_ms: int = 150
    #: Longer utterances are cut, at the quietest moment of their last few seconds.
    max_utterance_s: float = 15.0

    def __post_init__(self) -> None:
        if not 0.1 <= self.threshold <= 0.9:
            raise ValueError("threshold must be between 0.1 and 0.9")
        if not 100 <= self.min_silence_ms <= 5000:
            raise ValueError("min_silence_ms must be between 100 and 5000")
        if not 2 <= self.max_utterance_s <= 30:
            raise ValueError("max_utterance_s must be between 2 and 30 (Whisper's window)")


@dataclass(frozen=True, eq=False)
class Utterance:
    """Speech of one person: float32 16 kHz mono ``audio`` from ``start`` to ``end`` seconds
    (the caller's clock). ``spoken_end`` is the monotonic time the last speech arrived."""

    audio: np.ndarray
    start: float
    end: float
    spoken_end: float


@dataclass
class _Speech:
    start_sample: int  # stream position of audio[0]
    lead: int  # samples of pad before the speech
    chunks: list[np.ndarray] = field(default_factory=list)
    probs: list[float] = field(default_factory=list)  # one per window after the pad
    silence: int = 0  # samples of silence at the end
    length: int = 0


class Segmenter:
    """Feed one person's audio as it comes; get each utterance once it has ended.

    Positions count samples of this person's stream; ``feed`` takes the stream time of the
    audio, and a jump in time (muted, lost, rejoined) ends the current utterance.
    """

    def __init__(self, settings: VadSettings | None = None) -> None:
        self.settings = s = settings or VadSettings()
        self._prob = SpeechProbability()
        self._pending = np.zeros(0, dtype=np.float32)
        self._tail = np.zeros(0, dtype=np.float32)  # the pad before speech starts
        self._speech: _Speech | None = None
        self._origin = 0.0  # stream time of position 0
        self._position = 0  # samples processed (whole windows)
        self._pad = RATE * s.pad_ms // 1000
        self._lead = self._pad + int(RATE * LOOKBACK_S)
        self._lock = threading.Lock()

    def feed(self, pcm: np.ndarray, timestamp: float) -> list[Utterance]:
        """``pcm``: int16 or float32 samples at 16 kHz, starting at ``timestamp`` seconds."""
        audio = _as_float(pcm)
        with self._lock:
            done: list[Utterance] = []
            expected = self._origin + (self._position + self._pending.size) / RATE
            if abs(timestamp - expected) > 0.1:  # a jump: what was said before has ended
                done += self._end_speech()
                self._prob.reset()
                self._pending = np.zeros(0, dtype=np.float32)
                self._tail = np.zeros(0, dtype=np.float32)
                self._origin, self._position = timestamp, 0
            self._pending = np.concatenate([self._pending, audio])
            whole = self._pending.size // WINDOW * WINDOW
            if whole:
                windows = self._pending[:whole].reshape(-1, WINDOW)
                self._pending = self._pending[whole:]
                for window, p in zip(windows, self._prob(windows), strict=True):
                    done += self._step(window, float(p))
            return done

    def flush(self) -> list[Utterance]:
        """The person stopped (left, muted, transcription stopped): what they were saying."""
        with self._lock:
            return self._end_speech()

    def _step(self, window: np.ndarray, p: float) -> list[Utterance]:
        s, speech = self.settings, self._speech
        self._position += WINDOW
        if speech is None:
            if p >= s.threshold:
                start = self._position - WINDOW - self._tail.size
                self._speech = _Speech(start, self._tail.size, [self._tail, window], [p])
                self._speech.length = self._tail.size + WINDOW
            else:
                self._tail = np.concatenate([self._tail, window])[-self._lead :]
            return []
        speech.chunks.append(window)
        speech.probs.append(p)
        speech.length += WINDOW
        speech.silence = speech.silence + WINDOW if p < s.threshold - 0.15 else 0
        if speech.silence >= RATE * s.min_silence_ms // 1000:
            return self._end_speech()
        if speech.length >= s.max_utterance_s * RATE:
            return self._cut(speech)
        return []

    def _end_speech(self) -> list[Utterance]:
        speech, self._speech = self._speech, None
        self._tail = np.zeros(0, dtype=np.float32)
        if speech is None:
            return []
        audio = np.concatenate(speech.chunks)
        voiced = audio.size - speech.lead - speech.silence
        if voiced < RATE * self.settings.min_speech_ms // 1000:
            return []
        return [self._utterance(audio, speech.start_sample, speech.silence)]

    def _cut(self, speech: _Speech) -> list[Utterance]:
        """Too long: end it at the quietest window of its last third, go on after it."""
        probs = np.asarray(speech.probs)
        last_third = probs.size * 2 // 3
        quietest = last_third + int(np.argmin(probs[last_third:]))
        audio = np.concatenate(speech.chunks)
        cut = audio.size - (probs.size - quietest - 1) * WINDOW
        done = self._utterance(audio[:cut], speech.start_sample, 0)
        rest = audio[cut:]
        self._speech = _Speech(
            speech.start_sample + cut, 0, [rest], speech.probs[quietest + 1 :], speech.silence
        )
        self._speech.length = rest.size
        return [done]

    def _utterance(self, audio: np.ndarray, start_sample: int, trailing: int) -> Utterance:
        """``audio`` (from ``start_sample``) cut to ``pad`` around its loud content; without
        any, to the VAD's edges: ``pad`` before the speech window and after the speech."""
        loud = np.flatnonzero(np.abs(audio) > EDGE_LEVEL)
        if loud.size:
            first, last = int(loud[0]), int(loud[-1])
            begin, end = max(0, first - self._pad), min(audio.size, last + 1 + self._pad)
        else:
            begin, end = 0, audio.size - max(0, trailing - self._pad)
        audio, start_sample = audio[begin:end], start_sample + begin
        start = self._origin + start_sample / RATE
        # The speech ended ``trailing`` samples ago: the silence that ended it (of which the
        # utterance keeps ``pad`` as its tail).
        spoken_end = time.monotonic() - trailing / RATE
        return Utterance(audio, start, start + audio.size / RATE, spoken_end)


def _as_float(pcm: np.ndarray) -> np.ndarray:
    flat = np.asarray(pcm).reshape(-1)
    if flat.dtype == np.int16:
        return flat.astype(np.float32) / 32768.0
    return flat.astype(np.float32, copy=False)
