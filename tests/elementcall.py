"""Element Call itself, for interop tests: its embedded build in headless Chromium, in a widget
host that answers it as Element Web does.

- ``tests/elementcall/host/`` is the host page: an iframe with Element Call
  (``@element-hq/element-call-embedded``, pinned in ``tests/elementcall/package-lock.json``)
  and matrix-widget-api's ``ClientWidgetApi`` with a ``WidgetDriver`` that forwards each call
  over a DevTools binding.
- The Matrix side is a :class:`tests.jspeer.JsPeer` (matrix-js-sdk with Rust crypto, a fresh
  cross-signed device) loaded with ``tests/elementcall/widget-host.mjs``, which does for the
  widget what Element Web's ``StopGapWidgetDriver`` does with its client: room, state, delayed
  and sticky events, OpenID, Olm-encrypted to-device messages both ways.
- :class:`ElementCallPage` relays between the two: binding calls from the page to the peer,
  the peer's replies and received events back into the page.

Chromium gets a fake microphone that plays a WAV the test writes (its fake-capture flags;
Chromium loops the file). ``CALLBOT_HEADFUL=1`` shows the window, to watch a run on a desktop.
npm packages: ``npm ci`` in ``tests/elementcall`` (``scripts/test.sh`` does it).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import urllib.parse
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.browser import PageServer
from tests.chromium import CALL_TIMEOUT, START_TIMEOUT, BrowserError, Cdp, Chromium
from tests.jspeer import JsPeer
from tests.synapse import Synapse

REPO = Path(__file__).resolve().parent.parent
EC_DIR = REPO / "tests" / "elementcall"
MODULES = EC_DIR / "node_modules"
ROOTS = {
    "/element-call/": MODULES / "@element-hq" / "element-call-embedded" / "dist",
    "/widget-api/": MODULES / "matrix-widget-api" / "dist",
    "/": EC_DIR / "host",
}
EXTENSION = EC_DIR / "widget-host.mjs"
BINDING = "callbotBackend"
WIDGET_ID = "callbot-test-element-call"

# Every frame's RTCPeerConnections, recorded as they are made (before any page script runs),
# so the host can read what Element Call's page decodes (host.js hear).
RECORD_PEER_CONNECTIONS = """
(() => {
  const Base = window.RTCPeerConnection;
  if (!Base || window.__callbotPcs) return;
  const pcs = (window.__callbotPcs = []);
  window.RTCPeerConnection = class extends Base {
    constructor(...args) { super(...args); pcs.push(this); }
  };
})();
"""


# Element Call's audio processing off (its developer settings: src/settings/settings.ts), so
# the microphone sends the test's WAV as it is: with it on, Chromium's noise suppression fades
# a steady tone out within seconds and gates the quiet parts of speech (measured on the sender's
# track: the words of a sample arrive with silence between their voiced parts).
ELEMENT_CALL_SETTINGS = {
    "noise-suppression": False,
    "echo-cancellation": False,
    "auto-gain-control": False,
}


def chromium_flags(microphone: Path) -> tuple[str, ...]:
    """A fake camera and a microphone that plays ``microphone`` (a WAV), no permission
    prompts, and a window size for the screenshots."""
    return (
        "--use-fake-device-for-media-stream",
        "--use-fake-ui-for-media-stream",
        f"--use-file-for-fake-audio-capture={microphone}",
        "--window-size=1280,800",
    )


@dataclass(frozen=True)
class Heard:
    """One remote audio track as Element Call's page decodes it: the loudest frequency, its
    dBFS, and the waveform's rms."""

    track: str
    freq: float
    db: float
    rms: float

    def is_tone(self, freq: float, tolerance: float = 15.0) -> bool:
        return self.rms > 0.02 and abs(self.freq - freq) < tolerance


# Element Call's URL parameters beyond the widget's own (its src/UrlParams.ts): per-participant
# keys and no lobby, as Element Web embeds it; "start_call_voice" starts with the camera off.
WIDGET_PARAMS = {
    "perParticipantE2EE": "true",
    "skipLobby": "true",
    "intent": "start_call_voice",
    "header": "none",
    "lang": "en",
    "theme": "dark",
}


class ElementCallPage:
    """The host page with Element Call in one Chromium, relaying to ``backend``."""

    def __init__(self, browser: Chromium, server: PageServer, backend: JsPeer) -> None:
        self.browser = browser
        self.server = server
        self.backend = backend
        self.session = ""
        self.log_path = browser.workdir / "page.log"
        self._log = open(self.log_path, "a", encoding="utf-8")  # closed in close()
        self._outbox: asyncio.Queue[str] = asyncio.Queue()
        self._tasks: set[asyncio.Task[None]] = set()
        self._workers: list[asyncio.Task[None]] = []

    @property
    def cdp(self) -> Cdp:
        assert self.browser.cdp is not None
        return self.browser.cdp

    def _on_event(self, method: str, params: dict[str, Any]) -> None:
        if method == "Runtime.bindingCalled" and params.get("name") == BINDING:
            task = asyncio.create_task(self._relay(params["payload"]))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        elif method == "Runtime.consoleAPICalled":
            text = " ".join(
                str(a.get("value", a.get("description", a.get("type")))) for a in params["args"]
            )
            self._write(f"[{params['type']}] {text}")
        elif method == "Runtime.exceptionThrown":
            details = params["exceptionDetails"]
            text = details.get("exception", {}).get("description", details.get("text"))
            self._write(f"[exception] {text}")

    def _write(self, line: str) -> None:
        self._log.write(line[:4000] + "\n")
        self._log.flush()

    async def _relay(self, payload: str) -> None:
        """One WidgetDriver call from the page, answered by the backend."""
        msg = json.loads(payload)
        try:
            reply = await self.backend.call("widget", op=msg["op"], args=msg["args"])
        except (RuntimeError, TimeoutError) as exc:
            reply = {"failure": {"message": f"the backend failed: {exc}"}}
        self._outbox.put_nowait(f"window.host.settle({int(msg['id'])}, {json.dumps(reply)})")

    async def _pump_events(self) -> None:
        """The backend's received events into the page, in the order they came."""
        seen = 0
        while True:
            await self.backend.wait_event(lambda e: True, timeout=3600, since=seen)
            events, seen = self.backend.events[seen:], len(self.backend.events)
            for event in events:
                if event.get("event") == "widget":
                    self._outbox.put_nowait(f"window.host.push({json.dumps(event)})")

    async def _send_outbox(self) -> None:
        """Replies and events into the page one at a time, so they arrive in order."""
        while True:
            expression = await self._outbox.get()
            result = await self.cdp.send(
                "Runtime.evaluate", {"expression": expression}, session=self.session
            )
            if "exceptionDetails" in result:
                self._write(f"[host] delivery failed: {result['exceptionDetails'].get('text')}")

    async def open(self, room_id: str, transports: list[dict[str, Any]]) -> ElementCallPage:
        """Loads the host page, which loads Element Call for ``room_id`` as the backend's
        user and device."""
        self.cdp.handlers.append(self._on_event)
        target = await self.cdp.send("Target.createTarget", {"url": "about:blank"})
        attached = await self.cdp.send(
            "Target.attachToTarget", {"targetId": target["targetId"], "flatten": True}
        )
        self.session = attached["sessionId"]
        for method, params in (
            ("Runtime.enable", {}),
            ("Page.enable", {}),
            ("Runtime.addBinding", {"name": BINDING}),
            ("Page.addScriptToEvaluateOnNewDocument", {"source": RECORD_PEER_CONNECTIONS}),
        ):
            await self.cdp.send(method, params, session=self.session)
        await self.backend.call("widget", op="watch", args={"room_id": room_id})
        self._workers = [
            asyncio.create_task(self._send_outbox()),
            asyncio.create_task(self._pump_events()),
        ]
        config = {
            "roomId": room_id,
            "userId": self.backend.user_id,
            "deviceId": self.backend.device_id,
            "baseUrl": self.backend.homeserver,
            "widgetId": WIDGET_ID,
            "transports": transports,
            "widgetParams": WIDGET_PARAMS,
            "settings": ELEMENT_CALL_SETTINGS,
        }
        url = self.server.url + "#" + urllib.parse.quote(json.dumps(config))
        await self.cdp.send("Page.navigate", {"url": url}, session=self.session)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + START_TIMEOUT
        while await self.evaluate("typeof window.host") != "object":
            if loop.time() > deadline:
                raise BrowserError(f"the host page did not load; its log:\n{self.log_tail()}")
            await asyncio.sleep(0.05)
        return self

    def log_tail(self, chars: int = 6000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def logged(self, text: str) -> bool:
        """Whether the page (Element Call included) logged a line holding ``text``."""
        self._log.flush()
        try:
            return text in self.log_path.read_text(errors="replace")
        except OSError:
            return False

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

    async def seen(self) -> dict[str, Any]:
        """What the host saw: ready, the capabilities asked for, from-widget action counts,
        failed driver calls."""
        return await self.evaluate("window.host.seen()")

    async def view(self) -> dict[str, Any]:
        """Element Call's page: its visible text and the names on its participant tiles."""
        return await self.evaluate("window.host.view()")

    async def hear(self) -> list[Heard]:
        """Each remote audio track as Element Call's page decodes it right now."""
        found = await self.evaluate("window.host.hear()")
        return [
            Heard(h["track"], h["freq"], float("-inf") if h["db"] is None else h["db"], h["rms"])
            for h in found
        ]

    async def screenshot(self, path: Path) -> Path:
        shot = await self.cdp.send(
            "Page.captureScreenshot", {"format": "png"}, session=self.session
        )
        path.write_bytes(base64.b64decode(shot["data"]))
        return path

    async def close(self) -> None:
        for task in (*self._workers, *self._tasks):
            task.cancel()
        await asyncio.gather(*self._workers, *self._tasks, return_exceptions=True)
        self._log.close()


def headless() -> bool:
    return os.environ.get("CALLBOT_HEADFUL", "") != "1"


@contextlib.asynccontextmanager
async def element_call(
    workdir: Path,
    alice: JsPeer,
    room_id: str,
    transports: list[dict[str, Any]],
    microphone: Path,
) -> AsyncIterator[ElementCallPage]:
    """Element Call for ``alice`` (a :func:`widget_backend`) in ``room_id``, in a fresh
    Chromium whose microphone plays ``microphone``; all of it gone afterwards."""
    server = await PageServer(ROOTS).start()
    browser = Chromium(workdir, chromium_flags(microphone), headless=headless())
    try:
        await browser.start()
        page = ElementCallPage(browser, server, alice)
        try:
            yield await page.open(room_id, transports)
        finally:
            await page.close()
    finally:
        await browser.stop()
        await server.stop()


@contextlib.asynccontextmanager
async def widget_backend(synapse: Synapse, workdir: Path, prefix: str) -> AsyncIterator[JsPeer]:
    """A matrix-js-sdk client on a fresh account that can answer Element Call's widget: a
    cross-signed device in "exclude insecure devices" mode, as a current Element user is."""
    account = synapse.register(prefix)
    env = {"JSPEER_EXTENSION": str(EXTENSION), "JSPEER_DEVICE_NAME": "Element Call (test)"}
    peer = await JsPeer(synapse.url, account, workdir / "backend", env=env).start()
    try:
        yield peer
    finally:
        await peer.stop()
