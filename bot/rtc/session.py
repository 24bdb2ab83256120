"""One room's call, mirroring matrix-js-sdk's ``MatrixRTCSession``.

Holds the member list, our membership (through ``MembershipManager``) and the media keys
(ours and the members'), and announces changes through typed signals. The manager feeds it
room state and decrypted key events; it talks to the homeserver through nio.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import nio

from bot.config import RtcConfig
from bot.log import context
from bot.matrix import todevice
from bot.matrix.sticky import StickyStore
from bot.rtc import key_events, notification
from bot.rtc.capacity import CallSlots, JoinCancelled, OnQueued
from bot.rtc.focus import RtcError, SfuAccess, choose_transport, sfu_access
from bot.rtc.identity import hashed_identity, legacy_identity
from bot.rtc.keys import Distribution, MediaKey, OwnKey, ReceivedKey, ReceivedKeys
from bot.rtc.membership import (
    DEFAULT_SLOT_ID,
    LEGACY_TYPE,
    STICKY_TYPE,
    CallMembership,
    active_memberships,
    transport_of,
)
from bot.rtc.membership_manager import MembershipManager
from bot.rtc.slot import RtcSlot, check_joinable
from bot.signals import Signal

log = logging.getLogger(__name__)

NOTIFICATION_TYPE = notification.NOTIFICATION_TYPE


@dataclass(frozen=True)
class MembershipsChanged:
    old: list[CallMembership]
    new: list[CallMembership]


@dataclass(frozen=True)
class EncryptionKeyChanged:
    """A media key to install: under ``identity`` (the LiveKit participant), at ``key.index``."""

    key: MediaKey
    identity: str
    membership: CallMembership | None  # None for our own key
    own: bool


@dataclass(frozen=True)
class JoinStateChanged:
    joined: bool


class MatrixRTCSession:
    def __init__(
        self,
        client: nio.AsyncClient,
        room_id: str,
        cfg: RtcConfig,
        *,
        power_level_of: Callable[[str, str], Awaitable[int]],
        sticky_events: StickyStore | None = None,
        slots: CallSlots | None = None,
        slot_id: str = DEFAULT_SLOT_ID,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.client = client
        self._power_level_of = power_level_of
        self._sticky = sticky_events or StickyStore()
        self._slots = slots
        self.room_id = room_id
        self.slot_id = slot_id
        self.cfg = cfg
        self._clock = clock
        self.memberships: list[CallMembership] = []
        self.sfu: SfuAccess | None = None
        self.memberships_changed: Signal[MembershipsChanged] = Signal("memberships_changed")
        self.join_state_changed: Signal[JoinStateChanged] = Signal("join_state_changed")
        self.encryption_key_changed: Signal[EncryptionKeyChanged] = Signal("encryption_key_changed")
        self.membership_manager_error: Signal[Exception] = Signal("membership_manager_error")
        self.call_notification_sent: Signal[dict[str, Any]] = Signal("call_notification_sent")
        #: our membership vanished (an outage outlasted the delayed leave, or an admin removed
        #: it) and we sent it again
        self.rejoined: Signal[None] = Signal("rejoined")
        self._manager = MembershipManager(
            client,
            room_id,
            cfg,
            self.membership_manager_error.emit,
            on_rejoined=lambda: self.rejoined.emit(None),
        )
        self._own_key = OwnKey(
            grace_ms=cfg.key_rotation_grace_ms, make_key=key_events.key_maker(cfg.key_event_format)
        )
        self._received = ReceivedKeys()
        #: every key announced since joining, by (identity, index): for late listeners
        self._announced: dict[tuple[str, int], EncryptionKeyChanged] = {}
        self._distributing = asyncio.Lock()
        self._redistribute = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._expiry_timer: asyncio.TimerHandle | None = None
        self._state_events: Mapping[Any, Mapping[str, Any]] = {}
        self._joined_users: frozenset[str] = frozenset()
        self._ctx = context(room=room_id)
        #: a join() is under way (commands typed meanwhile wait for it)
        self.joining = False
        self._join_task: asyncio.Task[SfuAccess] | None = None
        self._join_cancelled = False
        #: the slot's state event and the room's call notifications (fed by the manager)
        self.slot: RtcSlot | None = None
        self.notifications = notification.NotificationLog()

    # ------------------------------------------------------------------ members

    @property
    def is_joined(self) -> bool:
        return self._manager.joined

    @property
    def own_identity(self) -> str:
        """Our LiveKit identity (js getOwnRtcBackendIdentity): hashed for sticky members."""
        if self._manager.sticky:
            return hashed_identity(
                self.client.user_id, self.client.device_id, self._manager.member_id
            )
        return legacy_identity(self.client.user_id, self.client.device_id)

    @property
    def own_key(self) -> MediaKey | None:
        return self._own_key.current

    def current_keys(self) -> list[EncryptionKeyChanged]:
        """The keys announced since we joined (the latest per identity and index)."""
        return list(self._announced.values())

    def _announce_key(self, change: EncryptionKeyChanged) -> None:
        self._announced[(change.identity, change.key.index)] = change
        self.encryption_key_changed.emit(change)

    def has_key_from(self, m: CallMembership) -> bool:
        return self._received.has_key_from(m.user_id, m.device_id)

    def update_room(
        self, state_events: Mapping[Any, Mapping[str, Any]], joined_users: frozenset[str]
    ) -> None:
        """New room state (call member events by (type, state_key), joined users)."""
        self._state_events = state_events
        self._joined_users = joined_users
        self.recalculate()

    def recalculate(self) -> None:
        """Recompute the member list (js recalculateSessionMembers) and act on changes."""
        now_ms = int(self._clock() * 1000)
        old = self.memberships
        new = active_memberships(
            state_events=list(self._state_events.values()),
            sticky_events=self._sticky.current(STICKY_TYPE, now_ms),
            joined_users=self._joined_users,
            slot_id=self.slot_id,
            now_ms=now_ms,
            room_id=self.room_id,
        )
        self.memberships = new
        self._set_expiry_timer(new, now_ms)
        me = (self.client.user_id, self.client.device_id)
        self._manager.own_membership(next((m for m in new if m.device_key == me), None))
        if [m.event_id for m in old] != [m.event_id for m in new]:
            self.memberships_changed.emit(MembershipsChanged(old, new))
        self._apply_pending_keys()
        if self.is_joined:
            self._spawn(self._distribute_keys())  # evaluated on every recalculation, like js

    def _set_expiry_timer(self, members: list[CallMembership], now_ms: int) -> None:
        if self._expiry_timer is not None:
            self._expiry_timer.cancel()
            self._expiry_timer = None
        expiries = [e for m in members if (e := m.absolute_expiry()) is not None]
        if (sticky_expiry := self._sticky.next_expiry()) is not None:
            expiries.append(int(sticky_expiry))
        if expiries:
            delay_s = max(0.0, (min(expiries) - now_ms) / 1000) + 0.01
            self._expiry_timer = asyncio.get_running_loop().call_later(delay_s, self.recalculate)

    # ------------------------------------------------------------------ join / leave

    async def join(
        self, foci: list[dict[str, Any]] | None = None, on_queued: OnQueued | None = None
    ) -> SfuAccess:
        """Join the call: focus, SFU token, membership, keys. RtcError explains any refusal.

        ``foci``: the transports to prefer (the first LiveKit one is used); by default the
        bot's own (config, then its homeserver's), as Element Call's multi-SFU modes do.
        ``cancel_join()`` (a leave meanwhile) stops it with JoinCancelled.
        The bot's call limit applies (``bot.rtc.capacity``): past it this raises
        ``CallLimitReached``, or waits for a free slot (``on_queued`` is told its position).
        """
        if self.is_joined and self.sfu is not None:
            return self.sfu
        self.joining = True
        try:
            if self._slots is not None:
                await self._slots.acquire(self.room_id, on_queued)
            self._join_cancelled = False
            self._join_task = asyncio.create_task(self._join(foci), name=f"join-{self.room_id}")
            try:
                return await self._join_task
            except BaseException as e:
                if self._slots is not None and not self.is_joined:
                    self._slots.release(self.room_id)
                if isinstance(e, asyncio.CancelledError) and self._join_cancelled:
                    # by cancel_join(), not by our caller
                    raise JoinCancelled("The join was withdrawn.") from None
                raise
        finally:
            self._join_task = None
            self.joining = False

    async def cancel_join(self) -> bool:
        """Stop a join under way (a leave typed meanwhile): what of it reached the homeserver
        is taken back. False if no join was under way."""
        task = self._join_task
        if task is None or task.done():
            return False
        self._join_cancelled = True
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        if self._slots is not None and not self.is_joined:
            self._slots.release(self.room_id)  # join() does too; whichever runs first
        return True

    async def _join(self, foci: list[dict[str, Any]] | None) -> SfuAccess:
        check_joinable(self.slot, self.slot_id)
        member_id = await self._manager.prepare()
        await self._check_power_level()
        preferred = next((dict(f) for f in foci or () if f.get("type") == "livekit"), None)
        transport = await self._publish_transport(preferred)
        self.sfu = await sfu_access(
            self.client, self.cfg, transport, self.room_id, member_id=member_id
        )
        first = not self.memberships
        try:
            event_id = await self._manager.join(transport)
        except asyncio.CancelledError:
            # The membership may have reached the homeserver: take it back before giving up.
            await asyncio.shield(self._manager.abandon())
            self.sfu = None
            raise
        self.join_state_changed.emit(JoinStateChanged(True))
        log.info("joined the call", extra=self._ctx)
        if first and self.cfg.notification_type != "none":
            self._spawn(self._send_notification(event_id))
        self._spawn(self._distribute_keys())
        return self.sfu

    async def _publish_transport(self, preferred: dict[str, Any] | None) -> dict[str, Any]:
        """Where the bot publishes: as Element Call 0.26 (multi-SFU only), on its own
        homeserver's transport; the call's focus only where it has none (or mints its own
        tokens, so connects to its own SFU whatever it advertises). The call's focus is a
        member's choice: used only if the outbound policy allows it."""
        call = self.active_transport()
        if self.cfg.mints_tokens:
            return await choose_transport(self.client, self.cfg, (preferred, call), self.room_id)
        try:
            return await choose_transport(self.client, self.cfg, (preferred,), self.room_id)
        except RtcError:
            if call is None:
                raise
            log.warning("I have no transport of my own: publishing on the call's", extra=self._ctx)
            return await choose_transport(self.client, self.cfg, (call,), self.room_id)

    async def remote_sfu_access(self, transport: dict[str, Any], server_name: str) -> SfuAccess:
        """A token for an SFU that members of ``server_name`` publish on (multi-SFU: the bot
        subscribes there; that SFU's service decides what the token allows)."""
        if not self.is_joined:
            raise RtcError("I am not in this call.")
        member_id = self._manager.member_id if self._manager.sticky else None
        return await sfu_access(
            self.client,
            self.cfg,
            transport,
            self.room_id,
            member_id=member_id,
            member_server=server_name,
        )

    async def refresh_sfu_access(self) -> SfuAccess:
        """A new LiveKit token for the SFU we joined on (the old one may have expired)."""
        if self.sfu is None or not self.is_joined:
            raise RtcError("I am not in this call.")
        member_id = self._manager.member_id if self._manager.sticky else None
        self.sfu = await sfu_access(
            self.client, self.cfg, self.sfu.transport, self.room_id, member_id=member_id
        )
        return self.sfu

    def active_transport(self) -> dict[str, Any] | None:
        """The SFU of the call's oldest member (what the bot follows when joining)."""
        if not self.memberships:
            return None
        t = transport_of(self.memberships[0], self.memberships)
        return dict(t) if t is not None else None

    async def _check_power_level(self) -> None:
        room = self.client.rooms.get(self.room_id)
        if room is None:
            raise RtcError("I am not in this room.")
        if self._manager.sticky:  # a timeline event, not state
            event_type = STICKY_TYPE
            needed = room.power_levels.get_message_event_required_level(STICKY_TYPE)
        else:
            event_type = LEGACY_TYPE
            needed = room.power_levels.get_state_event_required_level(LEGACY_TYPE)
        mine = await self._power_level_of(self.room_id, self.client.user_id)
        if mine < needed:
            raise RtcError(
                f"I cannot join the call: sending {event_type} here needs power level {needed} "
                f"and I have {mine}. A room admin can fix this by allowing everyone to join calls "
                '(Element: Room settings → Roles & Permissions → "Join Element calls" → '
                f"Default), or by raising my power level to {needed}."
            )

    async def leave(self, timeout_s: float = 1.0) -> bool:
        """Leave the call; False if the leave did not reach the homeserver within the timeout."""
        was_joined = self.is_joined
        ok = await self._manager.leave(timeout_s)
        self._own_key.reset()
        self._received.clear()
        self._announced.clear()
        self.sfu = None
        if self._slots is not None:
            self._slots.release(self.room_id)
        if was_joined:
            self.join_state_changed.emit(JoinStateChanged(False))
            log.info("left the call", extra=self._ctx)
        return ok

    async def _send_notification(self, membership_event_id: str) -> None:
        content = notification.notification_content(
            slot_id=self.slot_id,
            notification_type=self.cfg.notification_type,
            membership_event_id=membership_event_id,
            now_ms=int(self._clock() * 1000),
        )
        resp = await self.client.room_send(
            self.room_id, NOTIFICATION_TYPE, content, ignore_unverified_devices=True
        )
        if isinstance(resp, nio.RoomSendError):
            log.warning("could not send the call notification: %s", resp.message, extra=self._ctx)
            return
        self.call_notification_sent.emit(content)

    # ------------------------------------------------------------------ keys

    async def _distribute_keys(self) -> None:
        """Send or rotate our key (serialised; requests during a run merge into one more)."""
        if self._distributing.locked():
            self._redistribute = True
            return
        async with self._distributing:
            self._redistribute = True
            while self._redistribute and self.is_joined:
                self._redistribute = False
                me = (self.client.user_id, self.client.device_id)
                others = [
                    (m.user_id, m.device_id, m.created_ts)
                    for m in self.memberships
                    if m.device_key != me
                ]
                plan = self._own_key.plan(others)
                if plan is not None:
                    await self._send_key(plan)

    async def _send_key(self, plan: Distribution) -> None:
        if plan.first:
            self._emit_own_key(plan.key)  # js installs the first key at once
        events = key_events.encode_key_events(
            self.cfg.key_event_format,
            self.room_id,
            plan.key,
            self.client.device_id,
            self._manager.member_id,
            int(self._clock() * 1000),
        )
        sends = [(u, d, t, c) for u, d, _ in plan.targets for t, c in events]
        results = await asyncio.gather(
            *(todevice.send_encrypted(self.client, u, d, t, c) for u, d, t, c in sends),
            return_exceptions=True,
        )
        for (user, device, _, _), result in zip(sends, results, strict=True):
            if isinstance(result, Exception):
                log.warning(
                    "could not send our media key to %s/%s: %s",
                    user,
                    device,
                    result,
                    extra=self._ctx,
                )
        log.info(
            "sent media key index %d to %d devices%s",
            plan.key.index,
            len(plan.targets),
            " (new key)" if plan.rotated else "",
            extra=self._ctx,
        )
        if plan.rotated:
            await asyncio.sleep(self.cfg.use_key_delay_ms / 1000)
            if self.is_joined and self._own_key.current == plan.key:
                self._emit_own_key(plan.key)

    def _emit_own_key(self, key: MediaKey) -> None:
        self._announce_key(EncryptionKeyChanged(key, self.own_identity, None, True))

    def handle_key_event(self, event: todevice.DecryptedToDeviceEvent) -> None:
        """A decrypted key event whose sender device the caller has checked."""
        received = key_events.parse_key_event(
            event.type,
            event.content,
            event.sender,
            event.sender_device,
            self.room_id,
            time.monotonic(),
        )
        if received is None:
            return
        if received.device_id != event.sender_device:
            log.warning(
                "ignoring a media key whose claimed device is not the Olm sender's",
                extra=context(room=self.room_id, user=event.sender),
            )
            return
        if self._received.is_stale(received):
            log.info(
                "ignoring an out-of-date media key",
                extra=context(room=self.room_id, user=event.sender),
            )
            return
        member = self._member_for(received)
        if member is None:
            self._received.hold(received)  # the membership may not have synced yet
            return
        self._apply_key(received, member)

    def _member_for(self, k: ReceivedKey) -> CallMembership | None:
        return next((m for m in self.memberships if m.device_key == (k.user_id, k.device_id)), None)

    def _apply_key(self, k: ReceivedKey, member: CallMembership) -> None:
        self._received.applied(k)
        log.info(
            "received media key index %d",
            k.key.index,
            extra=context(room=self.room_id, user=k.user_id),
        )
        self._announce_key(EncryptionKeyChanged(k.key, member.rtc_backend_identity, member, False))

    def _apply_pending_keys(self) -> None:
        devices = {m.device_key for m in self.memberships}
        for k in self._received.take_pending(devices):
            member = self._member_for(k)
            if member is not None:
                self._apply_key(k, member)

    # ------------------------------------------------------------------ plumbing

    def _spawn(self, coro: Any) -> None:
        async def guarded() -> None:
            try:
                await coro
            except Exception as e:
                log.exception("call task failed", extra=self._ctx)
                self.membership_manager_error.emit(e)

        task = asyncio.create_task(guarded())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        if self._expiry_timer is not None:
            self._expiry_timer.cancel()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
