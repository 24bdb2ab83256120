"""Call memberships: parsing both wire forms and computing the active member list.

Follows matrix-js-sdk (``CallMembership.ts``, ``membershipData/session.ts`` and ``rtc.ts``,
``MatrixRTCSession.ts``, all in ``src/matrixrtc/``), not the MSC texts (MSC3401, MSC4143),
where they differ. Malformed events are dropped with a log line; the parsers never raise on
input from the network.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from bot.rtc import transport
from bot.rtc.identity import hashed_identity, legacy_identity

log = logging.getLogger(__name__)

LEGACY_TYPE = "org.matrix.msc3401.call.member"
LEGACY_TYPE_OLD = "m.call.member"
LEGACY_TYPES = (LEGACY_TYPE, LEGACY_TYPE_OLD)
STICKY_TYPE = "org.matrix.msc4143.rtc.member"
STICKY_KEY = "msc4354_sticky_key"
DEFAULT_APPLICATION = "m.call"
DEFAULT_SLOT_ID = "m.call#ROOM"
#: js DEFAULT_EXPIRE_DURATION: legacy memberships live 4 h from created_ts unless "expires" says.
DEFAULT_EXPIRE_MS = 14_400_000

_MXID = re.compile(r"@[^:]+:.+")

Transport = Mapping[str, Any]


@dataclass(frozen=True)
class CallMembership:
    """One device's membership of a call slot, from either wire form."""

    kind: Literal["legacy", "rtc"]
    event_id: str
    user_id: str
    device_id: str
    application: str
    slot_id: str
    #: legacy: "{user}:{device}"; rtc: member.id (a fresh UUID per join in Element Call)
    member_id: str
    #: legacy foci_preferred / rtc rtc_transports; [0] is where the member publishes
    transports: tuple[Transport, ...]
    created_ts: int
    origin_server_ts: int
    focus_selection: str | None = None  # legacy focus_active.focus_selection
    expires_ms: int | None = None  # legacy "expires", relative to created_ts
    call_intent: str | None = None
    state_key: str | None = None

    @property
    def rtc_backend_identity(self) -> str:
        """The LiveKit participant identity this member publishes under."""
        if self.kind == "legacy":
            return legacy_identity(self.user_id, self.device_id)
        return hashed_identity(self.user_id, self.device_id, self.member_id)

    def absolute_expiry(self) -> int | None:
        """Milliseconds since the epoch when a legacy membership expires (None for rtc)."""
        if self.kind != "legacy":
            return None
        return self.created_ts + (
            self.expires_ms if self.expires_ms is not None else DEFAULT_EXPIRE_MS
        )

    def time_until_expiry(self, now_ms: int) -> int | None:
        expiry = self.absolute_expiry()
        return None if expiry is None else expiry - now_ms

    def is_expired(self, now_ms: int) -> bool:
        expiry = self.absolute_expiry()
        return expiry is not None and now_ms >= expiry

    def transport(self, oldest: CallMembership | None) -> Transport | None:
        """The SFU this member publishes on (js CallMembership.getTransport)."""
        if self.kind == "rtc":
            return self.transports[0] if self.transports else None
        if self.focus_selection == "multi_sfu":
            return self.transports[0] if self.transports else None
        if self.focus_selection == "oldest_membership":
            source = oldest or self
            return source.transports[0] if source.transports else None
        return None

    @property
    def device_key(self) -> tuple[str, str]:
        return (self.user_id, self.device_id)


# --------------------------------------------------------------------------- parsing


class _Invalid(ValueError):
    pass


def _get(content: Mapping[str, Any], key: str, kind: type | tuple[type, ...], required: bool):
    value = content.get(key)
    if value is None:
        if required:
            raise _Invalid(f"missing {key}")
        return None
    if isinstance(value, bool) and kind in (int, (int, float)):
        raise _Invalid(f"{key} must be a number")
    if not isinstance(value, kind):
        raise _Invalid(f"{key} has the wrong type")
    return value


def _transports(value: Any, key: str) -> tuple[Transport, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(
        isinstance(t, dict) and isinstance(t.get("type"), str) for t in value
    ):
        raise _Invalid(f"{key} must be a list of objects with a string type")
    return tuple(transport.normalize(t) for t in value)  # m.livekit/url read as livekit


def _rtc_transports(content: Mapping[str, Any]) -> tuple[Transport, ...]:
    """matrix-js-sdk 43 sends ``transports: {published: [...], can_subscribe: [...]}``;
    its later develop branch and MSC4143's earlier text ``rtc_transports: [...]``. Either."""
    if "transports" in content:
        t = content["transports"]
        if not isinstance(t, dict):
            raise _Invalid("transports must be an object")
        subscribe = t.get("can_subscribe")
        if not isinstance(subscribe, list) or not all(isinstance(s, str) for s in subscribe):
            raise _Invalid("transports.can_subscribe must be a list of strings")
        if "published" not in t:
            raise _Invalid("missing transports.published")
        return _transports(t["published"], "transports.published")
    if "rtc_transports" in content:
        return _transports(content["rtc_transports"], "rtc_transports")
    raise _Invalid("missing transports")


def _event_basics(event: Mapping[str, Any]) -> tuple[str, str, int, Mapping[str, Any]]:
    sender, event_id = event.get("sender"), event.get("event_id")
    ts, content = event.get("origin_server_ts"), event.get("content")
    if not isinstance(sender, str) or not _MXID.fullmatch(sender):
        raise _Invalid("bad sender")
    if not isinstance(event_id, str):
        raise _Invalid("bad event_id")
    if not isinstance(ts, int) or isinstance(ts, bool):
        raise _Invalid("bad origin_server_ts")
    if not isinstance(content, dict):
        raise _Invalid("content is not an object")
    return sender, event_id, ts, content


def parse_legacy(event: Mapping[str, Any]) -> CallMembership:
    """A legacy state event (js membershipData/session.ts); raises _Invalid."""
    sender, event_id, ts, c = _event_basics(event)
    application = _get(c, "application", str, True)
    call_id = _get(c, "call_id", str, True)
    device_id = _get(c, "device_id", str, True)
    focus_active = _get(c, "focus_active", dict, True)
    if not isinstance(focus_active.get("type"), str):
        raise _Invalid("focus_active.type must be a string")
    _get(c, "scope", str, False)
    created_ts = _get(c, "created_ts", (int, float), False)
    expires = _get(c, "expires", (int, float), False)
    for key, value in (("created_ts", created_ts), ("expires", expires)):
        if value is not None and not math.isfinite(value):
            raise _Invalid(f"{key} must be a finite number")
    intent = _get(c, "m.call.intent", str, False)
    livekit = focus_active["type"] in transport.LIVEKIT_TYPES
    selection = focus_active.get("focus_selection") if livekit else None
    state_key = event.get("state_key")
    return CallMembership(
        kind="legacy",
        event_id=event_id,
        user_id=sender,
        device_id=device_id,
        application=application,
        slot_id=f"{application}#{call_id or 'ROOM'}",
        member_id=legacy_identity(sender, device_id),
        transports=_transports(c.get("foci_preferred"), "foci_preferred"),
        # A membership is not created after it was sent: js puts the first join's
        # origin_server_ts here. A later one is made up, and would make the membership look
        # younger than it is (and outlive its expiry).
        created_ts=min(int(created_ts), ts) if created_ts is not None else ts,
        origin_server_ts=ts,
        focus_selection=selection if isinstance(selection, str) else None,
        expires_ms=int(expires) if expires is not None else None,
        call_intent=intent,
        state_key=state_key if isinstance(state_key, str) else None,
    )


def parse_rtc(event: Mapping[str, Any]) -> CallMembership:
    """A sticky ``rtc.member`` event (js membershipData/rtc.ts); raises _Invalid."""
    sender, event_id, ts, c = _event_basics(event)
    app = _get(c, "application", dict, True)
    app_type = _get(app, "type", str, True)
    if "#" in app_type:
        raise _Invalid("application.type must not contain '#'")
    slot_id = _get(c, "slot_id", str, True)
    if not slot_id.startswith(f"{app_type}#") or slot_id.count("#") != 1:
        raise _Invalid("slot_id must be '<application>#<id>'")
    member = _get(c, "member", dict, True)
    user_id, device_id = _member_identity(member, sender)
    member_id = _get(member, "id", str, True)
    transports = _rtc_transports(c)
    # js 43 requires versions; MSC4143's latest text (member.membership) dropped it.
    versions = _get(c, "versions", list, "membership" not in member) or []
    if not all(isinstance(v, str) for v in versions):
        raise _Invalid("versions must be strings")
    keys = [c.get(k) for k in ("sticky_key", STICKY_KEY) if k in c]
    if not keys or not all(isinstance(k, str) for k in keys) or len(set(keys)) != 1:
        raise _Invalid("sticky_key missing or inconsistent")
    rel = c.get("m.relates_to")
    if rel is not None and not (
        isinstance(rel, dict)
        and rel.get("rel_type") == "m.reference"
        and isinstance(rel.get("event_id"), str)
    ):
        raise _Invalid("m.relates_to must be an m.reference")
    intent = app.get("m.call.intent")
    return CallMembership(
        kind="rtc",
        event_id=event_id,
        user_id=user_id,
        device_id=device_id,
        application=app_type,
        slot_id=slot_id,
        member_id=member_id,
        transports=transports,
        created_ts=ts,
        origin_server_ts=ts,
        call_intent=intent if isinstance(intent, str) else None,
    )


def _member_identity(member: Mapping[str, Any], sender: str) -> tuple[str, str]:
    """(user, device) of an rtc.member's ``member``: js 43's ``{user_id, device_id, id}``,
    or MSC4143's latest ``{id, membership, claimed_device_id}`` (user = the sender)."""
    if "membership" in member:
        if member["membership"] != "join":
            raise _Invalid("member.membership is not join")
        user_id = member.get("user_id", member.get("claimed_user_id", sender))
        device_id = member.get("device_id", member.get("claimed_device_id"))
    else:
        user_id = _get(member, "user_id", str, True)
        device_id = _get(member, "device_id", str, True)
    # js: "member.user_id must match the sender" (no rule lets one user post another's).
    if not isinstance(user_id, str) or not _MXID.fullmatch(user_id) or user_id != sender:
        raise _Invalid("member.user_id must be the sender")
    if not isinstance(device_id, str):
        raise _Invalid("member device_id missing")
    return user_id, device_id


def is_leave(content: Any) -> bool:
    """A membership that says it left: js 43's ``{slot_id?, msc4354_sticky_key}`` (or ``{}``),
    or MSC4143's ``member.membership: "leave"`` (with ``leave_reason``)."""
    if not isinstance(content, dict):
        return False
    if not [k for k in content if k not in ("slot_id", STICKY_KEY, "sticky_key")]:
        return True
    member = content.get("member")
    return isinstance(member, dict) and member.get("membership") == "leave"


def _relevant(content: Any) -> bool:
    """js quickFilterNonRelevantContents: {} (left) and the old MSC3401 array are skipped,
    and so is a spec-form leave."""
    if not isinstance(content, dict) or is_leave(content):
        return False
    keys = [k for k in content if k != STICKY_KEY]
    return len(keys) > 1 and "application" in keys


# --------------------------------------------------------------------------- the member list


def active_memberships(
    *,
    state_events: Iterable[Mapping[str, Any]],
    sticky_events: Iterable[Mapping[str, Any]] = (),
    joined_users: set[str] | frozenset[str],
    slot_id: str = DEFAULT_SLOT_ID,
    now_ms: int,
    room_id: str = "",
) -> list[CallMembership]:
    """The call's members, oldest first, computed as js MatrixRTCSession does (§2.4)."""
    sticky = list(sticky_events)
    sticky_keys = {
        e["content"].get(STICKY_KEY)
        for e in sticky
        if isinstance(e, Mapping)
        and isinstance(e.get("content"), dict)
        and isinstance(e["content"].get(STICKY_KEY), str)
    }
    candidates: list[tuple[str, Mapping[str, Any]]] = [("rtc", e) for e in sticky]
    candidates += [
        ("legacy", e)
        for e in state_events
        if isinstance(e, Mapping)
        and not (isinstance(e.get("state_key"), str) and e["state_key"] in sticky_keys)
    ]
    members: list[CallMembership] = []
    for kind, event in candidates:
        if not isinstance(event, Mapping) or not _relevant(event.get("content")):
            continue
        try:
            m = parse_rtc(event) if kind == "rtc" else parse_legacy(event)
        except _Invalid as e:
            log.info(
                "ignoring a malformed %s membership %s in %s: %s",
                kind,
                str(event.get("event_id"))[:80],
                room_id,
                e,
            )
            continue
        except Exception:  # a parser bug must not take the session down
            log.exception("could not parse a membership in %s", room_id)
            continue
        if m.slot_id != slot_id or m.is_expired(now_ms) or m.user_id not in joined_users:
            continue
        members.append(m)
    members = _one_per_device(members)
    members.sort(key=lambda m: m.created_ts)  # stable, like Array.prototype.sort
    return members


def _one_per_device(members: list[CallMembership]) -> list[CallMembership]:
    """Each device once, by its newest membership event: a device can have memberships under
    several state keys (or sticky keys, an old join lingering), but it is in the call once,
    where it said it is last. (js lists them all; !status, key sharing and the people count
    would count the device several times.)"""
    newest: dict[tuple[str, str], CallMembership] = {}
    for m in members:
        seen = newest.get(m.device_key)
        if seen is None or (m.origin_server_ts, m.event_id) > (
            seen.origin_server_ts,
            seen.event_id,
        ):
            newest[m.device_key] = m
    return [m for m in members if newest[m.device_key] is m]


def transport_of(member: CallMembership, members: Sequence[CallMembership]) -> Transport | None:
    """Where ``member`` publishes, given the whole (sorted) member list."""
    return member.transport(members[0] if members else None)
