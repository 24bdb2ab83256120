"""The bot's Matrix connection: sync loop, incoming messages and invites, replies.

Built on the nio client that ``bot.matrix.session`` logs in. The first sync after start
uses ``timeout=0`` so a restart is ready at once (simplematrixbotlib's own loop long-polls
there for 65 s when it resumes from a stored sync token).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import nio

from bot.config import MatrixConfig
from bot.errors import MatrixError
from bot.log import context
from bot.matrix import session, todevice
from bot.matrix.messages import IncomingMessage, ReplyMode, in_reply, notice, thread_root_of
from bot.matrix.power_levels import (
    CREATOR_POWER_LEVEL,
    creators_are_privileged,
    creators_from_state,
)

log = logging.getLogger(__name__)

SYNC_TIMEOUT_MS = 30_000

MessageHandler = Callable[[IncomingMessage], None]
InviteHandler = Callable[[str, str], Awaitable[None]]
SyncHandler = Callable[[nio.SyncResponse], None]
ToDeviceHandler = Callable[[todevice.DecryptedToDeviceEvent], Awaitable[None]]


class MatrixClient:
    def __init__(self, cfg: MatrixConfig, data_dir: Path) -> None:
        self.cfg = cfg
        self.data_dir = data_dir
        self._nio: nio.AsyncClient | None = None
        #: monotonic time of the last sync response (None before the first)
        self.last_sync: float | None = None
        self._sync_task: asyncio.Task[None] | None = None
        self._on_message: MessageHandler | None = None
        self._on_invite: InviteHandler | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._creators_cache: dict[str, frozenset[str]] = {}
        self._sync_handlers: list[SyncHandler] = []
        self._to_device_handlers: list[ToDeviceHandler] = []

    @property
    def nio(self) -> nio.AsyncClient:
        if self._nio is None:
            raise MatrixError("not logged in")
        return self._nio

    @property
    def started(self) -> bool:
        return self._nio is not None

    @property
    def user_id(self) -> str:
        return self.nio.user_id

    @property
    def device_id(self) -> str:
        return self.nio.device_id

    def on_message(self, handler: MessageHandler) -> None:
        """Text messages from others (decrypted); the handler must not block."""
        self._on_message = handler

    def on_invite(self, handler: InviteHandler) -> None:
        """Invites of the bot: ``handler(room_id, inviter)``."""
        self._on_invite = handler

    def on_sync(self, handler: SyncHandler) -> None:
        """Every sync response, after nio has updated its rooms (the first one included)."""
        self._sync_handlers.append(handler)

    def on_to_device(self, handler: ToDeviceHandler) -> None:
        """Olm-decrypted to-device events of custom types (see bot.matrix.todevice)."""
        self._to_device_handlers.append(handler)

    async def start(self) -> None:
        """Log in, catch up with one immediate sync, then keep syncing in the background."""
        todevice.install()
        self._nio = await session.login(self.cfg, self.data_dir)
        client = self._nio
        client.add_event_callback(self._message_cb, nio.RoomMessageText)
        client.add_event_callback(self._invite_cb, nio.InviteMemberEvent)
        client.add_event_callback(self._undecryptable_cb, nio.MegolmEvent)
        client.add_to_device_callback(self._to_device_cb, todevice.DecryptedToDeviceEvent)
        client.add_response_callback(self._sync_cb, nio.SyncResponse)
        resp = await client.sync(timeout=0, full_state=True)
        if not isinstance(resp, nio.SyncResponse):
            await client.close()
            raise MatrixError(f"first sync failed: {resp}")
        await self._sync_cb(resp)  # nio runs response callbacks only inside sync_forever
        self._sync_task = asyncio.create_task(self._sync_forever(), name="matrix-sync")

    async def _sync_forever(self) -> None:
        # sync_forever also uploads, queries and claims keys between syncs.
        await self.nio.sync_forever(timeout=SYNC_TIMEOUT_MS)

    @property
    def sync_task(self) -> asyncio.Task[None] | None:
        return self._sync_task

    async def stop(self) -> None:
        if self._sync_task is not None:
            self._sync_task.cancel()
            await asyncio.gather(self._sync_task, return_exceptions=True)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._nio is not None:
            await self._nio.close()

    # ------------------------------------------------------------------ incoming

    async def _message_cb(self, room: nio.MatrixRoom, event: nio.RoomMessageText) -> None:
        # Runs inside nio's sync loop: must never raise, must not block.
        if event.sender == self.nio.user_id or self._on_message is None:
            return
        body = event.body if isinstance(event.body, str) else ""
        content = event.source.get("content") or {}
        try:
            self._on_message(
                IncomingMessage(
                    room_id=room.room_id,
                    event_id=event.event_id,
                    sender=event.sender,
                    body=body,
                    timestamp_ms=event.server_timestamp,
                    thread_root=thread_root_of(content),
                )
            )
        except Exception:
            log.exception("message handler failed", extra=context(room=room.room_id))

    async def _invite_cb(self, room: nio.MatrixRoom, event: nio.InviteMemberEvent) -> None:
        if event.state_key != self.nio.user_id or event.membership != "invite":
            return
        if self._on_invite is None:
            return
        self._spawn(self._on_invite(room.room_id, event.sender), room.room_id)

    async def _sync_cb(self, response: nio.SyncResponse) -> None:
        self.last_sync = time.monotonic()
        for handler in self._sync_handlers:
            try:
                handler(response)
            except Exception:
                log.exception("sync handler failed")

    async def _to_device_cb(self, event: todevice.DecryptedToDeviceEvent) -> None:
        for handler in self._to_device_handlers:
            self._spawn(handler(event), None)

    async def _undecryptable_cb(self, room: nio.MatrixRoom, event: nio.MegolmEvent) -> None:
        log.warning(
            "could not decrypt an event (missing room key)",
            extra=context(room=room.room_id, user=event.sender),
        )

    def _spawn(self, coro: Awaitable[None], room_id: str | None) -> None:
        async def guarded() -> None:
            try:
                await coro
            except Exception:
                log.exception("background task failed", extra=context(room=room_id))

        task = asyncio.create_task(guarded())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ------------------------------------------------------------------ rooms

    async def join(self, room_id: str) -> None:
        resp = await self.nio.join(room_id)
        if isinstance(resp, nio.JoinError):
            raise MatrixError(f"could not join {room_id}: {resp.message}")

    async def reject_invite(self, room_id: str) -> None:
        resp = await self.nio.room_leave(room_id)
        if isinstance(resp, nio.RoomLeaveError):
            raise MatrixError(f"could not reject the invite to {room_id}: {resp.message}")

    async def power_level(self, room_id: str, user_id: str) -> int:
        """The user's power level in the room (0 for rooms the bot is not in)."""
        room = self.nio.rooms.get(room_id)
        if room is None:
            return 0
        if creators_are_privileged(room.room_version) and user_id in await self._creators(room_id):
            return CREATOR_POWER_LEVEL
        return room.power_levels.get_user_level(user_id)

    async def _creators(self, room_id: str) -> frozenset[str]:
        # The create event never changes: fetch once per room.
        if room_id not in self._creators_cache:
            resp = await self.nio.room_get_state(room_id)
            if isinstance(resp, nio.RoomGetStateError):
                raise MatrixError(f"could not read the state of {room_id}: {resp.message}")
            self._creators_cache[room_id] = creators_from_state(resp.events)
        return self._creators_cache[room_id]

    def joined_rooms(self) -> list[str]:
        return list(self.nio.rooms)

    # ------------------------------------------------------------------ outgoing

    async def send(self, room_id: str, content: dict) -> str:
        """Send an ``m.room.message`` (encrypted in encrypted rooms); returns its event ID."""
        resp = await self.nio.room_send(
            room_id,
            "m.room.message",
            content,
            ignore_unverified_devices=self.cfg.ignore_unverified_devices,
        )
        if isinstance(resp, nio.RoomSendError):
            raise MatrixError(f"sending to {room_id} failed: {resp.message}")
        return resp.event_id

    async def send_file(
        self, room_id: str, path: Path, mimetype: str, body: str | None = None
    ) -> str:
        """Upload a file and post it (``m.file``); encrypted in encrypted rooms. Its event ID."""
        size = path.stat().st_size
        room = self.nio.rooms.get(room_id)
        encrypt = bool(room and room.encrypted)
        with path.open("rb") as f:
            resp, keys = await self.nio.upload(
                f, content_type=mimetype, filename=path.name, encrypt=encrypt, filesize=size
            )
        if not isinstance(resp, nio.UploadResponse):
            raise MatrixError(f"uploading {path.name} failed: {resp}")
        content: dict = {
            "msgtype": "m.file",
            "body": body or path.name,
            "filename": path.name,
            "info": {"mimetype": mimetype, "size": size},
        }
        if encrypt:
            content["file"] = {**keys, "url": resp.content_uri}  # keys travel Megolm-encrypted
        else:
            content["url"] = resp.content_uri
        return await self.send(room_id, content)

    async def reply(
        self, msg: IncomingMessage, text: str, html: str | None, mode: ReplyMode
    ) -> str:
        content = in_reply(notice(text, html), msg.event_id, msg.thread_root, mode)
        return await self.send(msg.room_id, content)
