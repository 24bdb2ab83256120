"""Olm-encrypted to-device messages of custom types (e.g. ``io.element.call.encryption_keys``).

matrix-nio 0.26 decrypts Olm to-device events but throws the plaintext away unless its type
is ``m.room_key``, ``m.forwarded_room_key`` or ``m.dummy``: ``Olm._handle_olm_event`` logs
"Received unsupported Olm event" and returns None, and the callback then sees the still
encrypted event. ``install()`` wraps that method so other types come through as
``DecryptedToDeviceEvent``. nio has no public way to Olm-encrypt a custom event either, so
``send_encrypted`` uses ``Olm._olm_encrypt``.

Both are private nio internals: matrix-nio is pinned exactly in pyproject.toml,
``check_nio_internals()`` runs before patching and fails loudly if they change, and
tests/test_todevice.py checks the behaviour against a real homeserver.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import version
from typing import Any

import nio
from nio import ToDeviceMessage, UnknownToDeviceEvent
from nio.crypto.olm_machine import Olm

from bot.errors import IncompatibleDependency, MatrixError

log = logging.getLogger(__name__)

TESTED_NIO_VERSION = "0.26.0"
#: Types nio itself handles after decrypting; everything else is ours.
NIO_OLM_TYPES = frozenset({"m.room_key", "m.forwarded_room_key", "m.dummy"})


@dataclass
class DecryptedToDeviceEvent(UnknownToDeviceEvent):
    """An Olm-decrypted to-device event of a type nio does not handle.

    ``sender`` is the server-asserted sender (nio checked it equals the payload's);
    ``sender_device`` is the device the payload claims, and ``keys_match`` is True only when
    that device's published curve25519 key is the Olm session's key and its ed25519 key is
    the one in the payload, i.e. the claim is backed by the cryptography. It is False when
    the device's keys were not known yet: ``check_sender_device`` fetches them and decides.
    """

    content: dict[str, Any] = field(default_factory=dict)
    sender_key: str = ""
    sender_device: str | None = None
    claimed_ed25519: str | None = None
    keys_match: bool = False


#: The private nio methods we call or wrap, with the parameters we rely on.
_NIO_INTERNALS = {
    "_handle_olm_event": ["self", "sender", "sender_key", "payload"],
    "_olm_encrypt": ["self", "session", "recipient_device", "message_type", "content"],
}


def check_nio_internals() -> None:
    """Raise IncompatibleDependency if the nio internals we rely on are not as expected."""
    problems = []
    for name, params in _NIO_INTERNALS.items():
        method = getattr(Olm, name, None)
        if method is None or list(inspect.signature(method).parameters) != params:
            problems.append(f"Olm.{name}({', '.join(params)}) changed")
    if problems:
        raise IncompatibleDependency(
            f"matrix-nio {version('matrix-nio')} is not compatible with bot.matrix.todevice "
            f"(tested with {TESTED_NIO_VERSION}): " + "; ".join(problems)
        )


_installed = False


def install() -> None:
    """Patch nio (once per process) so custom decrypted to-device events reach callbacks."""
    global _installed
    if _installed:
        return
    check_nio_internals()
    original = Olm._handle_olm_event

    @functools.wraps(original)
    def _handle_olm_event(self: Olm, sender: str, sender_key: str, payload: dict[str, Any]):
        event_type = payload.get("type")
        if event_type in NIO_OLM_TYPES or not isinstance(event_type, str):
            return original(self, sender, sender_key, payload)
        device_id = payload.get("sender_device")
        claimed = (payload.get("keys") or {}).get("ed25519")
        content = payload.get("content")
        event = DecryptedToDeviceEvent(
            source=payload,
            sender=sender,
            type=event_type,
            content=content if isinstance(content, dict) else {},
            sender_key=sender_key,
            sender_device=device_id if isinstance(device_id, str) else None,
            claimed_ed25519=claimed if isinstance(claimed, str) else None,
        )
        event.keys_match = _keys_match(self, event)
        return event

    Olm._handle_olm_event = _handle_olm_event
    _installed = True


def _keys_match(olm: Olm, event: DecryptedToDeviceEvent) -> bool:
    """Check the claimed device against its published keys.

    nio puts ``sender_device`` in its payloads; the Rust crypto of matrix-js-sdk and Element
    does not, so without a claim the device is the one whose curve25519 key is the Olm
    session's (and ``sender_device`` is filled in from it).
    """
    if event.claimed_ed25519 is None:
        return False
    devices = olm.device_store[event.sender]
    if event.sender_device is not None:
        device = devices.get(event.sender_device)
    else:
        device = next((d for d in devices.values() if d.curve25519 == event.sender_key), None)
    match = bool(
        device is not None
        and device.curve25519 == event.sender_key
        and device.ed25519 == event.claimed_ed25519
    )
    if match and event.sender_device is None:
        event.sender_device = device.id
    return match


async def check_sender_device(client: nio.AsyncClient, event: DecryptedToDeviceEvent) -> bool:
    """Whether the event really comes from ``event.sender_device``; fetches its keys if unknown.

    Use before trusting the content (e.g. accepting a media key from a call member).
    """
    olm = client.olm
    if olm is None:
        raise MatrixError("encryption is not set up on this client")
    if not event.keys_match:
        known = olm.device_store[event.sender]
        if event.sender_device not in known or event.sender_device is None:
            await _key_queries(client).refresh(client, event.sender)
        event.keys_match = _keys_match(olm, event)
    return event.keys_match


#: a sender's devices are queried again at most this often for events from unknown devices
MIN_REQUERY_S = 10.0
#: senders whose last query time is kept (the oldest are forgotten)
MAX_QUERIED_SENDERS = 10_000


class KeyQueries:
    """Device-key queries for senders of events from devices we do not know: one request at a
    time (callers waiting meanwhile are served by it), and one per sender every
    MIN_REQUERY_S at most: a flood from made-up devices would otherwise cost a /keys/query
    per event."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._lock = asyncio.Lock()
        self._last: dict[str, float] = {}
        self._clock = clock
        self.requests = 0

    async def refresh(self, client: nio.AsyncClient, user_id: str) -> None:
        olm = client.olm
        assert olm is not None
        now = self._clock()
        last = self._last.get(user_id)
        if last is not None and now - last < MIN_REQUERY_S:
            return
        self._last[user_id] = now
        if len(self._last) > MAX_QUERIED_SENDERS:
            self._last = dict(list(self._last.items())[MAX_QUERIED_SENDERS // 2 :])
        olm.users_for_key_query.add(user_id)
        async with self._lock:
            if user_id not in olm.users_for_key_query:
                return  # the query that held the lock asked for this user too
            self.requests += 1
            await client.keys_query()


_queries: weakref.WeakKeyDictionary[nio.AsyncClient, KeyQueries] = weakref.WeakKeyDictionary()


def _key_queries(client: nio.AsyncClient) -> KeyQueries:
    queries = _queries.get(client)
    if queries is None:
        queries = _queries[client] = KeyQueries()
    return queries


async def send_encrypted(
    client: nio.AsyncClient, user_id: str, device_id: str, event_type: str, content: dict
) -> None:
    """Olm-encrypt ``{type, content}`` for one device and send it; claims a session if needed."""
    olm = client.olm
    if olm is None:
        raise MatrixError("encryption is not set up on this client")
    if device_id not in olm.device_store[user_id]:
        olm.users_for_key_query.add(user_id)
        await client.keys_query()
    device = olm.device_store[user_id].get(device_id)
    if device is None:
        raise MatrixError(f"unknown device {device_id} of {user_id}")
    if olm.is_device_blacklisted(device):
        raise MatrixError(
            f"device {device_id} of {user_id} is excluded (blacklisted, or not cross-signed "
            "by its owner)"
        )
    session = olm.session_store.get(device.curve25519)
    if session is None:
        # nio verifies the one-time key's signature and creates the outbound session.
        await client.keys_claim({user_id: [device_id]})
        session = olm.session_store.get(device.curve25519)
        if session is None:
            raise MatrixError(f"could not open an Olm session with {user_id}/{device_id}")
    payload = olm._olm_encrypt(session, device, event_type, content)
    resp = await client.to_device(ToDeviceMessage("m.room.encrypted", user_id, device_id, payload))
    if isinstance(resp, nio.ToDeviceError):
        raise MatrixError(f"sending {event_type} to {user_id}/{device_id} failed: {resp.message}")
