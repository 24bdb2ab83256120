"""livekit SDK clients for media tests: E2EE as Element Call sets it up, tones and video.

- :func:`connect` joins a room with a token from the dev SFU's key; with ``keys`` it turns on
  end-to-end encryption like Element Call (HKDF, key ring 256, ratchet window 10) and installs
  one key per participant identity.
- :class:`Tone` publishes a sine tone; :class:`AudioProbe` records a remote audio track and
  measures its dominant frequency and level.
- :class:`Pattern` publishes VP8 video; :class:`FrameCounter` counts decoded frames.

Run as a script (``python -m tests.lkclient URL TOKEN FREQ``) it joins, publishes a tone,
prints ``ready`` and waits to be killed: a participant that can vanish without leaving.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import math
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from livekit import rtc

from bot.devsfu.auth import TokenAuthority

RATE = 48000
# Audio moves in 50 ms frames: with many clients in one process, 10 ms frames (100 callbacks
# a second per stream) starve the event loop that also feeds the tones.
FRAME_MS = 50
FRAME = RATE * FRAME_MS // 1000
SILENCE_RMS = 30.0  # int16 rms below this is silence (decoder output of undecodable frames)
TONE_RMS = 1000.0  # a Tone (amplitude 0.3, rms about 7000) once it is fully there
TONE_TOLERANCE = 15.0  # Hz; FFT bins of a 0.3 s window are 3.3 Hz wide


def token(
    identity: str,
    room: str,
    authority: TokenAuthority | None = None,
    ttl: datetime.timedelta = datetime.timedelta(hours=1),
) -> str:
    return (authority or TokenAuthority()).mint(identity, room, ttl)


def element_call_e2ee() -> rtc.E2EEOptions:
    """Element Call's key provider settings (per-participant keys, HKDF, ring of 256)."""
    return rtc.E2EEOptions(
        key_provider_options=rtc.KeyProviderOptions(
            key_derivation_function=rtc.KeyDerivationFunction.HKDF,
            key_ring_size=256,
            ratchet_window_size=10,
        )
    )


async def wait_until(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


@dataclass
class Client:
    identity: str
    room: rtc.Room
    tracks: dict[tuple[str, int], rtc.RemoteTrack] = field(default_factory=dict)
    left: list[str] = field(default_factory=list)  # identities seen disconnecting
    data: list[tuple[str, bytes]] = field(default_factory=list)

    def _on_track(
        self, track: rtc.Track, pub: rtc.RemoteTrackPublication, who: rtc.RemoteParticipant
    ) -> None:
        self.tracks[(who.identity, track.kind)] = track

    def _on_left(self, who: rtc.RemoteParticipant) -> None:
        self.left.append(who.identity)
        for key in [k for k in self.tracks if k[0] == who.identity]:
            del self.tracks[key]

    def _on_data(self, packet: rtc.DataPacket) -> None:
        sender = packet.participant.identity if packet.participant else ""
        self.data.append((sender, packet.data))

    async def track(self, identity: str, kind: int, timeout: float = 15) -> rtc.RemoteTrack:
        await wait_until(lambda: (identity, kind) in self.tracks, timeout, f"{identity}'s track")
        return self.tracks[(identity, kind)]

    def set_key(self, identity: str, key: bytes, index: int = 0) -> None:
        self.room.e2ee_manager.key_provider.set_key(identity, key, index)

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.room.disconnect()


async def connect(
    url: str,
    identity: str,
    room: str,
    *,
    keys: dict[str, bytes] | None = None,
    auto_subscribe: bool = True,
    jwt: str | None = None,
) -> Client:
    """Join ``room`` as ``identity``; with ``keys`` (identity -> key, index 0), encrypted."""
    lk_room = rtc.Room()
    client = Client(identity, lk_room)
    lk_room.on("track_subscribed", client._on_track)
    lk_room.on("participant_disconnected", client._on_left)
    lk_room.on("data_received", client._on_data)
    options = rtc.RoomOptions(auto_subscribe=auto_subscribe)
    if keys is not None:
        # e2ee= as Element Call (data packets stay unencrypted); encryption= would also
        # encrypt them. The SDK warns that e2ee= is deprecated.
        options.e2ee = element_call_e2ee()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "options.e2ee is deprecated", DeprecationWarning)
        await lk_room.connect(url, jwt or token(identity, room), options)
    for who, key in (keys or {}).items():
        client.set_key(who, key)
    return client


class _Microphone:
    """A microphone track fed in real time by ``_frames``."""

    def __init__(self) -> None:
        self.source = rtc.AudioSource(RATE, 1, queue_size_ms=4 * FRAME_MS)
        self._task: asyncio.Task[None] | None = None

    async def publish(self, client: Client, name: str = "mic") -> rtc.LocalTrackPublication:
        track = rtc.LocalAudioTrack.create_audio_track(name, self.source)
        opts = rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE)
        pub = await client.room.local_participant.publish_track(track, opts)
        self._task = asyncio.create_task(self._feed())
        return pub

    async def _feed(self) -> None:
        while True:
            pcm = self._frame()
            await self.source.capture_frame(rtc.AudioFrame(pcm.tobytes(), RATE, 1, FRAME))

    def _frame(self) -> np.ndarray:
        raise NotImplementedError

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.source.aclose()


class Tone(_Microphone):
    """A sine tone published as a microphone track, fed in real time."""

    def __init__(self, freq: float, amplitude: float = 0.3) -> None:
        super().__init__()
        self.freq, self.amplitude = freq, amplitude
        self._phase = 0.0

    def _frame(self) -> np.ndarray:
        step = 2 * math.pi * self.freq / RATE
        pcm = (self.amplitude * 32767 * np.sin(self._phase + step * np.arange(FRAME))).astype(
            np.int16
        )
        self._phase = (self._phase + step * FRAME) % (2 * math.pi)
        return pcm


class Speech(_Microphone):
    """Recorded audio published as a microphone track: silence, except while ``say`` plays."""

    def __init__(self) -> None:
        super().__init__()
        self._queue: list[tuple[np.ndarray, asyncio.Event]] = []
        self._at = 0
        #: monotonic time each ``say`` finished playing
        self.ended: list[float] = []

    def say(self, pcm: np.ndarray) -> asyncio.Event:
        """Queue int16 mono 48 kHz samples; the event is set once they have been played."""
        done = asyncio.Event()
        self._queue.append((np.asarray(pcm, dtype=np.int16).reshape(-1), done))
        return done

    def _frame(self) -> np.ndarray:
        if not self._queue:
            return np.zeros(FRAME, dtype=np.int16)
        pcm, done = self._queue[0]
        frame = pcm[self._at : self._at + FRAME]
        self._at += FRAME
        if self._at >= pcm.size:
            self._queue.pop(0)
            self._at = 0
            self.ended.append(time.monotonic())
            done.set()
        return np.pad(frame, (0, FRAME - frame.size))


def dominant_frequency(samples: np.ndarray, rate: int = RATE) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    spectrum[0] = 0.0
    return float(np.argmax(spectrum) * rate / len(samples))


def rms(samples: np.ndarray) -> float:
    return float(np.sqrt(np.mean(samples.astype(np.float64) ** 2))) if len(samples) else 0.0


@dataclass(frozen=True)
class Heard:
    freq: float
    rms: float


class AudioProbe:
    """Records a remote audio track (48 kHz mono) in the background."""

    def __init__(self, track: rtc.Track) -> None:
        self.stream = rtc.AudioStream.from_track(
            track=track, sample_rate=RATE, num_channels=1, frame_size_ms=FRAME_MS
        )
        self.chunks: list[np.ndarray] = []
        self.last: Heard | None = None  # the latest loud window
        self._checked = 0
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        async for event in self.stream:
            self.chunks.append(np.frombuffer(event.frame.data, np.int16).copy())

    def _window(self, seconds: float, back: int = 0) -> np.ndarray:
        """``seconds`` of audio ending ``back`` windows of that length before the end."""
        n = math.ceil(seconds * 1000 / FRAME_MS)
        end = len(self.chunks) - n * back
        if end - n < 0:
            return np.zeros(0, np.int16)
        return np.concatenate(self.chunks[end - n : end])

    def _steady(self, window: float, near: float | None) -> bool:
        if len(self.chunks) == self._checked:
            return False  # nothing new since the last look
        self._checked = len(self.chunks)
        last, before = self._window(window), self._window(window, back=1)
        if min(rms(last), rms(before)) <= TONE_RMS:
            return False
        self.last = Heard(dominant_frequency(last), rms(last))
        if abs(self.last.freq - dominant_frequency(before)) >= 5:
            return False
        return near is None or abs(self.last.freq - near) < TONE_TOLERANCE

    async def tone(self, near: float | None = None, timeout: float = 10) -> Heard:
        """A steady tone: two 0.3 s windows in a row loud and at one frequency (``near`` that
        one, if given). A new stream can start with noise that is neither: decoder
        concealment, and with E2EE in livekit 1.2.1 sometimes half a second of loud DC-heavy
        noise at every subscriber of a publisher at once (seen under load; the SFU forwards
        the bytes unchanged, so it comes from the SDK). It passes by itself."""
        window = 0.3
        try:
            await wait_until(lambda: self._steady(window, near), timeout, "a steady tone")
        except TimeoutError as e:
            raise TimeoutError(f"no steady tone near {near} Hz; last heard {self.last}") from e
        assert self.last is not None
        return self.last

    async def loudest(self, seconds: float) -> float:
        """The highest rms of a frame over the next ``seconds`` of audio."""
        start, frames = len(self.chunks), math.ceil(seconds * 1000 / FRAME_MS)
        await wait_until(lambda: len(self.chunks) - start >= frames, seconds * 3, "audio")
        return max(rms(chunk) for chunk in self.chunks[start:])

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        await self.stream.aclose()


class Pattern:
    """Moving stripes published as a VP8 camera track, 15 frames a second."""

    def __init__(self, width: int = 320, height: int = 240) -> None:
        self.width, self.height = width, height
        self.source = rtc.VideoSource(width, height)
        self._task: asyncio.Task[None] | None = None

    async def publish(self, client: Client) -> rtc.LocalTrackPublication:
        track = rtc.LocalVideoTrack.create_video_track("cam", self.source)
        opts = rtc.TrackPublishOptions(
            source=rtc.TrackSource.SOURCE_CAMERA, video_codec=rtc.VideoCodec.VP8, simulcast=False
        )
        pub = await client.room.local_participant.publish_track(track, opts)
        self._task = asyncio.create_task(self._feed())
        return pub

    async def _feed(self) -> None:
        x = np.arange(self.width, dtype=np.int32)
        frame = np.zeros((self.height, self.width, 4), np.uint8)
        frame[..., 3] = 255
        n = 0
        while True:
            frame[..., 1] = ((x + 8 * n) % 64 * 4).astype(np.uint8)[None, :]
            video = rtc.VideoFrame(
                self.width, self.height, rtc.VideoBufferType.RGBA, frame.tobytes()
            )
            self.source.capture_frame(video)
            n += 1
            await asyncio.sleep(1 / 15)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


class FrameCounter:
    """Counts the decoded frames of a remote video track."""

    def __init__(self, track: rtc.Track) -> None:
        self.stream = rtc.VideoStream.from_track(track=track)
        self.frames = 0
        self.size = (0, 0)
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        async for event in self.stream:
            self.frames += 1
            self.size = (event.frame.width, event.frame.height)

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        await self.stream.aclose()


async def _main(url: str, jwt: str, freq: float) -> None:
    """A participant that publishes a tone until it is killed."""
    client = await connect(url, "", "", jwt=jwt)
    await Tone(freq).publish(client)
    print("ready", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(_main(sys.argv[1], sys.argv[2], float(sys.argv[3])))
