"""The other SFUs of a federated call: one subscribing connection per SFU that members publish on.

Element Call 0.26 knows only multi-SFU modes: every member publishes on its own homeserver's
SFU and subscribes to every distinct SFU the other members publish on (Element Call
``src/state/CallViewModel/remoteMembers/ConnectionManager.ts``; shared/docs/matrixrtc-2026.md).
The bot publishes on its own (``CallMedia.connection``); this module keeps the others: a
connection is made when the first member publishing on an SFU joins and closed when the last one
leaves, retried with backoff while it fails or after it drops, and the room is told once that
the bot cannot hear the members there. The transports are member input: each one's JWT service
goes through the outbound policy (``bot.rtc.focus.sfu_access`` with the member's homeserver),
and at most ``MAX_REMOTE_SFUS`` are connected.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from livekit import rtc

from bot.log import context
from bot.media.connection import KeyRing, MediaConnection
from bot.outbound import display_host, service_key
from bot.rtc.focus import SfuAccess
from bot.rtc.membership import CallMembership, transport_of

log = logging.getLogger(__name__)

#: a hostile member could name a new SFU per device: beyond this many, the rest wait
MAX_REMOTE_SFUS = 8
RETRY_FIRST_S = 1.0
RETRY_MAX_S = 30.0
#: how long leaving an SFU waits for a connection attempt under way
STOP_WAIT_S = 30.0


def transport_key(transport: Any) -> str | None:
    """One spelling of a LiveKit transport (its JWT service URL), for telling SFUs apart."""
    if not isinstance(transport, dict) or transport.get("type") != "livekit":
        return None
    url = transport.get("livekit_service_url")
    return service_key(url) if isinstance(url, str) else None


@dataclass(frozen=True)
class SfuUse:
    """An SFU that members publish on: its transport and who publishes there."""

    key: str
    transport: dict[str, Any]
    members: tuple[CallMembership, ...]

    @property
    def server_name(self) -> str:
        """The homeserver of the first member publishing there (whose JWT service it is)."""
        return self.members[0].user_id.split(":", 1)[1]

    @property
    def host(self) -> str:
        return display_host(str(self.transport.get("livekit_service_url", "")))


def sfus_in_use(
    members: Sequence[CallMembership], me: tuple[str, str], own_key: str | None
) -> dict[str, SfuUse]:
    """The SFUs that members other than ``me`` publish on, except ``own_key`` (ours), in the
    order of the member list (oldest first)."""
    found: dict[str, tuple[dict[str, Any], list[CallMembership]]] = {}
    for m in members:
        if m.device_key == me:
            continue
        transport = transport_of(m, members)
        key = transport_key(dict(transport) if transport is not None else None)
        if key is None or key == own_key or transport is None:
            continue
        found.setdefault(key, (dict(transport), []))[1].append(m)
    return {k: SfuUse(k, t, tuple(ms)) for k, (t, ms) in found.items()}


@dataclass
class RemoteSfu:
    """One subscribing connection and how it stands (for !status)."""

    use: SfuUse
    connection: MediaConnection
    task: asyncio.Task[None] | None = None
    connected: bool = False
    attempts: int = 0
    last_error: str | None = None
    told: bool = False
    closing: bool = field(default=False)
    #: a connection attempt is under way (it is let finish, then closed: a LiveKit connect
    #: cancelled halfway leaves the SDK's room behind)
    connecting: bool = False

    def line(self, names: Callable[[CallMembership], str]) -> str:
        who = ", ".join(names(m) for m in self.use.members)
        if self.connected:
            state = "connected"
        elif self.attempts:
            state = f"not connected ({self.attempts} attempts; last: {self.last_error}); retrying"
        else:
            state = "connecting"
        return f"  SFU {self.use.host} (members of another homeserver): {state}; {who}"


class RemoteSfus:
    def __init__(
        self,
        room_id: str,
        get_access: Callable[[SfuUse], Awaitable[SfuAccess]],
        on_new_room: Callable[[str, rtc.Room], None],
        on_connected: Callable[[str, rtc.Room], None],
        ring: KeyRing,
        notify: Callable[[str], None],
        describe_error: Callable[[Exception], str],
    ) -> None:
        self.room_id = room_id
        self._get_access = get_access
        self._on_new_room = on_new_room
        self._on_connected = on_connected
        self._ring = ring
        self._notify = notify
        self._describe = describe_error
        self.sfus: dict[str, RemoteSfu] = {}
        #: SFUs members publish on beyond MAX_REMOTE_SFUS (not connected)
        self.over_limit = 0
        self._stopped = False
        self._closing: set[asyncio.Task[None]] = set()
        self._ctx = context(room=room_id)

    def connections(self) -> Iterable[tuple[str, MediaConnection]]:
        return ((k, s.connection) for k, s in self.sfus.items())

    def update(self, uses: dict[str, SfuUse]) -> None:
        """Connect to SFUs that members now publish on; close those nobody publishes on."""
        if self._stopped:
            return
        for key in [k for k in self.sfus if k not in uses]:
            self._close(key)
        wanted = list(uses.values())
        self.over_limit = max(0, len(wanted) - MAX_REMOTE_SFUS)
        for use in wanted[:MAX_REMOTE_SFUS]:
            sfu = self.sfus.get(use.key)
            if sfu is not None:
                sfu.use = use
                continue
            if len(self.sfus) >= MAX_REMOTE_SFUS:
                break
            self._open(use)

    def _open(self, use: SfuUse) -> None:
        key = use.key

        async def access() -> SfuAccess:
            return await self._get_access(self.sfus[key].use)

        connection = MediaConnection(
            self.room_id, access, lambda room: self._on_new_room(key, room), self._ring
        )
        sfu = RemoteSfu(use, connection)
        self.sfus[key] = sfu
        log.info("members publish on another SFU (%s): connecting", use.host, extra=self._ctx)
        self._start(sfu)

    def _start(self, sfu: RemoteSfu) -> None:
        sfu.task = asyncio.create_task(self._connect(sfu), name=f"sfu-{sfu.use.host}")

    def dropped(self, key: str) -> None:
        """A connection went down for good (the SDK gave up resuming): connect again."""
        sfu = self.sfus.get(key)
        if sfu is None or sfu.closing or self._stopped:
            return
        if sfu.task is not None and not sfu.task.done():
            return
        sfu.connected = False
        log.warning("lost the SFU %s; reconnecting", sfu.use.host, extra=self._ctx)
        self._start(sfu)

    async def _connect(self, sfu: RemoteSfu) -> None:
        delay = RETRY_FIRST_S
        first = True
        while not (sfu.closing or self._stopped):
            sfu.connecting = True
            try:
                if first:
                    await sfu.connection.connect()
                else:
                    await sfu.connection.reconnect()
            except Exception as e:
                sfu.connecting = False
                first = False
                sfu.attempts += 1
                sfu.last_error = self._describe(e)
                log.warning(
                    "could not connect to the SFU %s (%s); again in %.0f s",
                    sfu.use.host,
                    sfu.last_error,
                    delay,
                    extra=self._ctx,
                )
                if not sfu.told:
                    sfu.told = True
                    self._notify(
                        f"I can't hear the members on {sfu.use.host} ({sfu.last_error}); "
                        "I keep trying."
                    )
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_S)
                continue
            sfu.connecting = False
            if sfu.closing or self._stopped:
                break
            sfu.connected = True
            if sfu.told:
                sfu.told = False
                self._notify(f"I can hear the members on {sfu.use.host} now.")
            sfu.attempts, sfu.last_error = 0, None
            self._on_connected(sfu.use.key, sfu.connection.room)
            return
        await sfu.connection.close()

    def _close(self, key: str) -> None:
        sfu = self.sfus.pop(key)
        sfu.closing = True
        log.info(
            "nobody publishes on the SFU %s any more: leaving it", sfu.use.host, extra=self._ctx
        )
        task = asyncio.create_task(self._finish(sfu))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def _finish(self, sfu: RemoteSfu) -> None:
        task = sfu.task
        if task is not None and not task.done():
            if not sfu.connecting:
                task.cancel()  # between attempts
            done, _ = await asyncio.wait({task}, timeout=STOP_WAIT_S)
            if not done:
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await sfu.connection.close()

    async def stop(self) -> None:
        self._stopped = True
        sfus = list(self.sfus.values())
        self.sfus.clear()
        for sfu in sfus:
            sfu.closing = True
        await asyncio.gather(
            *(self._finish(s) for s in sfus), *self._closing, return_exceptions=True
        )

    def lines(self, names: Callable[[CallMembership], str]) -> list[str]:
        out = [s.line(names) for s in self.sfus.values()]
        if self.over_limit:
            out.append(
                f"  {self.over_limit} more SFU(s) named by members: not connected "
                f"(at most {MAX_REMOTE_SFUS})"
            )
        return out
