"""Sticky events (MSC4354, unstable prefix), which MatrixRTC's newer memberships use.

A sticky event is a normal timeline event sent with
``?org.matrix.msc4354.sticky_duration_ms=N``; the homeserver keeps re-delivering it in
``rooms.join.<id>.msc4354_sticky.events`` of /sync until it expires (at most 1 h). nio 0.26
drops that section (and the stickiness fields of the events it decrypts), so ``install()``
wraps ``SyncResponse.from_dict`` to keep the raw sticky events on the response as
``sticky_events``. ``StickyStore`` keeps the current event per
(sender, type, sticky key) the way matrix-js-sdk does (newest ``origin_server_ts``, then
event ID).
"""

from __future__ import annotations

import functools
import logging
import time
import uuid
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import nio

from bot.matrix import rest

log = logging.getLogger(__name__)

FEATURE = "org.matrix.msc4354"
SECTION = "msc4354_sticky"
DURATION_PARAM = "org.matrix.msc4354.sticky_duration_ms"
TTL_KEY = "msc4354_sticky_duration_ttl_ms"
STICKY_KEY = "msc4354_sticky_key"
MAX_DURATION_MS = 3_600_000

_installed = False


def install() -> None:
    """Keep the sticky section of /sync on nio's SyncResponse (once per process)."""
    global _installed
    if _installed:
        return
    original = nio.SyncResponse.from_dict.__func__

    @functools.wraps(original)
    def from_dict(cls: type, parsed_dict: dict[Any, Any]) -> Any:
        response = original(cls, parsed_dict)
        if isinstance(response, nio.SyncResponse):
            joined = (parsed_dict.get("rooms") or {}).get("join") or {}
            response.sticky_events = {
                room_id: _raw_sticky(info) for room_id, info in joined.items()
            }
        return response

    nio.SyncResponse.from_dict = classmethod(from_dict)
    _installed = True


def _raw_sticky(room: Any) -> list[dict[str, Any]]:
    """Sticky events of one joined room as sent: the sticky section and new timeline ones.

    Timeline events are kept raw too, because nio's decrypted copies lose the top-level
    ``msc4354_sticky`` and ``unsigned`` fields that say how long they stay sticky.
    """
    if not isinstance(room, dict):
        return []
    section = (room.get(SECTION) or {}).get("events") or []
    timeline = (room.get("timeline") or {}).get("events") or []
    return [e for e in [*section, *timeline] if isinstance(e, dict) and SECTION in e]


def sticky_events_of(response: nio.SyncResponse, room_id: str) -> list[dict[str, Any]]:
    events = getattr(response, "sticky_events", {}).get(room_id, [])
    return [e for e in events if isinstance(e, dict)]


def decrypted(client: nio.AsyncClient, room_id: str, raw: Mapping[str, Any]) -> dict | None:
    """The event with its plaintext type and content (Megolm-decrypted if need be)."""
    if raw.get("type") != "m.room.encrypted":
        return dict(raw)
    event = nio.MegolmEvent.from_dict({**raw, "room_id": room_id})
    if not isinstance(event, nio.MegolmEvent):
        return None
    event.room_id = room_id
    try:
        plain = client.decrypt_event(event)
    except Exception as e:  # unknown session, bad payload
        log.info("cannot decrypt a sticky event in %s: %s", room_id, e)
        return None
    return {
        **raw,
        "type": getattr(plain, "type", None) or plain.source.get("type"),
        "content": plain.source.get("content", {}),
    }


async def send(
    client: nio.AsyncClient,
    room_id: str,
    event_type: str,
    content: dict[str, Any],
    *,
    sticky_ms: int | None = MAX_DURATION_MS,
    delay_ms: int | None = None,
) -> str:
    """Send a (sticky, optionally delayed) event, Megolm-encrypted in encrypted rooms.

    Returns the event ID, or the delay ID for a delayed event. nio's room_send cannot add
    query parameters, so this does its encryption steps and the PUT itself.
    """
    room = client.rooms.get(room_id)
    if room is not None and room.encrypted and client.olm is not None:
        if not room.members_synced:
            await client.joined_members(room_id)
            if client.should_query_keys:
                await client.keys_query()
        if client.olm.should_share_group_session(room_id):
            await client.share_group_session(room_id, ignore_unverified_devices=True)
        event_type, content = client.encrypt(room_id, event_type, content)
    query: dict[str, Any] = {}
    if sticky_ms is not None:
        query[DURATION_PARAM] = sticky_ms
    if delay_ms is not None:
        query["org.matrix.msc4140.delay"] = delay_ms
    path = (
        f"/_matrix/client/v3/rooms/{quote(room_id, safe='')}/send/"
        f"{quote(event_type, safe='')}/{uuid.uuid4()}"
    )
    answer = await rest.request(
        client, "PUT", path, content, query=query, what=f"sending a sticky {event_type}"
    )
    if delay_ms is not None:
        return rest.delay_id_of(answer, f"scheduling a delayed {event_type}")
    return answer["event_id"]


def sticky_key_of(content: Any) -> str | None:
    """The sticky key: the unstable ``msc4354_sticky_key``, else the stable ``sticky_key``."""
    if not isinstance(content, dict):
        return None
    key = content.get(STICKY_KEY)
    if not isinstance(key, str):
        key = content.get("sticky_key")
    return key if isinstance(key, str) else None


class StickyStore:
    """The live sticky events of one room, by (sender, type, sticky key)."""

    def __init__(self) -> None:
        self._events: dict[tuple[str, str, str], tuple[dict[str, Any], float]] = {}

    def add(self, event: Mapping[str, Any], received_ms: float | None = None) -> bool:
        """Take a (decrypted) event; True if it became the current one for its key."""
        received_ms = time.time() * 1000 if received_ms is None else received_ms
        content = event.get("content")
        sender, event_type = event.get("sender"), event.get("type")
        key = sticky_key_of(content)
        ots = event.get("origin_server_ts")
        if not (
            isinstance(sender, str)
            and isinstance(event_type, str)
            and isinstance(key, str)
            and isinstance(ots, int)
            and not isinstance(ots, bool)
        ):
            return False
        expiry = _expiry(event, received_ms, ots)
        if expiry is None or expiry <= received_ms:
            return False
        slot = (sender, event_type, key)
        current = self._events.get(slot)
        if current is not None:
            old = current[0]
            if (old["origin_server_ts"], old.get("event_id", "")) >= (
                ots,
                event.get("event_id", ""),
            ):
                return False
        self._events[slot] = (dict(event), expiry)
        return True

    def current(self, event_type: str, now_ms: float | None = None) -> list[dict[str, Any]]:
        now_ms = time.time() * 1000 if now_ms is None else now_ms
        for slot in [s for s, (_, exp) in self._events.items() if exp <= now_ms]:
            del self._events[slot]
        return [e for (_, t, _), (e, _) in self._events.items() if t == event_type]

    def next_expiry(self) -> float | None:
        return min((exp for _, exp in self._events.values()), default=None)


def _expiry(event: Mapping[str, Any], received_ms: float, ots: int) -> float | None:
    ttl = (event.get("unsigned") or {}).get(TTL_KEY)
    if isinstance(ttl, int) and not isinstance(ttl, bool):
        return received_ms + min(ttl, MAX_DURATION_MS)
    duration = (event.get(SECTION) or {}).get("duration_ms")
    if isinstance(duration, int) and not isinstance(duration, bool):
        return min(received_ms, ots) + min(duration, MAX_DURATION_MS)
    return None  # not sticky
