"""Call notifications (MSC4075) and their declines (MSC4310).

What matrix-js-sdk 43 sends when it starts a call (js ``MatrixRTCSession.ts``
``sendCallNotify``): ``org.matrix.msc4075.rtc.notification`` with ``{slot_id, m.mentions,
notification_type, m.relates_to (m.reference to the membership), sender_ts, lifetime,
msc4354_sticky_key = slot_id, m.call.intent}``. Receivers cap the lifetime at 2 minutes
and measure it from ``origin_server_ts`` when ``sender_ts`` is more than 20 s ahead of it
(js ``types.ts`` ``getCallNotificationExpiry``). A decline is
``org.matrix.msc4310.rtc.decline`` with an ``m.reference`` to the notification (js
``client.ts`` ``sendRtcDecline``, ``types.ts`` ``IRTCDeclineContent``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeGuard

NOTIFICATION_TYPE = "org.matrix.msc4075.rtc.notification"
DECLINE_TYPE = "org.matrix.msc4310.rtc.decline"
#: js RTC_NOTIFICATION_MAX_LIFETIME_MS and RTC_NOTIFICATION_MAX_SENDER_TS_AHEAD_MS
MAX_LIFETIME_MS = 120_000
MAX_SENDER_TS_AHEAD_MS = 20_000
#: what the bot asks for: enough to pick up, well under the cap
DEFAULT_LIFETIME_MS = 30_000
#: declines kept per room (a hostile member could send any number)
MAX_DECLINES = 50


def notification_content(
    *,
    slot_id: str,
    notification_type: str,
    membership_event_id: str,
    now_ms: int,
    lifetime_ms: int = DEFAULT_LIFETIME_MS,
    call_intent: str | None = "audio",
) -> dict[str, Any]:
    content: dict[str, Any] = {
        "slot_id": slot_id,
        "m.mentions": {"user_ids": [], "room": True},
        "notification_type": notification_type,
        "m.relates_to": {"rel_type": "m.reference", "event_id": membership_event_id},
        "sender_ts": now_ms,
        "lifetime": min(lifetime_ms, MAX_LIFETIME_MS),
        "msc4354_sticky_key": slot_id,
    }
    if call_intent:
        content["m.call.intent"] = call_intent
    return content


def _non_negative_int(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


@dataclass(frozen=True)
class CallNotification:
    event_id: str
    sender: str
    slot_id: str | None
    expires_ms: int


def parse_notification(event: Mapping[str, Any]) -> CallNotification | None:
    """A notification event; None if malformed. ``expires_ms`` as js computes it."""
    content, event_id = event.get("content"), event.get("event_id")
    sender, ots = event.get("sender"), event.get("origin_server_ts")
    if event.get("type") != NOTIFICATION_TYPE or not isinstance(content, dict):
        return None
    if not (isinstance(event_id, str) and isinstance(sender, str) and _non_negative_int(ots)):
        return None
    sender_ts, lifetime = content.get("sender_ts"), content.get("lifetime")
    if not (_non_negative_int(sender_ts) and _non_negative_int(lifetime)):
        return None
    slot_id = content.get("slot_id")
    if slot_id is not None and (not isinstance(slot_id, str) or slot_id.count("#") != 1):
        return None
    basis = ots if sender_ts - ots > MAX_SENDER_TS_AHEAD_MS else sender_ts
    return CallNotification(
        event_id=event_id,
        sender=sender,
        slot_id=slot_id,
        expires_ms=basis + min(lifetime, MAX_LIFETIME_MS),
    )


@dataclass(frozen=True)
class Decline:
    user_id: str
    notification_id: str
    ts: int


def parse_decline(event: Mapping[str, Any]) -> Decline | None:
    content, sender, ts = event.get("content"), event.get("sender"), event.get("origin_server_ts")
    if event.get("type") != DECLINE_TYPE or not isinstance(content, dict):
        return None
    rel = content.get("m.relates_to")
    if not (
        isinstance(rel, dict)
        and rel.get("rel_type") == "m.reference"
        and isinstance(rel.get("event_id"), str)
        and isinstance(sender, str)
        and _non_negative_int(ts)
    ):
        return None
    return Decline(user_id=sender, notification_id=rel["event_id"], ts=ts)


class NotificationLog:
    """One room's latest call notification and who declined it (for ``!status``)."""

    def __init__(self) -> None:
        self.latest: CallNotification | None = None
        self._declines: dict[str, list[Decline]] = {}

    def add_event(self, event: Mapping[str, Any]) -> bool:
        """Take a timeline event; True if it was a notification or a decline."""
        if (n := parse_notification(event)) is not None:
            self.latest = n
            self._declines = {k: v for k, v in self._declines.items() if k == n.event_id}
            return True
        if (d := parse_decline(event)) is not None:
            held = self._declines.setdefault(d.notification_id, [])
            if d.user_id not in {x.user_id for x in held} and len(held) < MAX_DECLINES:
                held.append(d)
            if len(self._declines) > MAX_DECLINES:  # declines of notifications never seen
                self._declines.pop(next(iter(self._declines)))
            return True
        return False

    def declines(self) -> list[Decline]:
        """Who declined the latest notification."""
        if self.latest is None:
            return []
        return list(self._declines.get(self.latest.event_id, []))
