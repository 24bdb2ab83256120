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

import inspect
import logging
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
    ``sender_device`` is the device the payload claims, and ``device_verified`` is True only
    when that device's stored curve25519 key is the Olm session's key and its ed25519 key is
    the one in the payload, i.e. the claim is backed by the cryptography.
    """

    content: dict[str, Any] = field(default_factory=dict)
    sender_key: str = ""
    sender_device: str | None = None
    device_verified: bool = False


def check_nio_internals() -> None:
    """Raise IncompatibleDependency if the nio internals we rely on are not as expected."""
    problems = []
    handle = getattr(Olm, "_handle_olm_event", None)
    if handle is None or list(inspect.signature(handle).parameters) != [
        "self",
        "sender",
        "sender_key",
        "payload",
    ]:
        problems.append("Olm._handle_olm_event(self, sender, sender_key, payload) changed")
    encrypt = getattr(Olm, "_olm_encrypt", None)
    if encrypt is None or list(inspect.signature(encrypt).parameters) != [
        "self",
        "session",
        "recipient_device",
        "message_type",
        "content",
    ]:
        problems.append(
            "Olm._olm_encrypt(self, session, recipient_device, message_type, content) changed"
        )
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

    def _handle_olm_event(self: Olm, sender: str, sender_key: str, payload: dict[str, Any]):
        event_type = payload.get("type")
        if event_type in NIO_OLM_TYPES or not isinstance(event_type, str):
            return original(self, sender, sender_key, payload)
        device_id = payload.get("sender_device")
        device = self.device_store[sender].get(device_id) if isinstance(device_id, str) else None
        claimed_ed25519 = (payload.get("keys") or {}).get("ed25519")
        content = payload.get("content")
        return DecryptedToDeviceEvent(
            source=payload,
            sender=sender,
            type=event_type,
            content=content if isinstance(content, dict) else {},
            sender_key=sender_key,
            sender_device=device_id if isinstance(device_id, str) else None,
            device_verified=bool(
                device is not None
                and device.curve25519 == sender_key
                and device.ed25519 == claimed_ed25519
            ),
        )

    Olm._handle_olm_event = _handle_olm_event  # type: ignore[method-assign]
    _installed = True


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
        raise MatrixError(f"device {device_id} of {user_id} is blacklisted")
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
