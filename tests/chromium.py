"""Headless Chromium for tests, driven over the DevTools protocol (CDP).

:class:`Chromium` starts Debian's Chromium with a fresh profile in a process group of its own
and kills that group by the browser's process id; :class:`Cdp` is a minimal CDP client over
its websocket (flattened target sessions). No playwright: the test's own event loop speaks
the protocol, so there is no second process to keep in step and nothing is downloaded.

Chromium: ``CALLBOT_CHROMIUM`` if set, else Debian's ``/usr/lib/chromium/chromium`` (the
``/usr/bin/chromium`` wrapper does not exec, so its pid is not the browser's), else
``chromium`` on the PATH. ``scripts/test.sh`` installs Debian's.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import shutil
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import aiohttp

# As the issue asks, plus what a test needs: CDP on a free loopback port, audio without a
# user gesture, and real host addresses in ICE candidates (the dev SFU cannot resolve mDNS).
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--remote-debugging-port=0",
    "--autoplay-policy=no-user-gesture-required",
    "--disable-features=WebRtcHideLocalIpsWithMdns",
)
START_TIMEOUT = 30.0
CALL_TIMEOUT = 30.0


class BrowserError(RuntimeError):
    """The browser, or a script in the page, failed."""


def chromium_executable() -> Path:
    env = os.environ.get("CALLBOT_CHROMIUM")
    if env:
        return Path(env)
    debian = Path("/usr/lib/chromium/chromium")
    if debian.is_file():
        return debian
    found = shutil.which("chromium")
    if found:
        return Path(found)
    raise RuntimeError(
        "Chromium not found: scripts/test.sh installs Debian's chromium (apt-get install "
        "chromium, as root), or set CALLBOT_CHROMIUM to a Chromium binary"
    )


class Cdp:
    """Commands and events over one DevTools websocket (flattened target sessions)."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self._ws = ws
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.handlers: list[Callable[[str, dict[str, Any]], None]] = []
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            async for msg in self._ws:
                if msg.type != aiohttp.WSMsgType.TEXT:
                    continue
                data = json.loads(msg.data)
                if "id" in data:
                    fut = self._pending.pop(data["id"], None)
                    if fut is not None and not fut.done():
                        fut.set_result(data)
                else:
                    for handler in self.handlers:
                        handler(data.get("method", ""), data.get("params", {}))
        finally:
            closed = BrowserError("the DevTools connection closed")
            for fut in self._pending.values():
                if not fut.done():
                    fut.set_exception(closed)
            self._pending.clear()

    async def send(
        self,
        method: str,
        params: dict[str, Any] | None = None,
        session: str | None = None,
        timeout: float = CALL_TIMEOUT,
    ) -> dict[str, Any]:
        msg_id = next(self._ids)
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[msg_id] = fut
        msg: dict[str, Any] = {"id": msg_id, "method": method, "params": params or {}}
        if session is not None:
            msg["sessionId"] = session
        await self._ws.send_str(json.dumps(msg))
        try:
            reply = await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            self._pending.pop(msg_id, None)
            raise TimeoutError(f"DevTools {method} got no reply within {timeout} s") from None
        if "error" in reply:
            raise BrowserError(f"DevTools {method} failed: {reply['error']}")
        return reply.get("result", {})

    async def close(self) -> None:
        await self._ws.close()
        await asyncio.gather(self._reader, return_exceptions=True)


class Chromium:
    """One headless Chromium with a fresh profile under ``workdir``.

    It runs in a process group of its own (its renderers, GPU and utility processes with
    it), which :meth:`stop` kills by the browser's process id."""

    def __init__(
        self, workdir: Path, extra_flags: tuple[str, ...] = (), headless: bool = True
    ) -> None:
        self.workdir = workdir
        # headless=False shows the window (a person watching a test on a desktop)
        self.flags = tuple(f for f in CHROMIUM_FLAGS if headless or f != "--headless")
        self.flags += extra_flags
        self.profile = workdir / "profile"
        self.log_path = workdir / "chromium.log"
        self.pid: int | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._http: aiohttp.ClientSession | None = None
        self.cdp: Cdp | None = None
        self._killed = False

    async def start(self) -> Chromium:
        # setpriv (util-linux) execs Chromium with a parent-death signal: if the test process
        # itself is killed, the browser dies with it instead of lingering.
        setpriv = shutil.which("setpriv")
        prefix = [setpriv, "--pdeathsig", "KILL", "--"] if setpriv else []
        with self._log_file() as log:
            self._proc = await asyncio.create_subprocess_exec(
                *prefix,
                str(chromium_executable()),
                *self.flags,
                f"--user-data-dir={self.profile}",
                "about:blank",
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        self.pid = self._proc.pid
        try:
            endpoint = await self._devtools_endpoint()
            self._http = aiohttp.ClientSession()
            ws = await self._http.ws_connect(endpoint, max_msg_size=0)
            self.cdp = Cdp(ws)
        except BaseException:
            await self.stop()
            raise
        return self

    def _log_file(self) -> BinaryIO:
        """A fresh profile (it fails if a previous run left one) and the browser's log."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.profile.mkdir(mode=0o700)
        return open(self.log_path, "wb")

    async def _devtools_endpoint(self) -> str:
        """Chromium writes its DevTools port and path to the profile once it listens."""
        port_file = self.profile / "DevToolsActivePort"
        loop = asyncio.get_running_loop()
        deadline = loop.time() + START_TIMEOUT
        while True:
            assert self._proc is not None
            if self._proc.returncode is not None:
                raise BrowserError(
                    f"Chromium exited with {self._proc.returncode}; log tail:\n{self.log_tail()}"
                )
            with contextlib.suppress(OSError):
                lines = port_file.read_text().split()
                if len(lines) == 2:
                    return f"ws://127.0.0.1:{lines[0]}{lines[1]}"
            if loop.time() > deadline:
                raise BrowserError(f"Chromium did not open DevTools; log tail:\n{self.log_tail()}")
            await asyncio.sleep(0.05)

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    async def stop(self) -> None:
        """Close the DevTools connection and kill the browser's process group."""
        if self.cdp is not None:
            with contextlib.suppress(Exception):
                await self.cdp.close()
        if self._http is not None:
            await self._http.close()
        if self._proc is not None and not self._killed:
            # The group outlives the browser while any of its helpers lives: kill it once.
            self._killed = True
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._proc.pid, signal.SIGKILL)
            await self._proc.wait()
