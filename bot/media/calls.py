"""Media for every call the bot joins: a connection, a router and fresh plugin instances per
call, started when the bot joins and stopped when it leaves."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar, cast

from bot.consent import OptOuts
from bot.matrix.client import MatrixClient
from bot.media.active_call import ActiveCall
from bot.media.engine import CallMedia
from bot.media.outputs import AudioOutput, VideoOutput
from bot.media.router import FrameRouter, PluginRunner
from bot.media.worker import PluginWorker
from bot.plugin import Participant, Plugin
from bot.rtc.focus import SfuAccess
from bot.rtc.manager import MatrixRTCSessionManager
from bot.rtc.resume import FOLDER_TIME, CallFolder
from bot.rtc.session import JoinStateChanged, MatrixRTCSession

log = logging.getLogger(__name__)

T = TypeVar("T")
PluginFactory = Callable[[], Plugin]


class Call:
    """What a plugin gets in ``on_call_start``: the call it is in (``bot.plugin.CallContext``)."""

    def __init__(
        self,
        matrix: MatrixClient,
        session: MatrixRTCSession,
        media: CallMedia,
        optouts: OptOuts,
        files_dir: Path,
        folder: CallFolder | None = None,
        worker: PluginWorker | None = None,
    ) -> None:
        self._matrix = matrix
        self._worker = worker or PluginWorker("call")
        self._optouts = optouts
        self.files_dir = files_dir
        folder = folder or CallFolder(time.strftime(FOLDER_TIME, time.gmtime()))
        self.folder = files_dir / folder.name
        self.resumed = folder.resumed
        self._session = session
        self._media = media
        self.room_id = session.room_id

    def participants(self) -> list[Participant]:
        room = self._matrix.nio.rooms.get(self.room_id)
        result = []
        for m in self._session.memberships:
            name = room.user_name(m.user_id) if room is not None else None
            result.append(Participant(m.user_id, m.device_id, m.rtc_backend_identity, name))
        return result

    def opted_out(self, user_id: str) -> bool:
        return self._optouts.opted_out(self.room_id, user_id)

    async def post(self, text: str, html: str | None = None, thread: str | None = None) -> str:
        from bot.matrix.messages import in_reply, notice

        content = notice(text, html)
        if thread is not None:
            content = in_reply(content, thread, thread, "thread")
        return await self._matrix.send(self.room_id, content)

    async def edit(self, event_id: str, text: str, html: str | None = None) -> str:
        from bot.matrix.messages import edit, notice

        return await self._matrix.send(self.room_id, edit(event_id, notice(text, html)))

    async def upload(self, path: Path, mimetype: str, body: str | None = None) -> str:
        return await self._matrix.send_file(self.room_id, path, mimetype, body)

    async def publish_video(self, name: str, width: int, height: int) -> VideoOutput:
        return await self._media.publish_video(name, width, height)

    async def publish_audio(
        self, name: str, sample_rate: int = 48_000, channels: int = 1
    ) -> AudioOutput:
        return await self._media.publish_audio(name, sample_rate, channels)

    async def run_blocking(self, fn: Callable[..., T], *args: Any) -> T:
        return await self._worker.run_blocking(fn, *args)

    def spawn(self, coro: Coroutine[Any, Any, T], name: str | None = None) -> asyncio.Task[T]:
        return self._worker.spawn(coro, name)


class CallMediaManager:
    def __init__(
        self,
        matrix: MatrixClient,
        rtc: MatrixRTCSessionManager,
        optouts: OptOuts,
        call_folder: Callable[[str], CallFolder] | None = None,
        calls_dir: Path | None = None,
    ) -> None:
        self.matrix = matrix
        #: where call folders go: <data_dir>/calls, or a fleet's shared fleet.calls_dir
        self.calls_dir = calls_dir
        self.optouts = optouts
        #: which folder a room's call writes to (bot.rtc.resume: the same one after a restart)
        self.call_folder = call_folder
        self.plugins: list[tuple[PluginFactory, frozenset[str] | None]] = []
        self._calls: dict[str, ActiveCall] = {}
        #: set once a joined call's plugins have started (or there are none to start)
        self._ready: dict[str, asyncio.Event] = {}
        self._stopping: set[asyncio.Event] = set()  # one per call whose plugins are ending
        rtc.session_created.connect(self._watch)

    def add_plugin(self, factory: PluginFactory, rooms: frozenset[str] | None = None) -> None:
        """A plugin (class or factory) to run in every call the bot joins (or in ``rooms``)."""
        self.plugins.append((factory, rooms))

    def instance(self, room_id: str, cls: type[Plugin]) -> Plugin | None:
        """The instance of a plugin class in the call of a room, if the bot is in it."""
        return next((r.plugin for r in self.runners(room_id) if type(r.plugin) is cls), None)

    def files_dir(self, room_id: str) -> Path:
        """``<data_dir>/calls/<room>``: a folder name made safe from the room ID."""
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in room_id.lstrip("!"))
        return (self.calls_dir or self.matrix.data_dir / "calls") / safe

    def rooms(self) -> list[str]:
        """Rooms whose call the bot has media for."""
        return list(self._calls)

    def media(self, room_id: str) -> CallMedia | None:
        call = self._calls.get(room_id)
        return cast(CallMedia, call.media) if call else None

    def plugin_lines(self, room_id: str) -> list[str]:
        """Each plugin of the room's call and how it copes, for !status."""
        lines = []
        call = self._calls.get(room_id)
        if call is not None and (connecting := call.state.line()):
            lines.append(connecting)
        media = self.media(room_id)
        if media is not None and media.reconnect_failures:
            lines.append(
                f"  media: lost the SFU connection; {media.reconnect_failures} reconnection "
                "attempts failed so far, retrying"
            )
        if media is not None:
            lines.extend(media.sfu_lines())
        if media is not None and media.unresolved:
            lines.append(
                f"  {media.unresolved} LiveKit participant(s) without a call membership: "
                "ignored (no recording, no captions)"
            )
        for r in self.runners(room_id):
            st = r.stats
            state = "disabled after errors" if st.disabled else "running"
            line = (
                f"  plugin {r.name}: {state}, {st.delivered} delivered, "
                f"{st.dropped} dropped, {st.errors} errors, "
                f"{r.queued} of {r.plugin.queue_size} frames queued"
            )
            if r.events_dropped:
                line += f", {r.events_dropped} speaking events dropped"
            try:
                extra = r.plugin.status()
            except Exception:
                log.exception("plugin %s failed to say its status", r.name)
                extra = None
            lines.append(f"{line}; {extra}" if extra else line)
        return lines

    def e2ee_state(self, room_id: str, identity: str) -> str | None:
        """How decrypting a participant's media goes (for !status)."""
        media = self.media(room_id)
        return media.e2ee_state(identity) if media else None

    async def wait_ready(self, room_id: str, timeout_s: float) -> bool:
        """Wait until the plugins of the room's call have started (after joining), so their
        commands can run; False if that took longer than ``timeout_s``."""
        event = self._ready.setdefault(room_id, asyncio.Event())
        try:
            await asyncio.wait_for(event.wait(), timeout_s)
        except TimeoutError:
            return False
        return True

    def runners(self, room_id: str) -> list[PluginRunner]:
        call = self._calls.get(room_id)
        return call.router.runners if call else []

    def _watch(self, session: MatrixRTCSession) -> None:
        async def on_join_state(change: JoinStateChanged) -> None:
            if change.joined:
                await self._start(session)
            else:
                await self._stop(session.room_id)

        session.join_state_changed.connect(on_join_state)

    async def _start(self, session: MatrixRTCSession) -> None:
        try:
            active = self._make_call(session)
            if active is not None:
                self._calls[session.room_id] = active
                await active.start()
        finally:
            self._ready.setdefault(session.room_id, asyncio.Event()).set()

    def _make_call(self, session: MatrixRTCSession) -> ActiveCall | None:
        factories = [f for f, rooms in self.plugins if rooms is None or session.room_id in rooms]
        if not factories:
            return None  # nobody wants media here: stay on the Matrix side only
        router = FrameRouter()
        connects = 0

        async def access() -> SfuAccess:
            """The token from joining for the first connection; a fresh one for each
            reconnection (tokens last an hour, calls may not)."""
            nonlocal connects
            connects += 1
            if connects > 1:
                return await session.refresh_sfu_access()
            if session.sfu is None:
                raise RuntimeError("not in the call")
            return session.sfu

        async def notify(text: str) -> str:
            from bot.matrix.messages import notice

            return await self.matrix.send(session.room_id, notice(text))

        def display_name(user_id: str) -> str | None:
            room = self.matrix.nio.rooms.get(session.room_id)
            return room.user_name(user_id) if room is not None else None

        media = CallMedia(
            session,
            router,
            access,
            notify,
            display_name=display_name,
            remote_access=lambda use: session.remote_sfu_access(use.transport, use.server_name),
            describe_error=_describe_error,
        )

        def make_context(worker: PluginWorker) -> Call:
            folder = self.call_folder(session.room_id) if self.call_folder is not None else None
            files_dir = self.files_dir(session.room_id)
            return Call(self.matrix, session, media, self.optouts, files_dir, folder, worker)

        plugins = [factory() for factory in factories]
        return ActiveCall(
            session.room_id, media, router, plugins, make_context, notify, _describe_error
        )

    async def _stop(self, room_id: str) -> None:
        self._ready.pop(room_id, None)
        active = self._calls.pop(room_id, None)
        if active is None:
            return
        finished = asyncio.Event()
        self._stopping.add(finished)
        try:
            await active.stop()
        finally:
            finished.set()
            self._stopping.discard(finished)

    async def stop(self) -> None:
        """Leave every call's media, and wait for calls already ending: their plugins are
        still writing files and posting them, which needs Matrix up."""
        for room_id in list(self._calls):
            await self._stop(room_id)
        while self._stopping:
            await next(iter(self._stopping)).wait()


def _describe_error(e: Exception) -> str:
    """A connection error in a few words for the room (RtcError messages are written for it;
    others are the SDK's, which name the SFU's address at most)."""
    text = str(e).strip() or type(e).__name__
    return text if len(text) <= 200 else text[:199] + "…"
