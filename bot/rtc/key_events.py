"""Media key to-device events: the wire forms the bot reads and the ones it sends.

Two forms exist (docs/protocol.md, "Media keys"):

- ``io.element.call.encryption_keys``, what matrix-js-sdk 43 and Element Call 0.26 send
  (js ``ToDeviceKeyTransport.ts``, ``types.ts`` ``EncryptionKeysToDeviceEventContent``):
  ``{keys: {index, key}, member: {id, claimed_device_id}, room_id, session, sent_ts}``,
  16 random bytes in padded base64. The device is a claim: it must equal the Olm sender's.
- ``m.rtc.encryption_key`` / ``org.matrix.msc4143.rtc.encryption_key`` (MSC4143 with
  MSC4516 merged, Jul 2026): ``{room_id, member_id, media_key: {index, key, format}}``,
  keys of at least 32 bytes (MSC4195) in unpadded base64. It names no device at all:
  sender and device are the Olm decryption's only.

Parsing never raises on input from the network and never logs key bytes.
"""

from __future__ import annotations

import base64
import binascii
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal

from bot.rtc.keys import INDEX_MODULUS, MediaKey, ReceivedKey, key_length_problem
from bot.rtc.membership import CallMembership

log = logging.getLogger(__name__)

ELEMENT_CALL_TYPE = "io.element.call.encryption_keys"
SPEC_TYPE = "m.rtc.encryption_key"
SPEC_UNSTABLE_TYPE = "org.matrix.msc4143.rtc.encryption_key"
SPEC_TYPES = frozenset({SPEC_TYPE, SPEC_UNSTABLE_TYPE})
#: every to-device type whose content is a media key
KEY_EVENT_TYPES = frozenset({ELEMENT_CALL_TYPE, *SPEC_TYPES})
#: MSC4143's key format field: 0 is the raw key fed to HKDF, the only one defined.
SPEC_KEY_FORMAT = 0

KeyEventFormat = Literal["element_call", "spec", "both"]
#: Element Call's key length, and the spec's minimum (MSC4195): what the bot generates.
ELEMENT_CALL_KEY_BYTES = 16
SPEC_KEY_BYTES = 32


def key_maker(fmt: KeyEventFormat) -> Callable[[int], MediaKey]:
    """How our own keys are made for ``fmt``: a key sent in the spec form must be at least
    32 bytes, and with "both" the same key goes out in both forms (js accepts any length)."""
    size = ELEMENT_CALL_KEY_BYTES if fmt == "element_call" else SPEC_KEY_BYTES
    return lambda index: MediaKey.generate(index, size)


def encode_key_content(
    room_id: str, key: MediaKey, device_id: str, member_id: str, now_ms: int
) -> dict[str, Any]:
    """The plaintext content matrix-js-sdk 43 sends (ToDeviceKeyTransport)."""
    return {
        "keys": {"index": key.index, "key": base64.b64encode(key.key).decode("ascii")},
        "member": {"claimed_device_id": device_id, "id": member_id},
        "room_id": room_id,
        "session": {"application": "m.call", "call_id": "", "scope": "m.room"},
        "sent_ts": now_ms,
    }


def encode_spec_content(room_id: str, key: MediaKey, member_id: str) -> dict[str, Any]:
    """MSC4143's ``m.rtc.encryption_key`` content: no device (the Olm session says it)."""
    return {
        "room_id": room_id,
        "member_id": member_id,
        "media_key": {
            "index": key.index,
            "key": base64.b64encode(key.key).decode("ascii").rstrip("="),
            "format": SPEC_KEY_FORMAT,
        },
    }


def encode_key_events(
    fmt: KeyEventFormat,
    room_id: str,
    key: MediaKey,
    device_id: str,
    member_id: str,
    now_ms: int,
) -> list[tuple[str, dict[str, Any]]]:
    """(event type, content) pairs to Olm-send for ``key`` under ``rtc.key_event_format``.

    The spec form goes out under its stable name only: the unstable name exists for
    readers that predate the merge, and no sender is known to need it.
    """
    out: list[tuple[str, dict[str, Any]]] = []
    if fmt in ("element_call", "both"):
        out.append(
            (ELEMENT_CALL_TYPE, encode_key_content(room_id, key, device_id, member_id, now_ms))
        )
    if fmt in ("spec", "both"):
        out.append((SPEC_TYPE, encode_spec_content(room_id, key, member_id)))
    return out


def decode_key(text: str) -> bytes:
    """Lenient base64 like js decodeBase64: padded or not, standard or URL alphabet."""
    cleaned = text.strip().replace("-", "+").replace("_", "/").rstrip("=")
    return base64.b64decode(cleaned + "=" * (-len(cleaned) % 4), validate=True)


def _index_problem(index: Any) -> str | None:
    if not isinstance(index, int) or isinstance(index, bool):
        return "no index"
    if not 0 <= index < INDEX_MODULUS:
        return "index outside 0..255"
    return None


def _raw_key(text: str) -> tuple[bytes | None, str | None]:
    try:
        raw = decode_key(text)
    except (binascii.Error, ValueError):
        raw = b""
    if not raw:
        return None, "key is not base64"
    if why := key_length_problem(len(raw)):
        return None, why
    return raw, None


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def parse_key_content(
    content: Mapping[str, Any], sender: str, room_id: str, received_at: float
) -> ReceivedKey | None:
    """An ``io.element.call.encryption_keys`` content; None (with a log line) if unusable.

    ``device_id`` is the content's claim: the caller compares it with the Olm sender's.
    """
    why = None
    keys = content.get("keys") if isinstance(content, Mapping) else None
    member = content.get("member") if isinstance(content, Mapping) else None
    if not isinstance(content, Mapping) or content.get("room_id") != room_id:
        why = "not for this room"
    elif not isinstance(keys, Mapping) or not isinstance(keys.get("key"), str):
        why = "no key"
    elif why := _index_problem(keys.get("index")):
        pass
    elif not isinstance(member, Mapping) or not isinstance(member.get("claimed_device_id"), str):
        why = "no member.claimed_device_id"
    else:
        raw, why = _raw_key(keys["key"])
        if raw is not None:
            member_id = member.get("id")
            return ReceivedKey(
                user_id=sender,
                device_id=member["claimed_device_id"],
                member_id=member_id if isinstance(member_id, str) else None,
                key=MediaKey(raw, keys["index"]),
                sent_ts=_int_or_none(content.get("sent_ts")),
                received_at=received_at,
            )
    log.info("ignoring a media key event from %s: %s", sender, why)
    return None


def parse_spec_content(
    content: Mapping[str, Any],
    sender: str,
    sender_device: str | None,
    room_id: str,
    received_at: float,
) -> ReceivedKey | None:
    """An ``m.rtc.encryption_key`` content (either name); None (with a log line) if unusable.

    The device is ``sender_device``, what the Olm session established: MSC4143 carries no
    device in the content, so nothing in it can claim one.
    """
    why = None
    media = content.get("media_key") if isinstance(content, Mapping) else None
    if not isinstance(content, Mapping) or content.get("room_id") != room_id:
        why = "not for this room"
    elif sender_device is None:
        why = "the Olm sender's device is unknown"
    elif not isinstance(content.get("member_id"), str):
        why = "no member_id"
    elif not isinstance(media, Mapping) or not isinstance(media.get("key"), str):
        why = "no media_key.key"
    elif why := _index_problem(media.get("index")):
        pass
    elif media.get("format", SPEC_KEY_FORMAT) != SPEC_KEY_FORMAT:
        why = "unknown media_key.format"
    else:
        raw, why = _raw_key(media["key"])
        if raw is not None:
            assert sender_device is not None  # checked above
            return ReceivedKey(
                user_id=sender,
                device_id=sender_device,
                member_id=content["member_id"],
                key=MediaKey(raw, media["index"]),
                sent_ts=None,  # the spec form has none: the latest received wins, as in js
                received_at=received_at,
            )
    log.info("ignoring a media key event from %s: %s", sender, why)
    return None


def parse_key_event(
    event_type: str,
    content: Mapping[str, Any],
    sender: str,
    sender_device: str | None,
    room_id: str,
    received_at: float,
) -> ReceivedKey | None:
    """A decrypted key event of any known form; None if unusable or of another type.

    ``sender`` and ``sender_device`` must come from the Olm decryption
    (``todevice.DecryptedToDeviceEvent``) and nowhere else.
    """
    if event_type == ELEMENT_CALL_TYPE:
        return parse_key_content(content, sender, room_id, received_at)
    if event_type in SPEC_TYPES:
        return parse_spec_content(content, sender, sender_device, room_id, received_at)
    return None


def claimed_member_of_another_device(
    event_type: str,
    content: Mapping[str, Any],
    sender: str,
    sender_device: str | None,
    members: Iterable[CallMembership],
) -> bool:
    """A spec-form key whose ``member_id`` is a current membership of another device.

    MSC4143: recipients check sender and device against the member event. A key from one
    device naming another's membership would otherwise be installed under the right device
    but announced for the wrong member; it is refused instead.
    """
    if event_type not in SPEC_TYPES or not isinstance(content, Mapping):
        return False
    member_id = content.get("member_id")
    return any(
        m.member_id == member_id and m.device_key != (sender, sender_device) for m in members
    )
