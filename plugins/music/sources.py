"""From what a user typed after ``!play`` to something FFmpeg can open.

- a file: a path inside the configured music folder (``..`` and links that lead out of it
  are refused), or words that name one file in it (``!play moonlight sonata``);
- an HTTP(S) audio file or internet radio stream, fetched by the bot itself and fed to
  FFmpeg (``plugins.music.remote``; ``.pls`` and ``.m3u`` station playlists are read for
  their first stream);
- a page of a video site, through yt-dlp (an optional extra), which finds the audio stream.

Every URL is fetched under the bot's outbound policy (``bot.outbound``): addresses in
loopback, private and link-local networks are refused, when the connection is made and at
every redirect, unless ``[outbound] allow`` or ``plugins.music.allow_private_urls`` allows
them, so the bot cannot be used to probe the network it runs in.
"""

from __future__ import annotations

import importlib.util
import re
import socket
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from bot import outbound
from bot.outbound import OutboundError, OutboundPolicy
from plugins.music.remote import USER_AGENT, read_limited

#: File name endings the folder search considers (FFmpeg plays far more when named exactly).
AUDIO_SUFFIXES = frozenset(
    ".mp3 .ogg .oga .opus .flac .wav .m4a .aac .wma .webm .mka .mp4 .aiff .aif .mid".split()
)
#: Sites whose links are pages, not audio: these go to yt-dlp directly.
PAGE_HOSTS = (
    "youtube.com",
    "youtu.be",
    "soundcloud.com",
    "bandcamp.com",
    "vimeo.com",
    "twitch.tv",
    "dailymotion.com",
    "mixcloud.com",
)
MAX_PLAYLIST_BYTES = 64 * 1024
MAX_SEARCHED_FILES = 20_000
YTDLP_MISSING = (
    "Playing pages of video sites needs yt-dlp, which is not installed here. The bot's "
    "operator can add it with: pip install 'matrix-callbot[ytdlp]'. Direct links to audio "
    "files and radio streams work without it."
)


class SourceError(Exception):
    """Why something cannot be played, in words for the room."""


@dataclass(frozen=True)
class Source:
    kind: str  # "file", "url" or "page"
    location: str  # a path or URL for FFmpeg
    label: str  # what to call it until its own title is known
    #: FFmpeg options (protocol whitelist, headers from yt-dlp).
    options: dict[str, str] = field(default_factory=dict)
    title: str | None = None


@dataclass(frozen=True)
class SourcePolicy:
    music_dir: Path | None
    allow_urls: bool = True
    allow_private_urls: bool = False
    timeout_s: float = 10.0
    #: The bot's outbound policy; None: the process's (``bot.outbound.current()``).
    outbound: OutboundPolicy | None = None

    def network(self) -> OutboundPolicy:
        """The policy the music plugin fetches under: the bot's, plus private addresses
        when ``allow_private_urls`` is on."""
        policy = self.outbound or outbound.current()
        return policy.allowing_private() if self.allow_private_urls else policy


def ytdlp_available() -> bool:
    return importlib.util.find_spec("yt_dlp") is not None


def classify(query: str, policy: SourcePolicy) -> Source:
    """The kind of source ``query`` names, checked as far as possible without the network
    (blocking: it looks at the music folder). Raises SourceError with the reason."""
    query = query.strip()
    if not query:
        raise SourceError("Tell me what to play: a file of the music folder or a URL.")
    scheme = urlsplit(query).scheme.lower()
    if scheme in ("http", "https"):
        if not policy.allow_urls:
            raise SourceError("Playing URLs is turned off here; only the music folder plays.")
        host = (urlsplit(query).hostname or "").lower()
        if not host:
            raise SourceError(f"{query} is not a valid URL.")
        try:  # the form only (user info, a written address); names are looked up later
            policy.network().check_url(query)
        except OutboundError as e:
            raise SourceError(refused(e)) from None
        if any(host == h or host.endswith("." + h) for h in PAGE_HOSTS):
            if not ytdlp_available():
                raise SourceError(YTDLP_MISSING)
            return Source("page", query, query)
        return Source("url", query, query, _url_options())
    if re.match(r"^[a-z][a-z0-9+.-]*://", query, re.IGNORECASE):
        raise SourceError(f"I only play http:// and https:// URLs, not {scheme}://.")
    return _music_file(query, policy)


def _music_file(query: str, policy: SourcePolicy) -> Source:
    if policy.music_dir is None:
        raise SourceError(
            "No music folder is set up (plugins.music.music_dir), so I can only play URLs."
        )
    root = policy.music_dir.resolve()
    candidate = (root / query).resolve()  # an absolute query replaces root: checked below
    if not candidate.is_relative_to(root):
        raise SourceError("That path leads out of the music folder; I only play files in it.")
    if candidate.is_file():
        return Source("file", str(candidate), str(candidate.relative_to(root)), _file_options())
    found = search(root, query)
    if not found:
        raise SourceError(f"Nothing in the music folder matches {query!r}.")
    return Source("file", str(found), str(found.relative_to(root)), _file_options())


def search(root: Path, query: str) -> Path | None:
    """The first file (by path) under ``root`` whose path holds every word of ``query``."""
    words = [w for w in re.split(r"[\s/\\]+", query.lower()) if w]
    matches = []
    for n, path in enumerate(root.rglob("*")):
        if n >= MAX_SEARCHED_FILES:
            break
        if path.suffix.lower() not in AUDIO_SUFFIXES or not path.is_file():
            continue
        rel = str(path.relative_to(root)).lower()
        if all(w in rel for w in words) and path.resolve().is_relative_to(root):
            matches.append(path)
    return min(matches, key=lambda p: (len(p.parts), str(p))) if matches else None


def prepare(source: Source, policy: SourcePolicy) -> Source:
    """What FFmpeg should open (blocking, network: run it in a thread). Checks the address a
    URL leads to, reads station playlists, asks yt-dlp about pages."""
    if source.kind == "file":
        return source
    if source.kind == "page":
        return _from_ytdlp(source, policy)
    check_address(source.location, policy)
    path = urlsplit(source.location).path.lower()
    if path.endswith((".pls", ".m3u")):
        stream = _first_stream_of_playlist(source.location, policy)
        check_address(stream, policy)
        return Source("url", stream, source.label, source.options)
    return source


def check_address(url: str, policy: SourcePolicy) -> None:
    """Refuse, early and in words, URLs that lead into loopback, private or link-local
    networks (unless allowed). Only a first look: the connection checks again
    (``plugins.music.remote``), so a name that changes its address gains nothing."""
    network = policy.network()
    try:
        checked = network.check_url(url)
        if checked.trusted or network.allow_private:
            return
        try:
            infos = socket.getaddrinfo(checked.host, checked.port, proto=socket.IPPROTO_TCP)
        except (OSError, UnicodeError) as e:
            reason = getattr(e, "strerror", None) or "no such host"
            raise SourceError(f"{checked.display} could not be found ({reason}).") from None
        network.check_addresses(checked.host, [str(info[4][0]) for info in infos])
    except OutboundError as e:
        raise SourceError(refused(e)) from None


def refused(e: OutboundError) -> str:
    """An outbound refusal in words for the room, with the settings that change it."""
    text = str(e)
    if "private network" in text:
        text += " (outbound.allow, plugins.music.allow_private_urls)"
    return text


def _first_stream_of_playlist(url: str, policy: SourcePolicy) -> str:
    try:
        raw = read_limited(url, policy.network(), MAX_PLAYLIST_BYTES, policy.timeout_s)
    except OutboundError as e:
        raise SourceError(f"the playlist could not be fetched ({refused(e)})") from None
    text = raw.decode("utf-8", "replace")
    for line in text.splitlines():
        line = line.strip()
        value = line.split("=", 1)[1].strip() if re.match(r"(?i)file\d+=", line) else line
        if value.lower().startswith(("http://", "https://")):
            return value
    raise SourceError("the playlist names no http(s) stream")


def _from_ytdlp(source: Source, policy: SourcePolicy) -> Source:
    if not ytdlp_available():
        raise SourceError(YTDLP_MISSING)
    import yt_dlp  # optional extra

    # yt-dlp fetches the page itself: only pages of the known sites get here (classify),
    # and their address is checked first; the stream it finds is fetched by the bot.
    check_address(source.location, policy)

    options = {
        "format": "bestaudio/best",
        "quiet": True,
        "no_warnings": True,
        "noplaylist": True,
        "socket_timeout": policy.timeout_s,
    }
    try:
        with yt_dlp.YoutubeDL(options) as ydl:
            info = ydl.extract_info(source.location, download=False)
    except Exception as e:  # yt-dlp's DownloadError and friends: the site said no
        message = str(e).removeprefix("ERROR: ").strip() or type(e).__name__
        raise SourceError(f"the site refused: {message[:300]}") from None
    if not isinstance(info, dict) or not info.get("url"):
        raise SourceError("the site offered no audio stream for this page")
    stream = str(info["url"])
    check_address(stream, policy)
    opts = _url_options()
    headers = info.get("http_headers") or {}
    if headers:
        opts["headers"] = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return Source("url", stream, source.label, opts, title=info.get("title"))


def _url_options() -> dict[str, str]:
    return {
        # FFmpeg opens nothing itself: every open goes through the bot's own fetcher
        # (decoder.py's io_open), so no FFmpeg protocol is needed, and none is allowed, in
        # case some demuxer opened a URL past io_open.
        "protocol_whitelist": "none",
        "user_agent": USER_AGENT,
    }


def _file_options() -> dict[str, str]:
    return {"protocol_whitelist": "file"}
