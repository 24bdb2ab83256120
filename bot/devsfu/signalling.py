"""The LiveKit signalling websocket (``/rtc``): join, the request loop, leaving.

Every SignalRequest a client sends is handled here; a message that cannot be decoded or
handled is logged and skipped, so no client can take the SFU down with a malformed one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from aiohttp import WSMsgType, web
from livekit.protocol import models as m
from livekit.protocol import rtc as lk

from bot.devsfu._tasks import spawn
from bot.devsfu.auth import Grant
from bot.devsfu.forwarding import LatencyStats
from bot.devsfu.participant import Participant
from bot.devsfu.room import Room

log = logging.getLogger(__name__)

SERVER_VERSION = "callbot-dev-sfu"
PROTOCOL_VERSION = 16


@dataclass(frozen=True)
class SignalSettings:
    # The SDKs send ping_req every ping_interval and give up after ping_timeout; the Rust SDK
    # panics if ping_interval is 0. We drop a client that stays silent for ping_timeout.
    ping_interval: int = 5
    ping_timeout: int = 20


def decode_request(data: bytes) -> lk.SignalRequest | None:
    """The SignalRequest in a binary frame, or None if it is not one."""
    try:
        req = lk.SignalRequest.FromString(data)
    except Exception:  # protobuf raises DecodeError, and other errors on some garbage
        return None
    return req if req.WhichOneof("message") is not None else None


def _track_sids(sub: lk.UpdateSubscription) -> list[str]:
    sids = list(sub.track_sids)
    for pt in sub.participant_tracks:
        sids += list(pt.track_sids)
    return sids


async def handle_request(p: Participant, req: lk.SignalRequest) -> None:
    """Act on one request. Errors propagate; :func:`run_session` logs them."""
    p.last_seen = time.monotonic()
    which = req.WhichOneof("message")
    room = p.room
    if which == "offer":
        await p.answer_publisher(req.offer)
    elif which == "answer":
        await p.on_subscriber_answer(req.answer)
    elif which == "trickle":
        await p.add_candidate(req.trickle.target, req.trickle.candidateInit)
    elif which == "add_track":
        await p.add_track(req.add_track)
    elif which == "ping_req":
        now_ms = int(time.time() * 1000)
        await p.send(
            pong_resp=lk.Pong(last_ping_timestamp=req.ping_req.timestamp, timestamp=now_ms)
        )
    elif which == "ping":
        await p.send(pong=int(time.time() * 1000))
    elif which == "mute":
        fwd = p.published.get(req.mute.sid)
        if fwd is not None:
            fwd.info.muted = req.mute.muted
            p.version += 1
            await room.broadcast_update(p)
    elif which == "subscription":
        for sid in _track_sids(req.subscription):
            if not req.subscription.subscribe:
                p.unsubscribe(sid)
            elif p.can_subscribe:
                for other in room.others(p):
                    if sid in other.published:
                        p.subscribe(other.published[sid])
    elif which == "track_setting":
        for sid in req.track_setting.track_sids:
            p.set_track_enabled(sid, not req.track_setting.disabled)
    elif which == "update_metadata" and p.can_update_metadata:
        u = req.update_metadata
        p.name = u.name or p.name
        p.metadata = u.metadata or p.metadata
        for key, value in u.attributes.items():  # an empty value deletes the attribute
            if value:
                p.attributes[key] = value
            else:
                p.attributes.pop(key, None)
        p.version += 1
        await room.broadcast_update(p)
        await p.send(update=lk.ParticipantUpdate(participants=[p.info()]))
    elif which == "leave":
        await disconnect(p, m.DisconnectReason.CLIENT_INITIATED)
    else:
        log.debug("%s: %s ignored", p.identity, which)


async def _watchdog(p: Participant, settings: SignalSettings) -> None:
    """Drop a participant whose client stopped talking (killed, frozen, network gone)."""
    while not p.closed:
        await asyncio.sleep(min(settings.ping_interval, settings.ping_timeout))
        if time.monotonic() - p.last_seen > settings.ping_timeout:
            log.warning("%s: ping timeout", p.identity)
            await disconnect(p, m.DisconnectReason.CONNECTION_TIMEOUT)
            return


async def disconnect(
    p: Participant, reason: m.DisconnectReason, *, tell: lk.LeaveRequest.Action | None = None
) -> None:
    """End ``p``'s session: tell the client to leave (``tell`` is the LeaveRequest action),
    clean up at once, then close the websocket in the background: its close handshake may wait
    for a client that is dead or not reading."""
    p.disconnect_reason = reason
    if tell is not None:
        can_reconnect = tell != lk.LeaveRequest.DISCONNECT
        await p.send(leave=lk.LeaveRequest(can_reconnect=can_reconnect, reason=reason, action=tell))
    await p.close()
    spawn(p.ws.close(), f"closing the websocket of {p.identity}")


async def refuse_resume(ws: web.WebSocketResponse) -> None:
    """Answer a resume attempt (``reconnect=1``): this SFU cannot resume a session (aiortc has
    no ICE restart), so it asks for a full reconnect. The SDK then joins afresh and publishes
    again, and gets its subscriptions back like any joiner."""
    leave_req = lk.LeaveRequest(
        can_reconnect=True,
        reason=m.DisconnectReason.STATE_MISMATCH,
        action=lk.LeaveRequest.RECONNECT,
    )
    await ws.send_bytes(lk.SignalResponse(leave=leave_req).SerializeToString())
    await ws.close()


async def run_session(
    ws: web.WebSocketResponse,
    room: Room,
    grant: Grant,
    *,
    auto_subscribe: bool,
    settings: SignalSettings,
    latency: LatencyStats,
) -> None:
    """Serve one participant from join to leave on an open websocket. It joins ``room``
    before the first ``await``, so the room cannot be dropped as empty in between."""
    me = Participant(room, ws, grant, auto_subscribe=auto_subscribe, latency=latency)
    room.add(me)
    log.info("%s joined %s as %s", me.identity, room.name, me.sid)
    join = lk.JoinResponse(
        room=room.proto(),
        participant=me.info(),
        other_participants=[p.info() for p in room.others(me) if not p.hidden],
        server_version=SERVER_VERSION,
        server_info=m.ServerInfo(
            edition=m.ServerInfo.Standard,
            version=SERVER_VERSION,
            protocol=PROTOCOL_VERSION,
            node_id="dev-sfu",
        ),
        subscriber_primary=True,
        ping_interval=settings.ping_interval,
        ping_timeout=settings.ping_timeout,
    )
    await me.send(join=join)
    me.state = m.ParticipantInfo.ACTIVE
    await room.broadcast_update(me)
    me.request_negotiation()  # the first subscriber offer: data channels only
    if me.can_subscribe and me.auto_subscribe:
        for other in room.others(me):  # a late joiner gets what is already published
            for fwd in other.published.values():
                me.subscribe(fwd)
    watchdog = asyncio.ensure_future(_watchdog(me, settings))
    try:
        async for msg in ws:
            if msg.type == WSMsgType.BINARY:
                req = decode_request(msg.data)
                if req is None:
                    log.warning("%s sent an undecodable signal message", me.identity)
                    continue
                try:
                    await handle_request(me, req)
                except (AssertionError, ValueError) as e:  # what aiortc raises on bad SDP
                    log.warning("%s: bad %s: %r", me.identity, req.WhichOneof("message"), e)
                except Exception:  # a bad request must cost only itself, never the SFU
                    log.exception("%s: handling %s", me.identity, req.WhichOneof("message"))
            elif msg.type == WSMsgType.TEXT:
                log.warning("%s sent a text frame; LiveKit signalling is binary", me.identity)
            elif msg.type == WSMsgType.ERROR:
                break
    finally:
        watchdog.cancel()
        await me.close()
