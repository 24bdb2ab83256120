"""HTTP(S) sources read by the bot itself, for FFmpeg (PyAV) as file-like objects.

FFmpeg's own HTTP client follows redirects wherever they lead and resolves the host again
after the bot checked it, so a URL that passes ``!play``'s check could still reach
``http://127.0.0.1``. Instead every open FFmpeg makes (the URL itself, and the segments and
playlists of an HLS stream) goes through ``open_remote``: a connection made only to an
address ``bot.outbound`` allowed, every redirect hop checked again, seeking by HTTP range
requests where the server offers them, and a live stream reconnected after a dropped
connection (as FFmpeg's ``reconnect`` options did).
"""

from __future__ import annotations

import http.client
import logging
import threading
import time
from collections.abc import Mapping
from urllib.parse import urljoin, urlsplit

from bot.outbound import CheckedUrl, OutboundError, OutboundPolicy, connect

log = logging.getLogger(__name__)

USER_AGENT = "matrix-callbot music player"
REDIRECTS = (301, 302, 303, 307, 308)
#: A dropped connection of a live stream is re-made this often before the track ends ...
RECONNECTS = 5
#: ... waiting at most this long between tries, seconds.
RECONNECT_DELAY_MAX = 4.0
#: Forward seeks shorter than this read on instead of making a new request.
SKIP_READ_LIMIT = 256 * 1024


class RemoteError(OutboundError):
    """The server answered, but not with the file (an HTTP status, in words)."""

    def __init__(self, message: str, host: str, status: int) -> None:
        super().__init__(message, host)
        self.status = status


class _Connection(http.client.HTTPConnection):
    """An HTTP connection over a socket the policy already connected (and TLS-wrapped)."""

    def __init__(self, checked: CheckedUrl, policy: OutboundPolicy, timeout: float) -> None:
        super().__init__(checked.host, checked.port, timeout=timeout)
        # http.client's own self.timeout may be None (no timeout); ours never is.
        self._checked, self._policy, self._timeout = checked, policy, timeout

    def connect(self) -> None:
        self.sock = connect(self._checked, self._policy, self._timeout)


class RemoteFile:
    """A URL's body as a read-only file (``read``, and ``seek``/``tell`` when the server
    serves ranges). Blocking: for FFmpeg's thread."""

    def __init__(
        self,
        url: str,
        policy: OutboundPolicy,
        *,
        headers: Mapping[str, str] | None = None,
        timeout: float = 10.0,
        stop: threading.Event | None = None,
    ) -> None:
        self.url, self.policy, self.timeout = url, policy, timeout
        self.headers = {"User-Agent": USER_AGENT, **(headers or {})}
        self._stop = stop or threading.Event()
        self._conn: _Connection | None = None
        self._resp: http.client.HTTPResponse | None = None
        self.pos = 0
        self.length: int | None = None
        self.ranges = False
        #: The response headers of the last request (icy-name: a station's name).
        self.response_headers: dict[str, str] = {}
        self._open(0)

    # ------------------------------------------------------------------ the file interface

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return self.ranges and self.length is not None

    def read(self, size: int = -1) -> bytes:
        reconnects = 0
        while not self._stop.is_set():
            if self._resp is None:
                self._reopen()
            assert self._resp is not None
            try:
                data = self._resp.read(size if size >= 0 else None)
            except (OSError, http.client.HTTPException):
                # A dropped connection: a live stream is made again, a file goes on from
                # where it was if the server serves ranges; anything else has ended badly.
                self._close_response()
                reconnects += 1
                if reconnects > RECONNECTS or not (self.seekable() or self._live):
                    raise OutboundError(
                        f"{self._display} dropped the connection", self._host
                    ) from None
                time.sleep(min(RECONNECT_DELAY_MAX, 0.5 * 2 ** (reconnects - 1)))
                continue
            self.pos += len(data)
            return data
        return b""

    def _reopen(self) -> None:
        if self.seekable():
            self._open(self.pos)
        else:  # a live stream starts again where it is now; our position goes on
            self._open(0, resume=True)

    def seek(self, offset: int, whence: int = 0) -> int:
        whence &= 3  # FFmpeg may add AVSEEK_FORCE
        if whence == 1:
            target = self.pos + offset
        elif whence == 2:
            if self.length is None:
                raise OSError("the size of this stream is unknown")
            target = self.length + offset
        else:
            target = offset
        if target == self.pos:
            return self.pos
        if not self.seekable():
            raise OSError("this stream cannot seek")
        if 0 < target - self.pos <= SKIP_READ_LIMIT and self._resp is not None:
            while self.pos < target:
                if not self.read(min(65536, target - self.pos)):
                    break
            return self.pos
        self._close_response()
        self._open(max(0, target))
        return self.pos

    def tell(self) -> int:
        return self.pos

    def close(self) -> None:
        self._close_response()

    def __enter__(self) -> RemoteFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ requests

    @property
    def _host(self) -> str:
        return urlsplit(self.url).hostname or "?"

    @property
    def _display(self) -> str:
        from bot.outbound import display_host

        return display_host(self.url)

    @property
    def _live(self) -> bool:
        """A stream without a length (a radio station): its end is a dropped connection."""
        return self.length is None and not self.ranges

    def _open(self, offset: int, resume: bool = False) -> None:
        """GET from ``offset`` on, following redirects, each hop checked by the policy."""
        url = self.url
        for _ in range(self.policy.max_redirects + 1):
            checked = self.policy.check_url(url)
            conn = _Connection(checked, self.policy, self.timeout)
            headers = dict(self.headers)
            if offset:
                headers["Range"] = f"bytes={offset}-"
            target = urlsplit(url)._replace(scheme="", netloc="", fragment="").geturl() or "/"
            try:
                conn.request("GET", target, headers=headers)
                resp = conn.getresponse()
            except OutboundError:
                conn.close()
                raise
            except (OSError, http.client.HTTPException):
                conn.close()
                raise OutboundError(
                    f"{checked.display} could not be reached", checked.host
                ) from None
            location = resp.getheader("Location")
            if resp.status in REDIRECTS and location:
                resp.close()
                conn.close()
                url = urljoin(url, location)
                continue
            if resp.status not in (200, 206):
                resp.close()
                conn.close()
                raise RemoteError(_status_words(resp.status), checked.host, resp.status)
            self._take(conn, resp, offset, resume)
            return
        raise OutboundError(f"{self._display} redirected too often", self._host)

    def _take(
        self, conn: _Connection, resp: http.client.HTTPResponse, offset: int, resume: bool
    ) -> None:
        self._conn, self._resp = conn, resp
        self.response_headers = {k.lower(): v for k, v in resp.getheaders()}
        length = resp.getheader("Content-Length")
        size = int(length) if length and length.isascii() and length.isdigit() else None
        if resp.status == 206:
            self.pos = offset
            total = (resp.getheader("Content-Range") or "").rpartition("/")[2]
            self.length = int(total) if total.isascii() and total.isdigit() else self.length
            self.ranges = True
        else:
            if offset and not resume:  # a server that ignores Range: FFmpeg must not
                self._close_response()  # take the start for the place it asked for
                raise OSError("the server does not seek")
            if not resume:
                self.pos = 0
            self.length = size
            self.ranges = (resp.getheader("Accept-Ranges") or "").lower() == "bytes"

    def _close_response(self) -> None:
        if self._resp is not None:
            self._resp.close()
        if self._conn is not None:
            self._conn.close()
        self._resp = self._conn = None


def _status_words(status: int) -> str:
    if status == 404:
        return "the server says it does not exist (HTTP 404)"
    if status in (401, 403):
        return "the server refused access"
    return f"the server answered HTTP {status}"


def read_limited(url: str, policy: OutboundPolicy, limit: int, timeout: float) -> bytes:
    """At most ``limit`` bytes of ``url`` (a station playlist)."""
    with RemoteFile(url, policy, timeout=timeout) as f:
        chunks, total = [], 0
        while total < limit:
            data = f.read(min(65536, limit - total))
            if not data:
                break
            chunks.append(data)
            total += len(data)
        return b"".join(chunks)
