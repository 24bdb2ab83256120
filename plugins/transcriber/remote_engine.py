"""Speech to text on a service: each utterance goes to an OpenAI-compatible
``POST {url}/v1/audio/transcriptions`` (speaches, faster-whisper-server, vLLM, OpenAI itself).

The same interface as the local ``SpeechEngine`` (``start``, ``transcribe``, ``waiting``,
``refused``), without faster-whisper: nothing here loads a model. What the service answers is
remote input: its size is bounded, its text cleaned like the local engine's (and of control
characters), its segments checked; an answer that does not fit is refused and the utterance
counted as missed, and nothing the service says reaches the room.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import math
import re
import wave
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlsplit

import aiohttp
import numpy as np

from bot.log import register_secret
from plugins.transcriber.engine import EngineBusy, Recognized

log = logging.getLogger(__name__)

RATE = 16_000
#: The most an answer may be: a 15 s utterance's verbose_json is a few kB.
MAX_RESPONSE_BYTES = 256 * 1024
#: Retry-After is honoured up to this; longer and the caption is worthless anyway.
MAX_RETRY_AFTER_S = 10.0
#: Control, zero-width and bidirectional-override characters: never in a caption.
_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2060-\u2069\ufeff]")


class ServiceFailed(EngineBusy):
    """The service did not transcribe the utterance (unreachable, failing after the retries,
    or an answer that was refused): like a full queue, the utterance is missed."""


class _Transient(Exception):
    """A failure worth another try: no connection, a timeout, 5xx, 429."""

    def __init__(self, why: str, retry_after: float | None = None) -> None:
        super().__init__(why)
        self.retry_after = retry_after


@dataclass(frozen=True)
class RemoteSettings:
    #: The service's root, e.g. "http://stt:8000" (a trailing "/v1" is accepted too).
    url: str
    #: The model name the service serves ("whisper-1", "Systran/faster-whisper-small.en").
    model: str
    #: Sent as "Authorization: Bearer ..."; registered as a secret, never logged.
    api_key: str | None = field(default=None, repr=False)
    language: str | None = "en"
    #: "verbose_json" gives segment times and no-speech scores (noise is dropped as locally);
    #: "json" is text only, for services that know nothing else.
    response_format: Literal["json", "verbose_json"] = "verbose_json"
    #: Requests at the service at once (all calls of this process together).
    max_in_flight: int = 4
    #: Utterances waiting or in flight at most; past this a new one is refused (EngineBusy).
    max_queue: int = 64
    #: One request, connection to answer.
    timeout_s: float = 20.0
    #: Tries after the first, on no connection, a timeout, 5xx or 429; backoff doubles.
    retries: int = 2
    backoff_s: float = 0.5

    def __post_init__(self) -> None:
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"url must be an http:// or https:// URL, got {self.url!r}")
        if parts.username or parts.password:
            raise ValueError("url must not hold a user name or password (use api_key)")
        if parts.query or parts.fragment:
            raise ValueError("url must be the service's root, without ?query or #fragment")
        if not self.model:
            raise ValueError("model must name the model the service serves")
        if not 1 <= self.max_in_flight <= 64:
            raise ValueError("max_in_flight must be between 1 and 64")
        if self.max_queue < self.max_in_flight:
            raise ValueError("max_queue must be at least max_in_flight")
        if not 0 < self.timeout_s <= 600:
            raise ValueError("timeout_s must be greater than 0 and at most 600")
        if not 0 <= self.retries <= 10:
            raise ValueError("retries must be between 0 and 10")
        if self.backoff_s < 0:
            raise ValueError("backoff_s must be 0 or more")

    @property
    def endpoint(self) -> str:
        root = self.url.rstrip("/")
        root = root.removesuffix("/v1")
        return f"{root}/v1/audio/transcriptions"


class RemoteEngine:
    def __init__(self, settings: RemoteSettings) -> None:
        self.settings = settings
        register_secret(settings.api_key)
        self._http: aiohttp.ClientSession | None = None
        self._slots: asyncio.Semaphore | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        #: waiting for a slot or in flight (the local engine counts both too)
        self.waiting = 0
        self.done = 0
        #: refused because too many were waiting
        self.refused = 0
        #: given up on: the service failed or its answer was refused
        self.failed = 0
        self.retried = 0

    async def start(self) -> None:
        """Nothing to load; the service is not asked (it may come back before speech does:
        until then utterances are counted as missed)."""
        self._bind()

    def _bind(self) -> tuple[aiohttp.ClientSession, asyncio.Semaphore]:
        loop = asyncio.get_running_loop()
        if self._http is None or self._slots is None or self._loop is not loop:
            # A session belongs to one event loop; a new loop (a restarted bot) gets its own.
            s = self.settings
            headers = {"Authorization": f"Bearer {s.api_key}"} if s.api_key else {}
            self._http = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=s.max_in_flight),
                timeout=aiohttp.ClientTimeout(total=s.timeout_s, connect=min(5.0, s.timeout_s)),
                headers=headers,
                trust_env=False,  # the operator's URL, not a proxy from the environment
            )
            self._slots = asyncio.Semaphore(s.max_in_flight)
            self._loop = loop
        return self._http, self._slots

    async def transcribe(self, audio: np.ndarray) -> list[Recognized]:
        """float32 16 kHz mono; what was said in it (nothing for noise). Raises EngineBusy
        (ServiceFailed) when it was not transcribed."""
        if self.waiting >= self.settings.max_queue:
            self.refused += 1
            raise EngineBusy(f"{self.waiting} utterances are already waiting")
        http, slots = self._bind()
        self.waiting += 1
        try:
            async with slots:
                return await self._with_retries(http, wav_bytes(audio), len(audio) / RATE)
        except ServiceFailed:
            self.failed += 1
            raise
        finally:
            self.waiting -= 1
            self.done += 1

    async def _with_retries(
        self, http: aiohttp.ClientSession, wav: bytes, seconds: float
    ) -> list[Recognized]:
        s = self.settings
        why = ""
        for attempt in range(s.retries + 1):
            try:
                return await self._post(http, wav, seconds)
            except _Transient as e:
                why = str(e)
                if attempt == s.retries:
                    break
                self.retried += 1
                delay = s.backoff_s * 2**attempt
                if e.retry_after is not None:
                    delay = max(delay, min(e.retry_after, MAX_RETRY_AFTER_S))
                log.info("speech service: %s; trying again in %.1f s", why, delay)
                await asyncio.sleep(delay)
        raise ServiceFailed(f"the speech service failed {s.retries + 1} times (last: {why})")

    async def _post(
        self, http: aiohttp.ClientSession, wav: bytes, seconds: float
    ) -> list[Recognized]:
        s = self.settings
        form = aiohttp.FormData()
        form.add_field("file", wav, filename="utterance.wav", content_type="audio/wav")
        form.add_field("model", s.model)
        form.add_field("response_format", s.response_format)
        form.add_field("temperature", "0")  # greedy, as the local engine decodes
        if s.language:
            form.add_field("language", s.language)
        try:
            # No redirects: a transcription endpoint has no reason to send the audio and the
            # key elsewhere.
            async with http.post(s.endpoint, data=form, allow_redirects=False) as resp:
                if resp.status >= 500 or resp.status == 429:
                    raise _Transient(f"HTTP {resp.status}", _retry_after(resp))
                if resp.status != 200:
                    body = await _read_bounded(resp, 2048, refuse=False)
                    # The operator's log only (the key is redacted there), never the room.
                    log.warning("speech service answered HTTP %d: %s", resp.status, _excerpt(body))
                    raise ServiceFailed(f"the speech service answered HTTP {resp.status}")
                body = await _read_bounded(resp, MAX_RESPONSE_BYTES)
        except TimeoutError:  # before ClientConnectionError: aiohttp's timeouts are both
            raise _Transient(f"no answer within {s.timeout_s:g} s") from None
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, OSError) as e:
            raise _Transient(f"no connection ({type(e).__name__})") from None
        return parse_answer(body, seconds)

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.close()
        self._http = self._slots = self._loop = None


def wav_bytes(audio: np.ndarray) -> bytes:
    """float32 16 kHz mono as a 16-bit WAV file."""
    pcm = (np.clip(audio, -1.0, 1.0) * 32767).astype("<i2")
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(pcm.tobytes())
    return out.getvalue()


def parse_answer(body: bytes, seconds: float) -> list[Recognized]:
    """The service's JSON (json or verbose_json) as the local engine's results, or
    ServiceFailed: times clamped into the utterance, noise dropped, text cleaned and no more
    of it than ``seconds`` of speech can hold."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise ServiceFailed("the speech service's answer is not JSON") from None
    if not isinstance(data, dict) or not isinstance(data.get("text"), str):
        raise ServiceFailed("the speech service's answer has no text")
    segments = data.get("segments")
    if segments is None:
        text = clean_text(data["text"])
        result = [Recognized(text, 0.0, seconds)] if text else []
    else:
        if not isinstance(segments, list):
            raise ServiceFailed("the speech service's answer has malformed segments")
        if len(segments) > 16 + 2 * seconds:
            raise ServiceFailed("the speech service's answer has too many segments")
        result = [r for seg in segments if (r := _segment(seg, seconds)) is not None]
    # About 15 characters a second is fast speech; four times that is not speech.
    if sum(len(r.text) for r in result) > 64 + 60 * seconds:
        raise ServiceFailed("the speech service's answer holds more text than the audio")
    return result


def _segment(seg: Any, seconds: float) -> Recognized | None:
    if not isinstance(seg, dict) or not isinstance(seg.get("text"), str):
        raise ServiceFailed("the speech service's answer has a malformed segment")
    text = clean_text(seg["text"])
    no_speech, logprob = _number(seg.get("no_speech_prob")), _number(seg.get("avg_logprob"))
    # The local engine's rule: Whisper says itself when its text is invented for noise.
    if not text or (
        no_speech is not None and logprob is not None and no_speech > 0.6 and logprob < -1.0
    ):
        return None
    start = min(max(_number(seg.get("start")) or 0.0, 0.0), seconds)
    end = _number(seg.get("end"))
    end = seconds if end is None else min(max(end, start), seconds)
    return Recognized(text, round(start, 3), round(end, 3))


def clean_text(text: str) -> str:
    """One line of printable text, stripped as the local engine strips it."""
    return " ".join(_UNPRINTABLE.sub(" ", text).split())


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _retry_after(resp: aiohttp.ClientResponse) -> float | None:
    try:
        return max(0.0, float(resp.headers.get("Retry-After", "")))
    except ValueError:
        return None


async def _read_bounded(resp: aiohttp.ClientResponse, limit: int, refuse: bool = True) -> bytes:
    """At most ``limit`` bytes of the body; past it ServiceFailed (or, for an error body
    that is only logged, the first ``limit`` bytes)."""
    if refuse and (resp.content_length or 0) > limit:
        raise ServiceFailed(f"the speech service's answer is over {limit} bytes")
    chunks, size = [], 0
    async for chunk in resp.content.iter_chunked(16 * 1024):
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            if refuse:
                raise ServiceFailed(f"the speech service's answer is over {limit} bytes")
            break
    return b"".join(chunks)[:limit]


def _excerpt(body: bytes) -> str:
    return clean_text(body.decode("utf-8", "replace"))[:300]


_shared: dict[RemoteSettings, RemoteEngine] = {}


def shared_remote_engine(settings: RemoteSettings) -> RemoteEngine:
    """The process's engine for these settings: one bound on requests for all calls."""
    engine = _shared.get(settings)
    if engine is None:
        engine = _shared[settings] = RemoteEngine(settings)
    return engine
