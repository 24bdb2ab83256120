"""LiveKit transport descriptions (MatrixRTC "foci"), in the forms they come in.

matrix-js-sdk 43 and Element Call 0.26 read and write ``{type: "livekit",
livekit_service_url}`` only (js ``LivekitTransport.ts`` ``isLivekitTransportConfig``).
MSC4195 renames them to ``{type: "m.livekit", url}``; Synapse's ``rtc/transports`` still
returns ``livekit_service_url`` too (shared/docs/matrixrtc-2026.md). The bot reads both
and keeps the js form internally and on the wire, so js clients can follow its focus.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

LIVEKIT = "livekit"
LIVEKIT_SPEC = "m.livekit"
LIVEKIT_TYPES = frozenset({LIVEKIT, LIVEKIT_SPEC})


def service_url(transport: Mapping[str, Any]) -> str | None:
    """The JWT service URL of a LiveKit transport in either form; None if it is not one."""
    if transport.get("type") not in LIVEKIT_TYPES:
        return None
    for key in ("livekit_service_url", "url"):
        value = transport.get(key)
        if isinstance(value, str) and value:
            return value
    return None


def normalize(transport: Mapping[str, Any]) -> dict[str, Any]:
    """A LiveKit transport in js's form (``livekit`` / ``livekit_service_url``); any other
    transport unchanged. ``url`` is dropped once copied: js would not read it."""
    url = service_url(transport)
    if url is None:
        return dict(transport)
    rest = {k: v for k, v in transport.items() if k not in ("type", "url", "livekit_service_url")}
    return {"type": LIVEKIT, "livekit_service_url": url, **rest}


def is_livekit(transport: Mapping[str, Any]) -> bool:
    return service_url(transport) is not None
