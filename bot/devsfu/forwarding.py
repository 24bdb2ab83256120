"""RTP forwarding: one :class:`Forwarder` per published track, one :class:`DownTrack` per
subscriber of it.

Packets are relayed without decoding, so end-to-end encrypted frames arrive byte-identical.
Each subscriber connection negotiates its own SSRC and payload type, so the header is
rewritten: SSRC and payload type replaced, sequence number and timestamp shifted by constant
offsets (:class:`RtpRewriter`), payload, marker and padding untouched. A video subscriber starts
at a key frame, detected from the codec payload header that LiveKit E2EE leaves in clear.
"""

from __future__ import annotations

import logging
import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from livekit.protocol import models as m

from bot.devsfu.aiortc_compat import (
    ForwardingReceiver,
    ForwardingSender,
    RTCRtpTransceiver,
    RtpPacket,
    first_codec,
)

if TYPE_CHECKING:
    from bot.devsfu.participant import Participant

log = logging.getLogger(__name__)

PLI_MIN_INTERVAL = 0.5  # seconds between key-frame requests to one publisher
LATE_PACKET_WINDOW = 1000  # packets after a (re)start during which older packets are dropped


def vp8_keyframe_start(payload: bytes) -> bool:
    """True if this VP8 RTP payload starts a key frame (RFC 7741 descriptor, then the VP8
    frame tag whose P bit is 0 for key frames)."""
    if len(payload) < 2:
        return False
    b0 = payload[0]
    if not b0 & 0x10 or b0 & 0x07:  # S (start of partition) with partition index 0
        return False
    i = 1
    if b0 & 0x80:  # X: an extension byte follows
        x = payload[1]
        i = 2
        if x & 0x80:  # I: picture id, 7 or 15 bits
            if len(payload) <= i:
                return False
            i += 2 if payload[i] & 0x80 else 1
        if x & 0x40:  # L: TL0PICIDX
            i += 1
        if x & 0x30:  # T or K: TID/Y/KEYIDX
            i += 1
    return len(payload) > i and not payload[i] & 0x01


def h264_keyframe_start(payload: bytes) -> bool:
    """True if the packet carries an IDR slice or an SPS at the start of a NAL unit (RFC 6184:
    single NAL unit, STAP-A, or the first FU-A fragment)."""
    if not payload:
        return False
    nal = payload[0] & 0x1F
    if nal in (5, 7):
        return True
    if nal == 24:  # STAP-A: 16-bit size, then the NAL unit, repeated
        i = 1
        while i + 2 < len(payload):
            size = int.from_bytes(payload[i : i + 2], "big")
            if payload[i + 2] & 0x1F in (5, 7):
                return True
            i += 2 + size
        return False
    if nal == 28 and len(payload) > 1:  # FU-A: S bit and the fragmented NAL unit's type
        return bool(payload[1] & 0x80) and payload[1] & 0x1F in (5, 7)
    return False


KEYFRAME_DETECTORS: dict[str, Callable[[bytes], bool]] = {
    "video/vp8": vp8_keyframe_start,
    "video/h264": h264_keyframe_start,
}


@dataclass
class RtpRewriter:
    """Sequence number and timestamp mapping from one upstream stream to one downstream one.

    The offsets are constant while the upstream SSRC stays the same, so gaps and reordering
    survive (the subscriber's jitter buffer and NACKs see what really happened). When the
    upstream changes (publisher restarted its encoder, forwarding resumed after a pause) the
    outgoing stream continues where it stopped: next sequence number, timestamp advanced by
    the wall-clock time in between.
    """

    clock_rate: int
    in_ssrc: int | None = None
    seq_offset: int = 0
    ts_offset: int = 0
    first_in_seq: int = 0
    last_seq: int | None = None  # highest sequence number sent
    last_ts: int = 0
    last_wall: float = 0.0
    sent: int = 0
    rng: random.Random = field(default_factory=random.Random, repr=False)

    def start(self, ssrc: int, seq: int, ts: int, now: float) -> None:
        """Map the stream ``ssrc`` so that packet (seq, ts) comes right after what was sent."""
        if self.last_seq is None:  # random start values, as RFC 3550 asks
            base_seq, base_ts = self.rng.randrange(0x8000), self.rng.getrandbits(32)
        else:
            elapsed = max(1, int((now - self.last_wall) * self.clock_rate))
            base_seq = (self.last_seq + 1) & 0xFFFF
            base_ts = (self.last_ts + elapsed) & 0xFFFFFFFF
        self.seq_offset = (base_seq - seq) & 0xFFFF
        self.ts_offset = (base_ts - ts) & 0xFFFFFFFF
        self.in_ssrc, self.first_in_seq = ssrc, seq
        self.sent = 0

    def rewrite(self, seq: int, ts: int, now: float) -> tuple[int, int] | None:
        """The outgoing (seq, ts), or None for a late packet from before the starting point."""
        if (seq - self.first_in_seq) & 0xFFFF >= 0x8000 and self.sent < LATE_PACKET_WINDOW:
            return None
        out_seq = (seq + self.seq_offset) & 0xFFFF
        out_ts = (ts + self.ts_offset) & 0xFFFFFFFF
        if self.last_seq is None or (out_seq - self.last_seq) & 0xFFFF < 0x8000:
            self.last_seq, self.last_ts, self.last_wall = out_seq, out_ts, now
        self.sent += 1
        return out_seq, out_ts

    def stop(self) -> None:
        """Forget the upstream stream: the next packet re-synchronises."""
        self.in_ssrc = None


class LatencyStats:
    """Time from our RTP handler being entered to the forwarded copy being handed to the
    socket, over the most recent packets."""

    def __init__(self, keep: int = 20000) -> None:
        self.samples: deque[float] = deque(maxlen=keep)
        self.total = 0

    def add(self, seconds: float) -> None:
        self.samples.append(seconds)
        self.total += 1

    def summary(self) -> dict[str, float]:
        if not self.samples:
            return {"n": 0}
        s = sorted(self.samples)

        def pick(q: float) -> float:
            return round(s[min(len(s) - 1, int(q * len(s)))] * 1e6, 1)

        return {
            "n": self.total,
            "p50_us": pick(0.5),
            "p90_us": pick(0.9),
            "p99_us": pick(0.99),
            "max_us": round(s[-1] * 1e6, 1),
        }


class Forwarder:
    """One published track: receives its RTP on the publisher connection and fans it out."""

    def __init__(
        self,
        publisher: Participant,
        info: m.TrackInfo,
        transceiver: RTCRtpTransceiver,
        latency: LatencyStats,
    ) -> None:
        self.publisher, self.info, self.transceiver = publisher, info, transceiver
        self.latency = latency
        self.kind: str = transceiver.kind
        codec = first_codec(transceiver)
        self.mime = codec.mimeType.lower() if codec else ""
        self.clock_rate = codec.clockRate if codec else 90000
        self.is_keyframe = KEYFRAME_DETECTORS.get(self.mime)  # None: start anywhere (audio)
        self.downtracks: dict[str, DownTrack] = {}  # subscriber sid -> DownTrack
        self.last_ssrc: int | None = None
        self._last_pli = 0.0
        self.packets_in = self.bytes_in = 0
        self.receiver = ForwardingReceiver.adopt(transceiver.receiver, self.on_rtp)

    @property
    def sid(self) -> str:
        return self.info.sid

    async def on_rtp(self, packet: RtpPacket) -> None:
        t0 = time.perf_counter()
        self.last_ssrc = packet.ssrc
        self.packets_in += 1
        self.bytes_in += len(packet.payload)
        for dt in list(self.downtracks.values()):
            try:
                if await dt.write(packet, t0):
                    self.latency.add(time.perf_counter() - t0)
            except ConnectionError:
                pass  # the subscriber's transport is not up (yet, or any more)
            except Exception:
                log.exception("forwarding %s to %s", self.sid, dt.subscriber.identity)

    def request_keyframe(self) -> None:
        """Ask the publisher for a key frame (PLI), at most every PLI_MIN_INTERVAL."""
        if self.is_keyframe is None or self.last_ssrc is None:
            return
        now = time.monotonic()
        if now - self._last_pli < PLI_MIN_INTERVAL:
            return
        self._last_pli = now
        self.receiver.request_keyframe(self.last_ssrc)

    def stats(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "mime": self.mime,
            "packets_in": self.packets_in,
            "bytes_in": self.bytes_in,
            "subscribers": {d.subscriber.identity: d.packets for d in self.downtracks.values()},
        }


class DownTrack:
    """One (published track, subscriber) pair: rewrites and sends on the subscriber connection."""

    def __init__(
        self, forwarder: Forwarder, subscriber: Participant, transceiver: RTCRtpTransceiver
    ) -> None:
        self.forwarder, self.subscriber, self.transceiver = forwarder, subscriber, transceiver
        self.sender = ForwardingSender.adopt(
            transceiver.sender,
            stream_id=f"{forwarder.publisher.sid}|{forwarder.sid}",
            on_keyframe_request=forwarder.request_keyframe,
        )
        self.enabled = True  # UpdateTrackSettings(disabled=...) from the subscriber
        self.rewriter = RtpRewriter(forwarder.clock_rate)
        self.packets = self.bytes = 0

    async def write(self, packet: RtpPacket, now: float) -> bool:
        """Forward one packet; False if it was not sent (paused, not negotiated, waiting for a
        key frame, or late)."""
        sender, rw = self.sender, self.rewriter
        codec = sender.codec
        if not self.enabled or codec is None or not sender.enabled:
            rw.stop()  # re-synchronise, at a key frame, when forwarding resumes
            return False
        if packet.ssrc != rw.in_ssrc:
            detect = self.forwarder.is_keyframe
            if detect is not None and not detect(packet.payload):
                self.forwarder.request_keyframe()
                return False
            rw.start(packet.ssrc, packet.sequence_number, packet.timestamp, now)
        mapped = rw.rewrite(packet.sequence_number, packet.timestamp, now)
        if mapped is None:
            return False
        assert codec.payloadType is not None  # a negotiated codec has one (aiortc sets it)
        out = RtpPacket(
            payload_type=codec.payloadType,
            marker=packet.marker,
            sequence_number=mapped[0],
            timestamp=mapped[1],
            ssrc=sender.ssrc,
            payload=packet.payload,
        )
        out.padding_size = packet.padding_size
        out.extensions.audio_level = packet.extensions.audio_level
        await sender.send_packet(out)
        self.packets += 1
        self.bytes += len(out.payload)
        return True

    def detach(self) -> None:
        """Stop forwarding and mark the m-line inactive (it takes effect with the next offer;
        m-lines are not recycled)."""
        self.forwarder.downtracks.pop(self.subscriber.sid, None)
        self.subscriber.downtracks.pop(self.forwarder.sid, None)
        self.enabled = False
        if self.transceiver.direction != "inactive":
            self.transceiver.direction = "inactive"


__all__ = [
    "DownTrack",
    "Forwarder",
    "LatencyStats",
    "RtpRewriter",
    "h264_keyframe_start",
    "vp8_keyframe_start",
]
