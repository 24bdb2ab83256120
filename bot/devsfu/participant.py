"""One participant's media side: its two peer connections, their negotiation and ICE.

LiveKit's dual peer-connection mode: on the *publisher* connection the client offers and the
SFU answers, and the client's tracks become :class:`Forwarder` s; on the *subscriber*
connection the SFU offers the tracks of the others (and its own ``_reliable``/``_lossy`` data
channels) and the client answers.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import time
from typing import Any

from aiohttp import web
from aiortc import (
    RTCBundlePolicy,
    RTCConfiguration,
    RTCDataChannel,
    RTCIceCandidate,
    RTCPeerConnection,
    RTCRtpSender,
    RTCSessionDescription,
)
from aiortc.codecs import is_rtx
from aiortc.mediastreams import MediaStreamTrack
from aiortc.sdp import candidate_from_sdp
from livekit.protocol import models as m
from livekit.protocol import rtc as lk

from bot.devsfu._tasks import spawn
from bot.devsfu.aiortc_compat import RelayTrack, first_codec, offered_direction, restart_connect
from bot.devsfu.auth import Grant
from bot.devsfu.forwarding import DownTrack, Forwarder, LatencyStats
from bot.devsfu.room import DATA_LABELS, Room, new_sid

log = logging.getLogger(__name__)

ANSWER_TIMEOUT = 15.0  # seconds a client gets to answer a subscriber offer
MAX_BUFFERED_CANDIDATES = 64  # per connection, before its remote description arrives
MAX_PENDING_TRACKS = 64  # AddTrackRequests whose media has not been negotiated yet


def parse_candidate(init_json: str) -> RTCIceCandidate | None:
    """An ICE candidate from a TrickleRequest's ``candidateInit`` JSON; None for the
    end-of-candidates marker. ValueError if it is malformed."""
    init = json.loads(init_json)
    if not isinstance(init, dict):
        raise ValueError("candidateInit is not a JSON object")
    text = init.get("candidate") or ""
    if not text:
        return None
    if not isinstance(text, str):
        raise ValueError("candidate is not a string")
    try:
        candidate = candidate_from_sdp(text.removeprefix("candidate:"))
    except (AssertionError, IndexError, KeyError, ValueError) as e:  # aiortc asserts the shape
        raise ValueError(f"malformed candidate {text!r}") from e
    mid, index = init.get("sdpMid"), init.get("sdpMLineIndex")
    candidate.sdpMid = mid if isinstance(mid, str) else None
    candidate.sdpMLineIndex = index if isinstance(index, int) else None
    return candidate


def _rtc_configuration() -> RTCConfiguration:
    # No STUN/TURN: host candidates only; one transport per connection.
    return RTCConfiguration(iceServers=[], bundlePolicy=RTCBundlePolicy.MAX_BUNDLE)


class Participant:
    def __init__(
        self,
        room: Room,
        ws: web.WebSocketResponse,
        grant: Grant,
        *,
        auto_subscribe: bool,
        latency: LatencyStats,
    ) -> None:
        self.room, self.ws, self.latency = room, ws, latency
        self.sid = new_sid("PA_")
        self.identity = grant.identity
        self.name, self.metadata = grant.name, grant.metadata
        self.attributes = dict(grant.attributes)
        self.can_publish, self.can_subscribe = grant.can_publish, grant.can_subscribe
        self.can_publish_data = grant.can_publish_data
        self.can_update_metadata, self.hidden = grant.can_update_metadata, grant.hidden
        self.auto_subscribe = auto_subscribe
        self.joined = time.time()
        self.state: m.ParticipantInfo.State = m.ParticipantInfo.JOINED
        self.version = 1
        self.closed = False
        self.disconnect_reason: m.DisconnectReason = m.DisconnectReason.UNKNOWN_REASON
        self.last_seen = time.monotonic()
        self.pending: dict[str, m.TrackInfo] = {}  # AddTrackRequest cid -> TrackInfo
        self.published: dict[str, Forwarder] = {}  # track sid -> Forwarder
        self.downtracks: dict[str, DownTrack] = {}  # track sid -> DownTrack (we receive)
        self._send_lock = asyncio.Lock()
        self._candidates: dict[int, list[RTCIceCandidate]] = {lk.PUBLISHER: [], lk.SUBSCRIBER: []}
        self._negotiation_needed = False
        self._negotiation: asyncio.Task[None] | None = None
        self._answered: asyncio.Future[None] | None = None
        self._offer_ids = itertools.count(1)
        self._subscriber_up = False  # the subscriber connection's DTLS is connected
        self._deferred: list[Forwarder] = []  # subscriptions waiting for that

        self.pub = RTCPeerConnection(_rtc_configuration())
        self.pub.on("track", self._on_published_track)
        self.pub.on("datachannel", self._on_datachannel)
        self.sub = RTCPeerConnection(_rtc_configuration())
        self.sub_channels: dict[str, RTCDataChannel] = {
            "_reliable": self.sub.createDataChannel("_reliable"),
            "_lossy": self.sub.createDataChannel("_lossy", ordered=False, maxRetransmits=0),
        }
        self.pub.on("connectionstatechange", lambda: self._on_state(self.pub))
        self.sub.on("connectionstatechange", lambda: self._on_state(self.sub))

    def info(self) -> m.ParticipantInfo:
        return m.ParticipantInfo(
            sid=self.sid,
            identity=self.identity,
            name=self.name,
            metadata=self.metadata,
            attributes=self.attributes,
            state=self.state,
            version=self.version,
            joined_at=int(self.joined),
            joined_at_ms=int(self.joined * 1000),
            kind=m.ParticipantInfo.STANDARD,
            is_publisher=bool(self.published),
            tracks=[f.info for f in self.published.values()],
            disconnect_reason=self.disconnect_reason,
            permission=m.ParticipantPermission(
                can_subscribe=self.can_subscribe,
                can_publish=self.can_publish,
                can_publish_data=self.can_publish_data,
                hidden=self.hidden,
                can_update_metadata=self.can_update_metadata,
            ),
        )

    async def send(self, **message: Any) -> None:
        """Send one SignalResponse; a connection that is gone is not an error here."""
        if self.ws.closed:
            return
        data = lk.SignalResponse(**message).SerializeToString()
        async with self._send_lock:
            try:
                await self.ws.send_bytes(data)
            except (ConnectionError, RuntimeError) as e:
                log.debug("send to %s failed: %s", self.identity, e)

    def send_data(self, label: str, data: bytes) -> None:
        channel = self.sub_channels.get(label)
        if channel is not None and channel.readyState == "open":
            channel.send(data)

    def _on_state(self, pc: RTCPeerConnection) -> None:
        if pc.connectionState != "connected" or self.closed:
            return
        restart_connect(pc)
        if pc is self.sub and not self._subscriber_up:
            # Tracks go onto the subscriber connection only now: aiortc starts an RTP sender
            # only if DTLS is up when the answer arrives (livekit-client in a browser never
            # recovers from a sender that did not start). The first offer therefore carried
            # only the data channels, which also keeps aiortc's BUNDLE transport alive.
            self._subscriber_up = True
            deferred, self._deferred = self._deferred, []
            for fwd in deferred:
                if fwd.sid in fwd.publisher.published and not fwd.publisher.closed:
                    self.subscribe(fwd)

    # -- publishing ---------------------------------------------------------------------

    async def add_track(self, req: lk.AddTrackRequest) -> None:
        if not self.can_publish:
            log.warning("%s may not publish; AddTrackRequest ignored", self.identity)
            return
        if len(self.pending) >= MAX_PENDING_TRACKS:  # announced tracks that never arrive
            log.warning("%s: too many tracks announced; AddTrackRequest ignored", self.identity)
            return
        info = m.TrackInfo(
            sid=new_sid("TR_"),
            type=req.type,
            name=req.name,
            source=req.source,
            muted=req.muted,
            width=req.width,
            height=req.height,
            layers=req.layers,
            simulcast=False,  # no layer selection: the one stream received is forwarded
            disable_dtx=req.disable_dtx,
            disable_red=req.disable_red,
            stereo=req.stereo,
            encryption=req.encryption,
            stream=req.stream,
            audio_features=req.audio_features,
            backup_codec_policy=req.backup_codec_policy,
            packet_trailer_features=req.packet_trailer_features,
        )
        self.pending[req.cid] = info
        await self.send(track_published=lk.TrackPublishedResponse(cid=req.cid, track=info))

    def _on_published_track(self, track: MediaStreamTrack) -> None:
        # Fired inside setRemoteDescription(offer), before aiortc starts the receiver, so the
        # receiver can still be adopted. The msid track id is the AddTrackRequest's cid.
        tr = next(t for t in self.pub.getTransceivers() if t.receiver.track is track)
        info = self.pending.pop(track.id, None)
        if info is None:  # fall back to the oldest pending track of the same kind
            want = m.AUDIO if track.kind == "audio" else m.VIDEO
            cid = next((c for c, i in self.pending.items() if i.type == want), None)
            info = self.pending.pop(cid) if cid is not None else None
        if info is None:
            log.warning("%s: track %s without AddTrackRequest ignored", self.identity, track.id)
            return
        codec = first_codec(tr)
        info.mid = tr.mid or ""
        info.mime_type = codec.mimeType if codec else ""
        fwd = Forwarder(self, info, tr, self.latency)
        self.published[info.sid] = fwd
        self.version += 1
        log.info("%s published %s %s (%s)", self.identity, track.kind, info.sid, info.mime_type)
        spawn(self.room.track_ready(fwd), "announcing a track")

    def _on_datachannel(self, channel: RTCDataChannel) -> None:
        label = channel.label

        def relay(message: bytes | str) -> None:
            raw = message if isinstance(message, bytes) else message.encode()
            self.room.forward_data(self, label, raw)

        if label in DATA_LABELS:
            channel.on("message", relay)

    async def answer_publisher(self, offer: lk.SessionDescription) -> None:
        await self.pub.setRemoteDescription(RTCSessionDescription(sdp=offer.sdp, type="offer"))
        for fwd in list(self.published.values()):  # an offer that stops sending = unpublish
            if offered_direction(fwd.transceiver) not in ("recvonly", "sendrecv"):
                log.info("%s unpublished %s", self.identity, fwd.sid)
                await self.room.unpublish(fwd, announce=True)
        await self.pub.setLocalDescription(await self.pub.createAnswer())
        await self._flush_candidates(lk.PUBLISHER)
        answer = self.pub.localDescription
        # livekit-client matches the answer to its offer by id, and times out otherwise.
        await self.send(answer=lk.SessionDescription(type="answer", sdp=answer.sdp, id=offer.id))

    # -- subscribing --------------------------------------------------------------------

    def subscribe(self, fwd: Forwarder) -> None:
        if self.closed or fwd.sid in self.downtracks or fwd.publisher is self:
            return
        if not self._subscriber_up:
            if fwd not in self._deferred:
                self._deferred.append(fwd)
            return
        tr = self.sub.addTransceiver(RelayTrack(fwd.kind, fwd.sid), direction="sendonly")
        # Offer exactly the publisher's codec (and RTX for video): payloads pass through as-is.
        caps = RTCRtpSender.getCapabilities(fwd.kind).codecs
        prefs = [c for c in caps if c.mimeType.lower() == fwd.mime]
        if prefs:
            tr.setCodecPreferences(prefs + [c for c in caps if is_rtx(c)])
        dt = DownTrack(fwd, self, tr)
        fwd.downtracks[self.sid] = dt
        self.downtracks[fwd.sid] = dt
        log.info("forwarding %s/%s to %s", fwd.publisher.identity, fwd.sid, self.identity)
        self.request_negotiation()

    def unsubscribe(self, track_sid: str) -> None:
        self._deferred = [f for f in self._deferred if f.sid != track_sid]
        dt = self.downtracks.get(track_sid)
        if dt is not None:
            dt.detach()
            self.request_negotiation()

    def set_track_enabled(self, track_sid: str, enabled: bool) -> None:
        dt = self.downtracks.get(track_sid)
        if dt is not None:
            dt.enabled = enabled

    def request_negotiation(self) -> None:
        """(Re)offer the subscriber connection. Offers are serialised; changes made while one
        is outstanding coalesce into the next."""
        if self.closed:
            return
        self._negotiation_needed = True
        if self._negotiation is None or self._negotiation.done():
            self._negotiation = spawn(self._negotiate(), f"negotiating with {self.identity}")

    async def _negotiate(self) -> None:
        while self._negotiation_needed and not self.closed:
            self._negotiation_needed = False
            self._answered = asyncio.get_running_loop().create_future()
            await self.sub.setLocalDescription(await self.sub.createOffer())
            offer = lk.SessionDescription(
                type="offer", id=next(self._offer_ids), sdp=self.sub.localDescription.sdp
            )
            await self.send(offer=offer)
            try:
                await asyncio.wait_for(self._answered, ANSWER_TIMEOUT)
            except TimeoutError:
                log.warning("%s did not answer the subscriber offer", self.identity)
                return

    async def on_subscriber_answer(self, answer: lk.SessionDescription) -> None:
        if self.sub.signalingState != "have-local-offer":
            log.debug("%s: unexpected subscriber answer ignored", self.identity)
            return
        await self.sub.setRemoteDescription(RTCSessionDescription(sdp=answer.sdp, type="answer"))
        await self._flush_candidates(lk.SUBSCRIBER)
        if self._answered is not None and not self._answered.done():
            self._answered.set_result(None)

    # -- ICE ----------------------------------------------------------------------------

    async def add_candidate(self, target: int, init_json: str) -> None:
        pc = self.sub if target == lk.SUBSCRIBER else self.pub
        candidate = parse_candidate(init_json)
        if candidate is None:
            return
        if pc.remoteDescription is None:  # it arrived before the description it belongs to
            buffered = self._candidates[lk.SUBSCRIBER if pc is self.sub else lk.PUBLISHER]
            if len(buffered) < MAX_BUFFERED_CANDIDATES:
                buffered.append(candidate)
            return
        await pc.addIceCandidate(candidate)

    async def _flush_candidates(self, target: int) -> None:
        pc = self.sub if target == lk.SUBSCRIBER else self.pub
        buffered, self._candidates[target] = self._candidates[target], []
        for candidate in buffered:
            await pc.addIceCandidate(candidate)

    # -- leaving ------------------------------------------------------------------------

    async def close(self) -> None:
        """Leave the room: stop forwarding both ways, tell the others, close the connections."""
        if self.closed:
            return
        self.closed = True
        room = self.room
        room.remove(self)
        for fwd in list(self.published.values()):
            await room.unpublish(fwd, announce=False)
        for dt in list(self.downtracks.values()):
            dt.detach()
        self._deferred.clear()
        self.state = m.ParticipantInfo.DISCONNECTED
        if self.disconnect_reason == m.DisconnectReason.UNKNOWN_REASON:
            self.disconnect_reason = m.DisconnectReason.SIGNAL_CLOSE
        self.version += 1
        await room.broadcast_update(self)
        if self._negotiation is not None:
            self._negotiation.cancel()
        for pc in (self.pub, self.sub):
            try:
                await pc.close()
            except Exception:  # closing is best effort; aiortc may fail mid-handshake
                log.debug("closing a peer connection of %s", self.identity, exc_info=True)
        reason = m.DisconnectReason.Name(self.disconnect_reason)
        log.info("%s left %s (%s)", self.identity, room.name, reason)
