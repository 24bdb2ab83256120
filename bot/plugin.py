"""The plugin API: everything a plugin author needs, and nothing from nio or livekit.

A plugin is a class. It declares the media it wants (``audio``/``video``, or neither), and
gets typed frames for the call it is in, with the Matrix identity of who is speaking::

    class Loudness(Plugin):
        name = "loudness"
        audio = AudioWants(sample_rate=16_000, channels=1, frame_ms=20)

        async def on_audio(self, frame: AudioFrame) -> None:
            rms = float(np.sqrt(np.mean(frame.pcm.astype(np.float32) ** 2)))
            self.levels[frame.participant.user_id] = rms

Every hook is async and runs on the event loop; use ``await call.run_blocking(fn, ...)`` for
CPU work. Each plugin has its own bounded queue: a plugin that falls behind loses its oldest
frames (``Overflow.DROP_OLDEST``, counted) or, if it asks for ``Overflow.LOSSLESS``, is told
exactly what it missed through ``on_gap``. A plugin that raises is logged and, after repeated
failures, disabled for the call; it never ends the call.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol, TypeVar

import numpy as np

# What a plugin author needs besides this module's own types comes from here too, so that a
# plugin imports from bot.plugin alone (docs/plugins.md).
from bot.commands.core import format_duration
from bot.commands.registry import Arg, CommandContext, command
from bot.errors import CommandError, PermissionDenied, UsageError
from bot.files import private_dir, private_file, write_private, write_private_json
from bot.log import register_secret

__all__ = [
    "Arg",
    "AudioFrame",
    "AudioOut",
    "AudioWants",
    "CallContext",
    "CommandContext",
    "CommandError",
    "ConnectionChange",
    "Gap",
    "Overflow",
    "Participant",
    "ParticipantChange",
    "ParticipantEvent",
    "PermissionDenied",
    "Plugin",
    "PluginStats",
    "UsageError",
    "VideoFrame",
    "VideoOut",
    "VideoWants",
    "command",
    "format_duration",
    "private_dir",
    "private_file",
    "register_secret",
    "write_private",
    "write_private_json",
]

T = TypeVar("T")


@dataclass(frozen=True)
class Participant:
    """Someone in the call: their Matrix identity and their LiveKit identity."""

    user_id: str
    device_id: str
    identity: str  # the LiveKit participant identity (rtc backend identity)
    display_name: str | None = None

    @property
    def name(self) -> str:
        return self.display_name or self.user_id


@dataclass(frozen=True, eq=False)
class AudioFrame:
    """``pcm``: int16 samples, shape (samples, channels), at the rate the plugin asked for.

    ``timestamp`` is seconds since the call started (the bot joined), on one clock for all
    participants, so frames from different people line up.
    """

    participant: Participant
    pcm: np.ndarray
    sample_rate: int
    timestamp: float

    @property
    def channels(self) -> int:
        return int(self.pcm.shape[1])

    @property
    def duration(self) -> float:
        return self.pcm.shape[0] / self.sample_rate


@dataclass(frozen=True, eq=False)
class VideoFrame:
    """``image``: height x width x channels uint8 (``format`` "rgb24" or "rgba"), or for
    "yuv420p" the planar bytes as one flat array."""

    participant: Participant
    image: np.ndarray
    format: str
    width: int
    height: int
    timestamp: float


@dataclass(frozen=True)
class Gap:
    """Frames a LOSSLESS plugin did not get (its queue was full): what, whose, how many."""

    kind: str  # "audio" or "video"
    participant: Participant
    frames: int
    start: float  # timestamp of the first missing frame
    end: float  # timestamp just after the last missing frame


class ParticipantChange(enum.Enum):
    JOINED = "joined"
    LEFT = "left"
    MUTED = "muted"
    UNMUTED = "unmuted"
    SPEAKING = "speaking"
    SILENT = "silent"


@dataclass(frozen=True)
class ParticipantEvent:
    change: ParticipantChange
    participant: Participant
    timestamp: float


@dataclass(frozen=True)
class ConnectionChange:
    """The call's media connection (the SFU) was lost, or is back: between the two, frames
    are missing, not silent. ``reason``: a few words for logs and files. ``sfu``: None for
    the bot's own SFU (everyone's media), else the host of another SFU of a federated call,
    and ``participants`` those who publish there (only their media is missing)."""

    connected: bool
    timestamp: float
    reason: str = ""
    sfu: str | None = None
    participants: tuple[Participant, ...] = ()


@dataclass(frozen=True)
class AudioWants:
    sample_rate: int = 48_000
    channels: int = 1
    frame_ms: int = 20

    def __post_init__(self) -> None:
        if self.sample_rate not in (8_000, 16_000, 24_000, 32_000, 44_100, 48_000):
            raise ValueError(f"unsupported sample rate {self.sample_rate}")
        if self.channels not in (1, 2):
            raise ValueError("channels must be 1 or 2")
        if self.frame_ms not in (10, 20, 40, 60, 100):
            raise ValueError("frame_ms must be 10, 20, 40, 60 or 100")

    @property
    def samples_per_frame(self) -> int:
        return self.sample_rate * self.frame_ms // 1000


@dataclass(frozen=True)
class VideoWants:
    fps: float = 15.0
    format: str = "rgb24"

    def __post_init__(self) -> None:
        if not 0 < self.fps <= 60:
            raise ValueError("fps must be in (0, 60]")
        if self.format not in ("rgb24", "rgba", "yuv420p"):
            raise ValueError(f"unsupported pixel format {self.format!r}")


class Overflow(enum.Enum):
    """What happens when a plugin's queue is full."""

    #: Live uses (captions, previews): drop the oldest frame, count it.
    DROP_OLDEST = "drop_oldest"
    #: Complete uses (recording): keep the queued frames, drop the new one, and deliver a
    #: ``Gap`` telling the plugin exactly what it missed.
    LOSSLESS = "lossless"


class AudioOut(Protocol):
    """An encrypted audio track of the bot's in the call."""

    sample_rate: int
    channels: int

    async def write(self, pcm: np.ndarray) -> None:
        """int16 samples, shape (samples, channels); waits while the outgoing queue is full."""
        ...


class VideoOut(Protocol):
    """An encrypted VP8 video track of the bot's in the call."""

    width: int
    height: int

    async def write(self, image: np.ndarray) -> None:
        """uint8 height x width x 4 (RGBA) or x 3 (RGB)."""
        ...


class CallContext(Protocol):
    """What a plugin can do in the call it is in."""

    room_id: str
    #: A folder private to the bot's user for this room's files (<data_dir>/calls/<room>).
    files_dir: Path
    #: This call's folder, ``<files_dir>/<UTC time the bot joined>``, where plugins put what
    #: they make of the call (recordings, transcripts). Not created until a plugin needs it.
    folder: Path
    #: True when the bot re-joined this call after a restart (``rtc.rejoin_after_restart``):
    #: ``folder`` is then the one from before, with what plugins wrote there before the crash.
    resumed: bool

    def participants(self) -> list[Participant]: ...

    def opted_out(self, user_id: str) -> bool: ...

    async def post(self, text: str, html: str | None = None, thread: str | None = None) -> str:
        """Send a notice to the room (in the thread rooted at ``thread``); its event ID."""
        ...

    async def edit(self, event_id: str, text: str, html: str | None = None) -> str: ...

    async def upload(self, path: Path, mimetype: str, body: str | None = None) -> str:
        """Post a file to the room (encrypted in encrypted rooms); its event ID."""
        ...

    async def publish_audio(
        self, name: str, sample_rate: int = 48_000, channels: int = 1
    ) -> AudioOut: ...

    async def publish_video(self, name: str, width: int, height: int) -> VideoOut: ...

    async def run_blocking(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` on one of this plugin's own worker threads (never the event loop);
        a function run there must not touch the plugin's loop-side state."""
        ...

    def spawn(self, coro: Coroutine[Any, Any, T], name: str | None = None) -> asyncio.Task[T]:
        """A background task of this plugin's: cancelled after ``on_call_end`` at the
        latest, its exception logged."""
        ...


class Plugin:
    """Subclass this. Override only the hooks you need; all are optional."""

    #: Unique name; also the config section ``[plugins.<name>]``.
    name: ClassVar[str] = ""
    #: What the plugin subscribes to; the router reads them from the instance, so __init__
    #: may set them from the plugin's config.
    audio: AudioWants | None = None
    video: VideoWants | None = None
    overflow: ClassVar[Overflow] = Overflow.DROP_OLDEST
    #: Frames the plugin's queue holds (audio and video together).
    queue_size: ClassVar[int] = 250
    #: A dataclass for the plugin's ``[plugins.<name>]`` table; if set, the bot validates the
    #: table into it and makes each instance as ``cls(config)`` (else ``cls()``).
    Config: ClassVar[type | None] = None
    #: Modules the plugin needs that an optional extra of matrix-callbot installs, e.g.
    #: ``{"faster_whisper": "transcriber"}``: enabling it without them names the extra.
    requires_extras: ClassVar[dict[str, str]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if not cls.name or not cls.name.replace("_", "").replace("-", "").isalnum():
            raise TypeError(f"{cls.__qualname__}: set name to a short word (letters, digits, -_)")
        if cls.queue_size < 1:
            raise TypeError(f"{cls.__qualname__}: queue_size must be at least 1")

    @classmethod
    async def on_bot_start(
        cls, data_dir: Path, post: Callable[[str, str], Awaitable[object]]
    ) -> None:
        """Once per start of the bot, before any call: e.g. tidy up after a crash.
        ``post(room_id, text)`` sends a notice to a room."""

    async def on_call_start(self, call: CallContext) -> None:
        """The bot is in a call; keep ``call`` to post or publish."""

    async def on_call_end(self) -> None:
        """The call is over (or the bot left): flush and close what you have."""

    async def on_audio(self, frame: AudioFrame) -> None:
        """One audio frame of one participant, as declared in ``audio``."""

    async def on_video(self, frame: VideoFrame) -> None:
        """One video frame of one participant, as declared in ``video``."""

    async def on_gap(self, gap: Gap) -> None:
        """Frames that were lost before reaching you (LOSSLESS plugins only)."""

    async def on_participant(self, event: ParticipantEvent) -> None:
        """Someone joined, left, muted, unmuted, started or stopped speaking."""

    async def on_connection(self, change: ConnectionChange) -> None:
        """The SFU connection was lost or is back (the bot reconnects by itself)."""

    def metrics(self) -> dict[str, float]:
        """Figures for Prometheus, read when scraped (keep it cheap): each key becomes the
        gauge ``callbot_<plugin>_<key>`` labelled with the room."""
        return {}

    def status(self) -> str | None:
        """A few words for ``!status`` on how the plugin keeps up (its own backlog, what it
        missed), or None. Called on the event loop: only read counters here."""
        return None


@dataclass
class PluginStats:
    """Counters the router keeps per plugin (shown in !status)."""

    delivered: int = 0
    dropped: int = 0
    errors: int = 0
    disabled: bool = False
    last_error: str | None = field(default=None, repr=False)
