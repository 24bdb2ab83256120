"""All rooms' calls, mirroring matrix-js-sdk's ``MatrixRTCSessionManager``.

Watches every sync for call membership state and room membership changes, keeps one
``MatrixRTCSession`` per room, routes media key to-device events to the right session, and
announces when a call starts (first member) or ends (last member leaves) in a room.

Media keys are accepted only from Olm-decrypted events whose claimed device is backed by
that device's published keys (``todevice.check_sender_device``), and only for current
members (the session checks that).
"""

from __future__ import annotations

import logging
from typing import Any

import nio

from bot.config import RtcConfig
from bot.log import context
from bot.matrix import sticky, todevice
from bot.matrix.client import MatrixClient
from bot.matrix.sticky import StickyStore
from bot.rtc import key_events
from bot.rtc.capacity import CallSlots
from bot.rtc.membership import LEGACY_TYPES, STICKY_TYPE
from bot.rtc.session import MatrixRTCSession, MembershipsChanged
from bot.rtc.slot import SLOT_TYPES, parse_slot
from bot.signals import Signal

log = logging.getLogger(__name__)


class MatrixRTCSessionManager:
    def __init__(self, matrix: MatrixClient, cfg: RtcConfig) -> None:
        self.matrix = matrix
        self.cfg = cfg
        self._sessions: dict[str, MatrixRTCSession] = {}
        #: per room: call membership state events by (type, state_key)
        self._state: dict[str, dict[tuple[str, str], dict[str, Any]]] = {}
        #: per room: the slot state events (org.matrix.msc4143.rtc.slot) by slot id
        self._slot_state: dict[str, dict[str, dict[str, Any]]] = {}
        #: per room: sticky rtc.member events (MSC4143 memberships)
        self._sticky: dict[str, StickyStore] = {}
        #: the call limit (rtc.max_calls) every session's join goes through
        self.slots = CallSlots(cfg.max_calls, cfg.when_full)
        self.session_started: Signal[MatrixRTCSession] = Signal("session_started")
        self.session_ended: Signal[MatrixRTCSession] = Signal("session_ended")
        #: a room's session object was made (before any call event of it)
        self.session_created: Signal[MatrixRTCSession] = Signal("session_created")
        sticky.install()
        matrix.on_sync(self._on_sync)
        matrix.on_to_device(self._on_to_device)

    def get_room_session(self, room_id: str) -> MatrixRTCSession:
        """The room's session (created on first use, so a call can be started)."""
        session = self._sessions.get(room_id)
        if session is None:
            session = MatrixRTCSession(
                self.matrix.nio,
                room_id,
                self.cfg,
                power_level_of=self.matrix.power_level,
                sticky_events=self._sticky.setdefault(room_id, StickyStore()),
                slots=self.slots,
            )
            session.memberships_changed.connect(lambda change, s=session: self._announce(s, change))
            self._sessions[room_id] = session
            self.session_created.emit(session)
            self._update(room_id)
        return session

    def existing_session(self, room_id: str) -> MatrixRTCSession | None:
        """The room's session if one was made (never makes one)."""
        return self._sessions.get(room_id)

    def get_active_room_session(self, room_id: str) -> MatrixRTCSession | None:
        """The room's session if a call is going on there (js getActiveRoomSession)."""
        session = self._sessions.get(room_id)
        return session if session is not None and session.memberships else None

    def active_sessions(self) -> list[MatrixRTCSession]:
        """Sessions of rooms with a call going on."""
        return [s for s in self._sessions.values() if s.memberships]

    def joined_sessions(self) -> list[MatrixRTCSession]:
        return [s for s in self._sessions.values() if s.is_joined]

    async def stop(self, timeout_s: float = 2.0) -> None:
        """Leave every call the bot is in (and withdraw the joins waiting for a slot)."""
        self.slots.cancel_all()
        for session in self._sessions.values():
            await session.cancel_join()
        for session in self.joined_sessions():
            await session.leave(timeout_s)
        for session in self._sessions.values():
            await session.close()

    def _announce(self, session: MatrixRTCSession, change: MembershipsChanged) -> None:
        if change.new and not change.old:
            log.info("a call started", extra=context(room=session.room_id))
            self.session_started.emit(session)
        elif change.old and not change.new:
            log.info("a call ended", extra=context(room=session.room_id))
            self.session_ended.emit(session)

    # ------------------------------------------------------------------ sync

    def _on_sync(self, response: nio.SyncResponse) -> None:
        for room_id, info in response.rooms.join.items():
            relevant = False
            for event in [*info.state, *info.timeline.events]:
                source = getattr(event, "source", None) or {}
                event_type, state_key = source.get("type"), source.get("state_key")
                if event_type in LEGACY_TYPES and isinstance(state_key, str):
                    self._state.setdefault(room_id, {})[(event_type, state_key)] = source
                    relevant = True
                elif event_type in SLOT_TYPES and isinstance(state_key, str):
                    self._slot_state.setdefault(room_id, {})[state_key] = source
                    relevant = True
                elif room_id in self._sessions and state_key is None:
                    # call notifications and declines (MSC4075, MSC4310), for !status
                    self._sessions[room_id].notifications.add_event(source)
                elif isinstance(event, nio.RoomMemberEvent):
                    relevant = True
            for raw in sticky.sticky_events_of(response, room_id):
                plain = sticky.decrypted(self.matrix.nio, room_id, raw)
                if plain is not None and plain.get("type") == STICKY_TYPE:
                    relevant |= self._add_sticky(room_id, plain)
            if relevant:
                self._update(room_id)
        for room_id in response.rooms.leave:
            self._state.pop(room_id, None)
            self._slot_state.pop(room_id, None)
            self._sticky.pop(room_id, None)
            if room_id in self._sessions:
                self._update(room_id)

    def _add_sticky(self, room_id: str, event: dict[str, Any]) -> bool:
        return self._sticky.setdefault(room_id, StickyStore()).add(event)

    def _update(self, room_id: str) -> None:
        state = self._state.get(room_id, {})
        if room_id not in self._sessions:
            if not state and not self._sticky.get(room_id, StickyStore()).current(STICKY_TYPE):
                return
            self.get_room_session(room_id)  # a call we have not seen: track it (calls _update)
            return
        room = self.matrix.nio.rooms.get(room_id)
        joined = frozenset(
            uid for uid, user in (room.users.items() if room else ()) if not user.invited
        )
        session = self._sessions[room_id]
        slot_event = self._slot_state.get(room_id, {}).get(session.slot_id)
        session.slot = parse_slot(slot_event) if slot_event is not None else None
        session.update_room(state, joined)

    # ------------------------------------------------------------------ keys

    async def _on_to_device(self, event: todevice.DecryptedToDeviceEvent) -> None:
        if event.type not in key_events.KEY_EVENT_TYPES:
            return
        room_id = event.content.get("room_id")
        session = self._sessions.get(room_id) if isinstance(room_id, str) else None
        ctx = context(room=room_id if isinstance(room_id, str) else None, user=event.sender)
        if session is None:
            log.info("ignoring a media key for a room without a call", extra=ctx)
            return
        if not await todevice.check_sender_device(self.matrix.nio, event):
            log.warning(
                "ignoring a media key whose sender device does not match its keys", extra=ctx
            )
            return
        if not self.matrix.device_allowed(event.sender, event.sender_device):
            log.warning(
                "ignoring a media key from a device not cross-signed by its owner", extra=ctx
            )
            return
        if key_events.claimed_member_of_another_device(
            event.type, event.content, event.sender, event.sender_device, session.memberships
        ):
            log.warning("ignoring a media key naming another device's membership", extra=ctx)
            return
        session.handle_key_event(event)
