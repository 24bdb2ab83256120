"""Media keys: the wire format, our own key's rotation rules, and the keys others send us.

Follows matrix-js-sdk's ``RTCEncryptionManager`` and ``ToDeviceKeyTransport``
(``src/matrixrtc/RTCEncryptionManager.ts``, ``ToDeviceKeyTransport.ts``): 16-byte keys, index
0..255 wrapping, sent Olm-encrypted as ``io.element.call.encryption_keys``; on a leave a new
key goes to everyone, on joins within the grace period the current key goes to the joiners
only, and a new key is used locally only ``USE_KEY_DELAY_MS`` after it was sent. Key bytes
never appear in a repr or a log line.
"""

from __future__ import annotations

import base64
import binascii
import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

KEYS_EVENT_TYPE = "io.element.call.encryption_keys"
KEY_BYTES = 16
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
        # The only format read (io.element.call.encryption_keys) carries 16 random bytes; a
        # key of another length is a broken or hostile sender, never something to encrypt
        # with. (The message gives the length only: key bytes never reach a log.)
        if len(self.key) != KEY_BYTES:
            raise ValueError(f"a media key is {KEY_BYTES} bytes, not {len(self.key)}")

    @classmethod
    def generate(cls, index: int) -> MediaKey:
        return cls(secrets.token_bytes(KEY_BYTES), index % INDEX_MODULUS)


@dataclass(frozen=True)
class ReceivedKey:
    """A key another device sent us (not yet matched to a membership)."""

    user_id: str
    device_id: str
    member_id: str | None
    key: MediaKey
    sent_ts: int | None
    received_at: float


def encode_key_content(
    room_id: str, key: MediaKey, device_id: str, member_id: str, now_ms: int
) -> dict[str, Any]:
    """The plaintext content matrix-js-sdk sends (ToDeviceKeyTransport)."""
    return {
        "keys": {"index": key.index, "key": base64.b64encode(key.key).decode("ascii")},
        "member": {"claimed_device_id": device_id, "id": member_id},
        "room_id": room_id,
        "session": {"application": "m.call", "call_id": "", "scope": "m.room"},
        "sent_ts": now_ms,
    }


def decode_key(text: str) -> bytes:
    """Lenient base64 like js decodeBase64: padded or not, standard or URL alphabet."""
    cleaned = text.strip().replace("-", "+").replace("_", "/").rstrip("=")
    return base64.b64decode(cleaned + "=" * (-len(cleaned) % 4), validate=True)


def parse_key_content(
    content: Mapping[str, Any], sender: str, room_id: str, received_at: float
) -> ReceivedKey | None:
    """Validate a decrypted key event's content; None (with a log line) if it is unusable."""
    why = None
    keys = content.get("keys") if isinstance(content, Mapping) else None
    member = content.get("member") if isinstance(content, Mapping) else None
    if not isinstance(content, Mapping) or content.get("room_id") != room_id:
        why = "not for this room"
    elif not isinstance(keys, Mapping) or not isinstance(keys.get("key"), str):
        why = "no key"
    elif not isinstance(keys.get("index"), int) or isinstance(keys.get("index"), bool):
        why = "no index"
    elif not 0 <= keys["index"] < INDEX_MODULUS:
        why = "index outside 0..255"
    elif not isinstance(member, Mapping) or not isinstance(member.get("claimed_device_id"), str):
        why = "no member.claimed_device_id"
    if why is None:
        assert isinstance(keys, Mapping) and isinstance(member, Mapping)  # the checks above
        try:
            raw = decode_key(keys["key"])
        except (binascii.Error, ValueError):
            raw = b""
        if not raw:
            why = "key is not base64"
        elif len(raw) != KEY_BYTES:
            why = f"the key is {len(raw)} bytes, not {KEY_BYTES}"
        else:
            member_id = member.get("id")
            sent_ts = content.get("sent_ts")
            return ReceivedKey(
                user_id=sender,
                device_id=member["claimed_device_id"],
                member_id=member_id if isinstance(member_id, str) else None,
                key=MediaKey(raw, keys["index"]),
                sent_ts=(
                    sent_ts if isinstance(sent_ts, int) and not isinstance(sent_ts, bool) else None
                ),
                received_at=received_at,
            )
    log.info("ignoring a media key event from %s: %s", sender, why)
    return None


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
