"""Media keys: our own key's rotation rules, and the keys others send us.

Follows matrix-js-sdk's ``RTCEncryptionManager`` (``src/matrixrtc/RTCEncryptionManager.ts``):
index 0..255 wrapping, sent Olm-encrypted (the wire forms are ``bot.rtc.key_events``); on a
leave a new key goes to everyone, on joins within the grace period the current key goes to the
joiners only, and a new key is used locally only ``USE_KEY_DELAY_MS`` after it was sent. Key
bytes never appear in a repr or a log line.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

#: Element Call's keys are 16 bytes; MSC4195 asks for at least 32. Nothing longer than
#: MAX_KEY_BYTES is taken (HKDF would, but no sender needs it).
KEY_BYTES = 16
MIN_SPEC_KEY_BYTES = 32
MAX_KEY_BYTES = 64
INDEX_MODULUS = 256
#: js keyRotationGracePeriodMs: joiners within this age of the key just get the current key.
KEY_ROTATION_GRACE_MS = 10_000
#: js useKeyDelay (set by join(); Element Call keeps it): wait before switching to a new key.
USE_KEY_DELAY_MS = 1_000
#: Keys held for devices that are not (yet) members, per sending user: beyond this the
#: user's oldest is dropped, so one sender (a non-member flooding) evicts only its own keys.
MAX_PENDING_PER_SENDER = 32
#: Senders whose keys are held; beyond this, the one that sent least recently is forgotten.
MAX_PENDING_SENDERS = 64


@dataclass(frozen=True)
class MediaKey:
    key: bytes = field(repr=False)
    index: int

    def __post_init__(self) -> None:
        if not 0 <= self.index < INDEX_MODULUS:
            raise ValueError(f"key index {self.index} is outside 0..255")
        # A key of another length is a broken or hostile sender, never something to encrypt
        # with. (The message gives the length only: key bytes never reach a log.)
        if why := key_length_problem(len(self.key)):
            raise ValueError(f"a media key: {why}")

    @classmethod
    def generate(cls, index: int, size: int = KEY_BYTES) -> MediaKey:
        return cls(secrets.token_bytes(size), index % INDEX_MODULUS)


def key_length_problem(size: int) -> str | None:
    """Why a key of ``size`` bytes is refused (None if it is not): Element Call sends 16
    random bytes, the spec (MSC4195) at least 32."""
    if size == KEY_BYTES or MIN_SPEC_KEY_BYTES <= size <= MAX_KEY_BYTES:
        return None
    return f"the key is {size} bytes, not {KEY_BYTES} or {MIN_SPEC_KEY_BYTES}..{MAX_KEY_BYTES}"


@dataclass(frozen=True)
class ReceivedKey:
    """A key another device sent us (not yet matched to a membership)."""

    user_id: str
    device_id: str
    member_id: str | None
    key: MediaKey
    sent_ts: int | None
    received_at: float


# --------------------------------------------------------------------------- our own key

#: How js identifies a participant the key was shared with: a re-join changes created_ts.
Participant = tuple[str, str, int]


@dataclass(frozen=True)
class Distribution:
    """Send ``key`` to ``targets``.

    ``first``: our first key, used at once; ``rotated``: a new key, used after a delay.
    """

    key: MediaKey
    targets: frozenset[Participant]
    rotated: bool
    first: bool = False


class OwnKey:
    """Decides when our key is re-sent or rotated (js RTCEncryptionManager)."""

    def __init__(
        self,
        grace_ms: int = KEY_ROTATION_GRACE_MS,
        clock: Callable[[], float] = time.monotonic,
        make_key: Callable[[int], MediaKey] = MediaKey.generate,
    ) -> None:
        self.grace_ms = grace_ms
        self._clock = clock
        self._make_key = make_key
        self.current: MediaKey | None = None
        self._created_at = 0.0
        self._shared_with: frozenset[Participant] = frozenset()

    def plan(self, others: Iterable[Participant]) -> Distribution | None:
        """What to send now that the other members are ``others``; None if nothing."""
        now_set = frozenset(others)
        if self.current is None:
            key = self._new_key(0)
            self._shared_with = now_set
            return Distribution(key, now_set, rotated=False, first=True)
        left = self._shared_with - now_set
        joined = now_set - self._shared_with
        self._shared_with = now_set
        if left or (joined and self._age_ms() >= self.grace_ms):
            self._new_key(self.current.index + 1)
            return Distribution(self.current, now_set, rotated=True)
        if joined:
            return Distribution(self.current, joined, rotated=False)
        return None

    def reset(self) -> None:
        """Forget the key (after leaving the call)."""
        self.current = None
        self._shared_with = frozenset()

    def _new_key(self, index: int) -> MediaKey:
        key = self.current = self._make_key(index % INDEX_MODULUS)
        self._created_at = self._clock()
        return key

    def _age_ms(self) -> float:
        return (self._clock() - self._created_at) * 1000


# --------------------------------------------------------------------------- others' keys


class ReceivedKeys:
    """Keys from other devices: the newest per (device, member, index), and those we hold
    for devices that are not members yet (bounded per sending user and in senders)."""

    def __init__(
        self,
        max_per_sender: int = MAX_PENDING_PER_SENDER,
        max_senders: int = MAX_PENDING_SENDERS,
    ) -> None:
        self._latest: dict[tuple[str, str, str | None, int], ReceivedKey] = {}
        #: user ID -> (arrival number -> key); users in order of their latest key
        self._pending: OrderedDict[str, OrderedDict[int, ReceivedKey]] = OrderedDict()
        self._next = 0
        self.max_per_sender = max_per_sender
        self.max_senders = max_senders

    def is_stale(self, k: ReceivedKey) -> bool:
        """An older key for the same device and index than one already applied."""
        prev = self._latest.get((k.user_id, k.device_id, k.member_id, k.key.index))
        return (
            prev is not None
            and prev.sent_ts is not None
            and k.sent_ts is not None
            and k.sent_ts < prev.sent_ts
        )

    def applied(self, k: ReceivedKey) -> None:
        self._latest[(k.user_id, k.device_id, k.member_id, k.key.index)] = k

    def hold(self, k: ReceivedKey) -> None:
        mine = self._pending.setdefault(k.user_id, OrderedDict())
        self._pending.move_to_end(k.user_id)
        mine[self._next] = k
        self._next += 1
        while len(mine) > self.max_per_sender:
            dropped = mine.popitem(last=False)[1]
            log.info("dropping a held media key from %s/%s", dropped.user_id, dropped.device_id)
        while len(self._pending) > self.max_senders:
            user, keys = self._pending.popitem(last=False)
            log.info("dropping %d held media keys from %s", len(keys), user)

    def take_pending(self, devices: set[tuple[str, str]]) -> list[ReceivedKey]:
        """Held keys whose device is now a member, in arrival order."""
        ready: list[tuple[int, ReceivedKey]] = []
        for user in {u for u, _ in devices} & self._pending.keys():
            held = self._pending[user]
            for n in [n for n, k in held.items() if (user, k.device_id) in devices]:
                ready.append((n, held.pop(n)))
            if not held:
                del self._pending[user]
        return [k for _, k in sorted(ready, key=lambda item: item[0])]

    def has_key_from(self, user_id: str, device_id: str) -> bool:
        return any(u == user_id and d == device_id for u, d, _, _ in self._latest)

    def clear(self) -> None:
        self._latest.clear()
        self._pending.clear()
