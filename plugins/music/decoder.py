"""Decoding one source in a worker thread: FFmpeg (PyAV) in, 20 ms frames of 48 kHz mono
float32 out, through a bounded queue the player takes from.

The thread runs ahead of the player by at most ``ahead_frames`` frames; when the queue is
full it waits ("block the producer": nothing is lost, and a paused player costs no CPU).
"""

from __future__ import annotations

import logging
import queue
import threading
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

from bot.outbound import OutboundError, Unreachable
from plugins.music.remote import RemoteFile
from plugins.music.sources import Source, SourceError, SourcePolicy, prepare, refused

log = logging.getLogger(__name__)

RATE = 48_000
FRAME = 960  # 20 ms
FRAME_S = FRAME / RATE
#: Consecutive undecodable packets after which a source counts as broken.
MAX_BAD_PACKETS = 50


@dataclass(frozen=True)
class Opened:
    """The first item from a decoder that opened its source."""

    title: str | None
    duration: float | None  # None: a live stream (or unknown length)
    seekable: bool


@dataclass(frozen=True)
class Failed:
    reason: str


END = None  # the last item of a source that played to its end


class Decoder:
    """Decodes ``source`` from ``start`` seconds on. Items, in order: ``Opened`` (or
    ``Failed``), frames (float32 arrays of ``FRAME`` samples), then ``END`` (or ``Failed``)."""

    def __init__(
        self, source: Source, policy: SourcePolicy, start: float = 0.0, ahead_frames: int = 25
    ) -> None:
        self.source, self.policy, self.start_at = source, policy, max(0.0, start)
        self.items: queue.Queue[Opened | Failed | np.ndarray | None] = queue.Queue(ahead_frames)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="music-decoder", daemon=True)
        self.bad_packets = 0

    def start(self) -> Decoder:
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop decoding (returns at once; the thread ends within a packet or a timeout)."""
        self._stop.set()
        while True:  # unblock a thread waiting to put
            try:
                self.items.get_nowait()
            except queue.Empty:
                break

    def get(self, timeout: float | None = None) -> Opened | Failed | np.ndarray | None:
        """The next item; blocks (use from a thread). Raises queue.Empty after ``timeout``."""
        return self.items.get(timeout=timeout)

    def get_nowait(self) -> Opened | Failed | np.ndarray | None:
        """The next item; raises queue.Empty if the decoder has not made it yet."""
        return self.items.get_nowait()

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    @property
    def ready_frames(self) -> int:
        return self.items.qsize()

    # ------------------------------------------------------------------ the thread

    def _put(self, item: Opened | Failed | np.ndarray | None) -> bool:
        while not self._stop.is_set():
            try:
                self.items.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        try:
            self._decode()
        except SourceError as e:
            self._put(Failed(str(e)))
        except Exception as e:
            if not self._stop.is_set():
                log.info("decoding %s failed: %r", self.source.label, e)
                self._put(Failed(describe(e)))

    def _decode(self) -> None:
        source = prepare(self.source, self.policy)
        if self._stop.is_set():
            return
        timeout = self.policy.timeout_s
        location = source.location
        if source.kind == "file" and not Path(location).is_file():
            raise SourceError("the file is gone from the music folder")
        opener = _Opener(source, self.policy, self._stop) if source.kind == "url" else None
        try:
            container = av.open(
                location, options=source.options, timeout=(timeout, timeout), io_open=opener
            )
        except Exception as e:
            raise SourceError(describe(e)) from None
        with container:
            if not container.streams.audio:
                raise SourceError("it has no audio")
            stream = container.streams.audio[0]
            duration = container.duration / 1e6 if container.duration else None
            if duration is not None and duration <= 0:
                duration = None
            title = (
                _title(container, stream)
                or source.title
                or (opener.station_name() if opener else None)
            )
            seekable = duration is not None
            if not self._put(Opened(title, duration, seekable)):
                return
            if self.start_at > 0 and seekable:
                container.seek(int(self.start_at * 1e6), any_frame=False)
            self._frames(container, stream)
        self._put(END)

    def _frames(self, container: av.container.InputContainer, stream: av.AudioStream) -> None:
        resampler = av.AudioResampler(format="flt", layout="mono", rate=RATE)
        # float32 samples (the resampler's "flt"), whatever dtype av's stubs allow for
        pending: np.ndarray = np.zeros(0, np.float32)
        skip_until = self.start_at  # after a seek, decoding starts at the keyframe before
        bad = 0
        for packet in container.demux(stream):
            if self._stop.is_set():
                return
            try:
                decoded = packet.decode()
                bad = 0
            except av.error.InvalidDataError:
                bad += 1
                self.bad_packets += 1
                if bad >= MAX_BAD_PACKETS:
                    raise SourceError("it is damaged (too many undecodable packets)") from None
                continue
            for frame in decoded:
                start = frame.time
                for out in resampler.resample(frame):
                    samples = out.to_ndarray().reshape(-1)
                    if skip_until and start is not None:
                        drop = round((skip_until - start) * RATE)
                        if drop >= samples.size:
                            start += samples.size / RATE
                            continue
                        samples = samples[max(0, drop) :]
                        skip_until = 0.0
                    pending = np.concatenate((pending, samples)) if pending.size else samples
                    while pending.size >= FRAME:
                        if not self._put(np.ascontiguousarray(pending[:FRAME])):
                            return
                        pending = pending[FRAME:]
        for out in resampler.resample(None):
            pending = np.concatenate((pending, out.to_ndarray().reshape(-1)))
        while pending.size > 0:
            frame_pcm = np.zeros(FRAME, np.float32)
            take = pending[:FRAME]
            frame_pcm[: take.size] = take
            if not self._put(frame_pcm):
                return
            pending = pending[FRAME:]


class _Opener:
    """FFmpeg's ``io_open`` for a URL source: the URL itself and whatever it leads FFmpeg to
    open (an HLS stream's playlists and segments) are fetched by the bot, under its
    outbound policy; FFmpeg makes no connection of its own."""

    def __init__(self, source: Source, policy: SourcePolicy, stop: threading.Event) -> None:
        self.policy, self.stop, self.timeout = policy.network(), stop, policy.timeout_s
        self.headers = _headers(source.options.get("headers", ""))
        if agent := source.options.get("user_agent"):
            self.headers.setdefault("User-Agent", agent)
        self.first: RemoteFile | None = None

    def __call__(self, url: str, flags: int, options: dict) -> RemoteFile:
        if flags & 2:  # AVIO_FLAG_WRITE
            raise OSError("writing is not allowed")
        f = RemoteFile(url, self.policy, headers=self.headers, timeout=self.timeout, stop=self.stop)
        self.first = self.first or f
        return f

    def station_name(self) -> str | None:
        name = self.first.response_headers.get("icy-name") if self.first else None
        return name.strip()[:200] or None if name else None


def _headers(text: str) -> dict[str, str]:
    """FFmpeg's ``headers`` option ("Name: value\r\n" lines, from yt-dlp) as a dict."""
    out = {}
    for line in text.split("\r\n"):
        name, sep, value = line.partition(":")
        if sep and name.strip():
            out[name.strip()] = value.strip()
    return {k: v for k, v in out.items() if v}


def _title(container: av.container.InputContainer, stream: av.AudioStream) -> str | None:
    tags = {k.lower(): v for k, v in {**stream.metadata, **container.metadata}.items()}
    title = tags.get("title") or tags.get("icy-name")
    artist = tags.get("artist")
    if title and artist:
        return f"{artist} - {title}"
    return title or None


def describe(e: BaseException) -> str:
    """FFmpeg's and the network's errors in words for the room."""
    # Never the exception's own text: FFmpeg's names the file, i.e. a path on the server.
    # The outbound policy's names the host only.
    if isinstance(e, Unreachable):
        reasons = {"refused": " (connection refused)", "timed out": " (timed out)"}
        return "it could not be reached" + reasons.get(e.reason, "")
    if isinstance(e, OutboundError):
        return refused(e)
    if isinstance(e, av.error.InvalidDataError):
        return "it is not audio I can play (FFmpeg: invalid data)"
    if isinstance(e, ConnectionRefusedError):
        return "it could not be reached (connection refused)"
    if isinstance(e, av.error.HTTPNotFoundError):
        return "the server says it does not exist (HTTP 404)"
    if isinstance(e, av.error.HTTPForbiddenError | av.error.HTTPUnauthorizedError):
        return "the server refused access"
    if isinstance(e, EOFError):
        return "it ends before any audio (damaged or empty)"
    if isinstance(e, TimeoutError | av.error.ExitError):
        return "it could not be reached (timed out)"
    if isinstance(e, OSError):
        reason = getattr(e, "strerror", None) or type(e).__name__
        return f"it could not be opened ({reason})"
    return f"it could not be played ({getattr(e, 'strerror', None) or type(e).__name__})"
