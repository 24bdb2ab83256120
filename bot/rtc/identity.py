"""LiveKit participant identities and room names, as the MatrixRTC JWT service computes them.

- A legacy (state event) membership publishes as ``"{user_id}:{device_id}"``.
- A sticky (``rtc.member``) membership publishes as the hash of ``[user_id, device_id, member.id]``.
- The LiveKit room is the hash of ``[room_id, slot_id]``.

The hash is unpadded standard base64 of SHA-256 over compact JSON (MSC4195;
lk-jwt-service ``helper.go``). The service marshals with Go's encoding/json, which escapes
``<``, ``>``, ``&``, U+2028 and U+2029; matrix-js-sdk's ``JSON.stringify`` does not. Identities
of remote members are computed the js way (that is what other clients match against);
names we mint tokens for are computed the Go way (what the service would issue).
"""

from __future__ import annotations

import base64
import hashlib
import json

_GO_ESCAPES = str.maketrans(
    {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}
)


def _hash(parts: list[str], *, go_escaping: bool) -> str:
    text = json.dumps(parts, separators=(",", ":"), ensure_ascii=False)
    if go_escaping:
        text = text.translate(_GO_ESCAPES)
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    return base64.b64encode(digest).decode("ascii").rstrip("=")


def legacy_identity(user_id: str, device_id: str) -> str:
    return f"{user_id}:{device_id}"


def hashed_identity(user_id: str, device_id: str, member_id: str, *, go: bool = False) -> str:
    return _hash([user_id, device_id, member_id], go_escaping=go)


def livekit_room_alias(room_id: str, slot_id: str) -> str:
    return _hash([room_id, slot_id], go_escaping=True)
