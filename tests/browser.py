"""A browser call participant for interop tests: livekit-client in headless Chromium.

``tests/browser/page/peer.js`` runs the livekit-client that Element Call pins
(``tests/browser/package.json``) with end-to-end encryption set up as Element Call sets it up;
this module serves that page to a :class:`tests.chromium.Chromium` and drives it over CDP:

- :class:`PageServer` serves the page and livekit-client's bundles on 127.0.0.1.
- :class:`BrowserPeer` is one page: ``connect``, ``set_key``, ``publish_tone``, ``hear``.
- :func:`forward_keys` hands every media key a matrix-js-sdk peer (``tests/jspeer.py``)
  announces to the page, as Element Call's ``MatrixKeyProvider`` does with its session's.

npm packages: ``npm ci`` in ``tests/browser`` (``scripts/test.sh`` does it).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from tests.chromium import CALL_TIMEOUT, START_TIMEOUT, BrowserError, Cdp, Chromium
from tests.jspeer import JsPeer

REPO = Path(__file__).resolve().parent.parent
BROWSER_DIR = REPO / "tests" / "browser"
PAGE_DIR = BROWSER_DIR / "page"
LIVEKIT_DIST = BROWSER_DIR / "node_modules" / "livekit-client" / "dist"
CONTENT_TYPES = {
    ".html": "text/html",
    ".js": "text/javascript",
    ".mjs": "text/javascript",
    ".map": "application/json",
    ".json": "application/json",
    ".css": "text/css",
    ".wasm": "application/wasm",  # WebAssembly.instantiateStreaming insists on it
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".woff2": "font/woff2",
}


class PageServer:
    """Static folders on 127.0.0.1, by path prefix: by default the page at ``/`` and
    livekit-client's dist at ``/livekit/``.

    A loopback origin is a secure context, so the page has WebCrypto."""

    def __init__(self, roots: dict[str, Path] | None = None) -> None:
        self.roots = roots or {"/livekit/": LIVEKIT_DIST, "/": PAGE_DIR}
        self.port = 0
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    async def _serve(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        for prefix, root in self.roots.items():
            if path.startswith(prefix):
                name = path[len(prefix) :] or "index.html"
                file = (root / name).resolve()
                if file.is_relative_to(root.resolve()) and file.is_file():
                    kind = CONTENT_TYPES.get(file.suffix, "application/octet-stream")
                    return web.Response(body=file.read_bytes(), content_type=kind)
                break
        raise web.HTTPNotFound()

    async def start(self) -> PageServer:
        for root in self.roots.values():
            if not root.is_dir():
                raise RuntimeError(
                    f"{root} is missing: run scripts/test.sh (or `npm ci` with the venv's npm "
                    "in the tests/ folder that holds it)"
                )
        app = web.Application()
        app.router.add_get("/{tail:.*}", self._serve)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        await web.SockSite(self._runner, sock).start()
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


@dataclass(frozen=True)
class Heard:
    """What the page hears of one participant: loudest frequency, its dBFS, waveform rms."""

    freq: float
    db: float
    rms: float

    def is_tone(self, freq: float, tolerance: float = 15.0) -> bool:
        return self.rms > 0.05 and abs(self.freq - freq) < tolerance


class BrowserPeer:
    """One page of ``tests/browser/page`` in a Chromium: a livekit-client participant."""

    def __init__(self, browser: Chromium, server: PageServer) -> None:
        self.browser = browser
        self.server = server
        self.session = ""
        self.log_path = browser.workdir / "page.log"
        self.keys: list[tuple[str, int]] = []  # (identity, index) handed to livekit-client
        self._log = open(self.log_path, "a", encoding="utf-8")  # closed in close()

    @property
    def cdp(self) -> Cdp:
        assert self.browser.cdp is not None
        return self.browser.cdp

    def _on_event(self, method: str, params: dict[str, Any]) -> None:
        if method == "Runtime.consoleAPICalled":
            text = " ".join(
                str(a.get("value", a.get("description", a.get("type")))) for a in params["args"]
            )
            self._log.write(f"[{params['type']}] {text}\n")
        elif method == "Runtime.exceptionThrown":
            details = params["exceptionDetails"]
            text = details.get("exception", {}).get("description", details.get("text"))
            self._log.write(f"[exception] {text}\n")
        else:
            return
        self._log.flush()

    async def open(self) -> BrowserPeer:
        self.cdp.handlers.append(self._on_event)
        target = await self.cdp.send("Target.createTarget", {"url": "about:blank"})
        attached = await self.cdp.send(
            "Target.attachToTarget", {"targetId": target["targetId"], "flatten": True}
        )
        self.session = attached["sessionId"]
        await self.cdp.send("Runtime.enable", session=self.session)
        await self.cdp.send("Page.navigate", {"url": self.server.url}, session=self.session)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + START_TIMEOUT
        while await self.evaluate("typeof window.callbot") != "object":
            if loop.time() > deadline:
                raise BrowserError(f"the page did not load; its log:\n{self.log_tail()}")
            await asyncio.sleep(0.05)
        return self

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    async def evaluate(self, expression: str, timeout: float = CALL_TIMEOUT) -> Any:
        result = await self.cdp.send(
            "Runtime.evaluate",
            {"expression": expression, "awaitPromise": True, "returnByValue": True},
            session=self.session,
            timeout=timeout,
        )
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            text = details.get("exception", {}).get("description", details.get("text"))
            raise BrowserError(f"{expression[:80]}: {text}")
        return result["result"].get("value")

    async def call(self, method: str, *args: Any, timeout: float = CALL_TIMEOUT) -> Any:
        """``window.callbot[method](...args)`` in the page, awaited; its JSON value."""
        arglist = ", ".join(json.dumps(a) for a in args)
        return await self.evaluate(f"window.callbot.{method}({arglist})", timeout)

    async def connect(self, url: str, token: str) -> dict[str, Any]:
        return await self.call("connect", url, token)

    async def set_key(self, identity: str, index: int, key: bytes) -> None:
        await self.call("setKey", identity, index, base64.b64encode(key).decode())
        self.keys.append((identity, index))

    async def publish_tone(self, freq: float, name: str = "tone") -> dict[str, Any]:
        return await self.call("publishTone", name, freq)

    async def hear(self, identity: str) -> Heard | None:
        value = await self.call("hear", identity)
        if value is None:
            return None
        db = value["db"]  # -Infinity (silence) comes back as null
        return Heard(value["freq"], float("-inf") if db is None else db, value["rms"])

    async def state(self) -> dict[str, Any]:
        return await self.call("state")

    async def tone(self, identity: str, freq: float, timeout: float = CALL_TIMEOUT) -> Heard:
        """Waits until ``identity``'s audio holds ``freq`` in two looks 0.2 s apart."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        last: Heard | None = None
        before = False
        while True:
            last = await self.hear(identity)
            now = last is not None and last.is_tone(freq)
            if now and before:
                return last
            before = now
            if loop.time() > deadline:
                raise TimeoutError(f"the browser heard no {freq} Hz from {identity}: {last}")
            await asyncio.sleep(0.2)

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.call("disconnect", timeout=5)
        self._log.close()


async def forward_keys(peer: JsPeer, page: BrowserPeer, room_id: str) -> None:
    """Hands every media key ``peer`` (the participant's Matrix side) announces for the room,
    its own and everyone else's, to the page; runs until cancelled."""
    seen = 0
    while True:
        await peer.wait_event(lambda e: True, timeout=3600, since=seen)
        events, seen = peer.events[seen:], len(peer.events)
        for event in events:
            if event.get("event") == "key" and event.get("room_id") == room_id:
                await page.set_key(
                    event["identity"], event["index"], base64.b64decode(event["key"])
                )


@contextlib.asynccontextmanager
async def browser_peer(workdir: Path) -> AsyncIterator[BrowserPeer]:
    """A page with livekit-client in a fresh headless Chromium; all of it gone afterwards."""
    server = await PageServer().start()
    browser = Chromium(workdir)
    try:
        await browser.start()
        page = BrowserPeer(browser, server)
        try:
            yield await page.open()
        finally:
            await page.close()
    finally:
        await browser.stop()
        await server.stop()
