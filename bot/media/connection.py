"""The bot's LiveKit connection for one call, with end-to-end encryption as Element Call has it.

Keys: ``KeyProviderOptions(key_derivation_function=HKDF, key_ring_size=256,
ratchet_window_size=10, failure_tolerance=10)`` (Element Call's
``src/e2ee/matrixKeyProvider.ts`` and livekit client-sdk-js ``src/e2ee/utils.ts``
``deriveKeys``; the SDK's default PBKDF2 does not interoperate). Each member's key is installed
under its LiveKit identity. The keys live in one place, the call's key ring
(``MatrixRTCSession``): a connection installs what the ring holds when it connects, and each
new key as it comes. The SDK's sender cryptors stay at key index 0 whatever ``set_key`` says,
so after every own key change (and after publishing a track) ours are moved to the current
index.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Protocol

from livekit import rtc

from bot.log import context, register_secret
from bot.rtc.focus import SfuAccess
from bot.rtc.keys import MediaKey

log = logging.getLogger(__name__)

E2EE = rtc.E2EEOptions(
    key_provider_options=rtc.KeyProviderOptions(
        key_derivation_function=rtc.KeyDerivationFunction.HKDF,
        key_ring_size=256,
        ratchet_window_size=10,
        failure_tolerance=10,
    )
)


class RingKey(Protocol):
    @property
    def key(self) -> MediaKey: ...

    @property
    def identity(self) -> str: ...


class KeyRing(Protocol):
    """Where a call's media keys are kept (bot.rtc.session.MatrixRTCSession)."""

    def current_keys(self) -> Iterable[RingKey]: ...


class MediaConnection:
    def __init__(
        self,
        room_id: str,
        get_access: Callable[[], Awaitable[SfuAccess]],
        on_new_room: Callable[[rtc.Room], None],
        ring: KeyRing,
    ) -> None:
        self.room_id = room_id
        self._get_access = get_access
        self._on_new_room = on_new_room
        self._ring = ring
        self.room = rtc.Room()
        self.access: SfuAccess | None = None
        self._own_index: int | None = None
        self._ctx = context(room=room_id)

    @property
    def connected(self) -> bool:
        return self.room.isconnected()

    @property
    def identity(self) -> str | None:
        return self.access.identity if self.access else None

    async def connect(self) -> None:
        """Connect with a fresh token and install every key we hold."""
        self._on_new_room(self.room)
        self.access = await self._get_access()
        register_secret(self.access.jwt)
        # e2ee= (not encryption=): Element Call's data packets are not encrypted either.
        # Subscriptions are the engine's choice: only the kinds some plugin wants.
        options = rtc.RoomOptions(auto_subscribe=False, e2ee=E2EE)
        await self.room.connect(self.access.url, self.access.jwt, options)
        for change in self._ring.current_keys():
            self._install(change.identity, change.key.key, change.key.index)
        self._point_own_cryptors()
        log.info("connected to the SFU as %s", self.access.identity, extra=self._ctx)

    async def reconnect(self) -> None:
        """A new Room after the old one dropped for good (the SDK resumes short drops itself)."""
        await self.close()
        self.room = rtc.Room()
        await self.connect()

    async def close(self) -> None:
        if self.room.isconnected():
            await self.room.disconnect()

    def set_key(self, identity: str, key: MediaKey, own: bool) -> None:
        """Install a member's key (``own``: ours, and start encrypting with its index)."""
        if own:
            self._own_index = key.index
        if self.room.isconnected():
            self._install(identity, key.key, key.index)
            if own:
                self._point_own_cryptors()

    def own_tracks_published(self) -> None:
        """A new local track starts at key index 0: move it to ours."""
        self._point_own_cryptors()

    def _install(self, identity: str, key: bytes, index: int) -> None:
        manager = self.room.e2ee_manager
        if manager is not None and manager.key_provider is not None:
            manager.key_provider.set_key(identity, key, index)

    def _point_own_cryptors(self) -> None:
        manager = self.room.e2ee_manager
        if manager is None or self._own_index is None:
            return
        me = self.room.local_participant.identity
        for cryptor in manager.frame_cryptors():
            if cryptor.participant_identity == me:
                cryptor.set_key_index(self._own_index)
