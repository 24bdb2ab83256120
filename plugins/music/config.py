"""``[plugins.music]``: the music player's options."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path


def _within(lo: float, hi: float) -> dict[str, Callable[[float], str | None]]:
    """Field metadata for the config loader: the value must lie in [lo, hi]."""

    def check(value: float) -> str | None:
        return None if lo <= value <= hi else f"must be between {lo:g} and {hi:g}"

    return {"check": check}


@dataclass(frozen=True)
class MusicConfig:
    #: The folder `!play <file>` plays from (paths that lead out of it are refused). Unset:
    #: only URLs play.
    music_dir: Path | None = None
    #: Volume a call starts at, in percent (0-200).
    volume: int = field(default=100, metadata=_within(0, 200))
    #: Bring every track to about the same loudness (BS.1770, K-weighted, 3 s window).
    normalize: bool = True
    #: The loudness tracks are brought to, LUFS (at volume 100).
    target_lufs: float = field(default=-20.0, metadata=_within(-40, -5))
    #: The most a quiet track is raised, dB.
    max_boost_db: float = field(default=12.0, metadata=_within(0, 30))
    #: Turn the music down while someone in the call speaks.
    duck: bool = True
    #: How far, dB (negative).
    duck_db: float = field(default=-12.0, metadata=_within(-60, 0))
    #: How fast the music goes down when someone starts speaking, and back up after they
    #: stop (the bot calls a speaker silent after 0.5 s of quiet), seconds.
    duck_attack_s: float = field(default=0.15, metadata=_within(0.0, 5.0))
    duck_release_s: float = field(default=0.8, metadata=_within(0.0, 10.0))
    #: Fade on skip, stop, pause, resume and seek, seconds.
    fade_s: float = field(default=0.2, metadata=_within(0.0, 2.0))
    #: Audio kept queued ahead of real time, ms: more survives longer hiccups of the bot's
    #: event loop, less makes pause, seek and volume act sooner.
    lead_ms: int = field(default=300, metadata=_within(200, 2000))
    #: Tracks the queue holds; `!play` beyond that is refused.
    max_queue: int = field(default=100, metadata=_within(1, 10_000))
    #: Play http(s) URLs (audio files, radio streams, and pages with yt-dlp installed).
    allow_urls: bool = True
    #: Also fetch from loopback, private and link-local addresses (off: the bot cannot be
    #: used to reach services on its own network).
    allow_private_urls: bool = False
    #: Connecting to and reading from a URL gives up after this long, seconds.
    network_timeout_s: float = field(default=10.0, metadata=_within(1, 120))
    #: Post "Now playing" when a track starts.
    announce: bool = True
