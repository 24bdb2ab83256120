"""The bot's Matrix connection: sync loop, incoming messages and invites, replies.

Built on the nio client that ``bot.matrix.session`` logs in. The first sync after start
uses ``timeout=0`` so a restart is ready at once (simplematrixbotlib's own loop long-polls
there for 65 s when it resumes from a stored sync token).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import nio

# Imported by name for the annotations in MatrixClient: there ``nio`` is the property.
from nio import (
    InviteMemberEvent,
    MatrixRoom,
    MegolmEvent,
    RoomMessageText,
    SyncError,
    SyncResponse,
)
from nio.crypto import OlmDevice

from bot.config import MatrixConfig
from bot.errors import LoginError, MatrixError
from bot.log import context
from bot.matrix import cross_signing, session, todevice, trust
from bot.matrix.messages import IncomingMessage, ReplyMode, in_reply, notice, thread_root_of
from bot.matrix.power_levels import (
    CREATOR_POWER_LEVEL,
    creators_are_privileged,
    creators_from_state,
)
from bot.signals import Signal

log = logging.getLogger(__name__)

SYNC_TIMEOUT_MS = 30_000
#: Synapse cuts a room's timeline at 10 events per sync by default: a burst of commands
#: between two syncs lost all but the last 10 (500 "!np" in 10 s got 128 replies).
SYNC_FILTER = {"room": {"timeline": {"limit": 200}}}
#: the master keys of the users the bot has seen, pinned (bot.matrix.trust)
IDENTITIES_FILE = "identities.json"
#: waits between failed syncs: from the first, doubling to the last, each ±25% (jitter)
SYNC_RETRY_FIRST_S = 0.5
SYNC_RETRY_MAX_S = 30.0
#: sync errors that no retry can mend: the login is gone
#: decrypted to-device events waiting for their handlers; past it the oldest is dropped
#: (and counted): a flood of them must not grow memory or a task per event
TO_DEVICE_QUEUE = 1000
FATAL_SYNC_ERRORS = frozenset({"M_UNKNOWN_TOKEN", "M_MISSING_TOKEN", "M_USER_DEACTIVATED"})


class _SyncFailed(Exception):
    """A sync answered with an error: leave nio's loop (it would retry at once) and back off."""


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
        #: monotonic time the homeserver became unreachable (None while syncs succeed)
        self.down_since: float | None = None
        #: called with the outage's length in seconds when the homeserver is back
        self.reconnected: Signal[float] = Signal("reconnected")
        self._retry_delay = SYNC_RETRY_FIRST_S
        #: syncs whose timeline of some room was cut ("limited"): those messages are not seen
        self.timeline_gaps = 0
        self._synced_rooms: set[str] = set()
        self._sync_task: asyncio.Task[None] | None = None
        self._on_message: MessageHandler | None = None
        self._on_invite: InviteHandler | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._creators_cache: dict[str, frozenset[str]] = {}
        self._sync_handlers: list[SyncHandler] = []
        self._to_device_handlers: list[ToDeviceHandler] = []
        #: handled one at a time, in arrival order, by one worker
        self._to_device: asyncio.Queue[todevice.DecryptedToDeviceEvent] = asyncio.Queue()
        self._to_device_worker: asyncio.Task[None] | None = None
        #: to-device events dropped because too many were waiting
        self.to_device_dropped = 0
        self.trust = trust.DeviceTrust(data_dir / IDENTITIES_FILE, cfg.exclude_insecure_devices)
        self.trust.device_trusted.connect(self._on_device_trusted)
        self.identity: cross_signing.IdentityResult | None = None

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
        """Log in, sign this device (cross-signing), catch up with one immediate sync, then
        keep syncing in the background."""
        self.trust.load()
        todevice.install()
        trust.install()
        self._nio = await session.login(self.cfg, self.data_dir)
        client = self._nio
        trust.attach(client.olm, self.trust)
        try:
            if client.should_upload_keys:  # the device keys must be there to be signed
                resp = await client.keys_upload()
                if not isinstance(resp, nio.KeysUploadResponse):
                    raise MatrixError(f"uploading the device keys failed: {resp}")
            self.identity = await cross_signing.ensure_identity(
                client,
                self.data_dir,
                password=self.cfg.password,
                recovery_key=self.cfg.recovery_key,
            )
        except BaseException:
            await client.close()
            raise
        client.add_event_callback(self._message_cb, nio.RoomMessageText)
        client.add_event_callback(self._invite_cb, nio.InviteMemberEvent)
        client.add_event_callback(self._undecryptable_cb, nio.MegolmEvent)
        client.add_to_device_callback(self._to_device_cb, todevice.DecryptedToDeviceEvent)
        client.add_response_callback(self._sync_cb, nio.SyncResponse)
        client.add_response_callback(self._sync_error_cb, nio.SyncError)
        resp = await client.sync(timeout=0, full_state=True)
        if not isinstance(resp, nio.SyncResponse):
            await client.close()
            raise MatrixError(f"first sync failed: {resp}")
        await self._sync_cb(resp)  # nio runs response callbacks only inside sync_forever
        self._sync_task = asyncio.create_task(self._sync_forever(), name="matrix-sync")

    async def _sync_forever(self) -> None:
        """Sync until cancelled. An outage of any length is waited out (backoff with jitter);
        only a login the homeserver no longer knows ends the loop (LoginError)."""
        while True:
            try:
                # sync_forever also uploads, queries and claims keys between syncs. With
                # simplematrixbotlib's max_timeouts = 0 any network error comes straight out.
                await self.nio.sync_forever(timeout=SYNC_TIMEOUT_MS, sync_filter=SYNC_FILTER)
            except LoginError:
                raise
            except Exception as e:  # network errors, 5xx, a proxy's 502: all worth retrying
                if self.down_since is None:
                    self.down_since = time.monotonic()
                    log.warning("the homeserver is unreachable (%s); retrying", _describe(e))
                else:
                    log.debug("sync still failing: %s", _describe(e))
                await asyncio.sleep(self._retry_delay * random.uniform(0.75, 1.25))  # noqa: S311
                self._retry_delay = min(self._retry_delay * 2, SYNC_RETRY_MAX_S)

    async def _sync_error_cb(self, response: SyncError) -> None:
        code = str(response.status_code or "")
        if code in FATAL_SYNC_ERRORS or getattr(response, "soft_logout", False):
            raise LoginError(
                f"the homeserver no longer accepts the bot's login ({code}): it was logged out "
                "or deactivated; start it again to log in with the password"
            )
        raise _SyncFailed(f"sync failed: {code} {response.message}")

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

    async def _message_cb(self, room: MatrixRoom, event: RoomMessageText) -> None:
        # Runs inside nio's sync loop: must never raise, must not block.
        if event.sender == self.nio.user_id or self._on_message is None:
            return
        body = event.body if isinstance(event.body, str) else ""
        content = event.source.get("content") or {}
        decrypted = bool(getattr(event, "decrypted", False))
        try:
            self._on_message(
                IncomingMessage(
                    room_id=room.room_id,
                    event_id=event.event_id,
                    sender=event.sender,
                    body=body,
                    timestamp_ms=event.server_timestamp,
                    thread_root=thread_root_of(content),
                    sender_key=getattr(event, "sender_key", None) if decrypted else None,
                    session_id=getattr(event, "session_id", None) if decrypted else None,
                )
            )
        except Exception:
            log.exception("message handler failed", extra=context(room=room.room_id))

    async def _invite_cb(self, room: MatrixRoom, event: InviteMemberEvent) -> None:
        if event.state_key != self.nio.user_id or event.membership != "invite":
            return
        if self._on_invite is None:
            return
        self._spawn(self._on_invite(room.room_id, event.sender), room.room_id)

    async def _sync_cb(self, response: SyncResponse) -> None:
        self.last_sync = time.monotonic()
        for room_id, room in response.rooms.join.items():
            # A room seen for the first time (start, a new join) skips its past on purpose.
            if room.timeline.limited and room_id in self._synced_rooms:
                self.timeline_gaps += 1
                log.warning(
                    "more messages arrived between two syncs than one sync carries; some "
                    "were not seen",
                    extra=context(room=room_id),
                )
        self._synced_rooms.update(response.rooms.join)
        if self.down_since is not None:
            outage = self.last_sync - self.down_since
            self.down_since = None
            self._retry_delay = SYNC_RETRY_FIRST_S
            log.warning("the homeserver is reachable again after %.1f s", outage)
            self.reconnected.emit(outage)
        for handler in self._sync_handlers:
            try:
                handler(response)
            except Exception:
                log.exception("sync handler failed")

    async def _to_device_cb(self, event: todevice.DecryptedToDeviceEvent) -> None:
        if self._to_device.qsize() >= TO_DEVICE_QUEUE:
            self._to_device.get_nowait()
            self.to_device_dropped += 1
            if self.to_device_dropped % 100 == 1:
                log.warning("too many to-device events waiting; dropping the oldest")
        self._to_device.put_nowait(event)
        if self._to_device_worker is None or self._to_device_worker.done():
            self._to_device_worker = asyncio.create_task(
                self._handle_to_device(), name="matrix-to-device"
            )
            self._tasks.add(self._to_device_worker)
            self._to_device_worker.add_done_callback(self._tasks.discard)

    async def _handle_to_device(self) -> None:
        while True:
            event = await self._to_device.get()
            for handler in self._to_device_handlers:
                try:
                    await handler(event)
                except Exception:
                    log.exception("to-device handler failed", extra=context(user=event.sender))

    async def _undecryptable_cb(self, room: MatrixRoom, event: MegolmEvent) -> None:
        log.warning(
            "could not decrypt an event (missing room key)",
            extra=context(room=room.room_id, user=event.sender),
        )

    # ------------------------------------------------------------------ device trust

    async def insecure_sender_device(self, msg: IncomingMessage) -> str | None:
        """For an encrypted message from a device the trust policy refuses: that device's ID
        (or "unknown"). None when the message may be acted on."""
        if msg.sender_key is None or not self.trust.enabled:
            return None
        olm = self.nio.olm
        device = self._device_by_curve(msg.sender, msg.sender_key)
        if device is None or not self.trust.known(msg.sender):
            await self.query_keys(msg.sender)
            device = self._device_by_curve(msg.sender, msg.sender_key)
        if device is None:
            return "unknown"
        # The Megolm session must come from that device itself (not forwarded by another).
        group = olm.inbound_group_store.get(msg.room_id, msg.sender_key, msg.session_id or "")
        if group is None or group.forwarding_chain or group.ed25519 != device.ed25519:
            return device.id
        if self.trust.allows(msg.sender, device.id, device.ed25519):
            return None
        if msg.sender in olm.users_for_key_query:
            # Their keys changed since we last looked (a device verified a moment ago, a
            # signature uploaded after a new identity): look again before refusing.
            await self.query_keys(msg.sender)
            if self.trust.allows(msg.sender, device.id, device.ed25519):
                return None
        return device.id

    def device_allowed(self, user_id: str, device_id: str | None) -> bool:
        """Whether the trust policy accepts this device (for media keys)."""
        if device_id is None:
            return not self.trust.enabled
        device = self.nio.olm.device_store[user_id].get(device_id)
        ed25519 = device.ed25519 if device is not None else None
        return self.trust.allows(user_id, device_id, ed25519)

    async def query_keys(self, user_id: str) -> None:
        """Fetch a user's device and cross-signing keys now."""
        self.nio.olm.users_for_key_query.add(user_id)
        resp = await self.nio.keys_query()
        if not isinstance(resp, nio.KeysQueryResponse):
            log.warning("key query failed: %s", resp, extra=context(user=user_id))

    def _device_by_curve(self, user_id: str, curve25519: str) -> OlmDevice | None:
        devices = self.nio.olm.device_store[user_id].values()
        return next((d for d in devices if d.curve25519 == curve25519), None)

    def _on_device_trusted(self, who: tuple[str, str]) -> None:
        # A device left out of a room key while it was not known as signed gets the next one.
        user_id, device_id = who
        if self._nio is None or self._nio.olm is None:
            return
        sessions = self._nio.olm.outbound_group_sessions
        for room_id, room in self._nio.rooms.items():
            group = sessions.get(room_id)
            if group is not None and user_id in room.users:
                if (user_id, device_id) not in group.users_shared_with:
                    group.max_messages = 0  # nio rotates it at the next send (never mid-share)

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

    def encrypted_rooms_with(self, user_id: str) -> list[str]:
        return [r.room_id for r in self.nio.rooms.values() if r.encrypted and user_id in r.users]

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


def _describe(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
