"""Everything that touches aiortc's private internals, and the start-up check for them.

aiortc has no public API for encoded media: a receiver always depacketises and decodes, a
sender always encodes. Decoding would destroy end-to-end encrypted frames, so the SFU forwards
at the RTP level by adopting two aiortc objects right after aiortc creates them (their
``__class__`` is swapped to a subclass below that overrides a few methods):

- :class:`ForwardingReceiver` (publisher connection) keeps aiortc's RTCP receiver statistics,
  RTX unwrapping and NACKs, skips the jitter buffer and decoder, and hands each RTP packet on.
- :class:`ForwardingSender` (subscriber connection) replaces the encode loop with an idle task
  and sends packets pushed into it, keeping aiortc's RTP history (so NACK/RTX work) and the
  counters its RTCP sender reports use.

These rely on name-mangled attributes of aiortc 1.16.0, which pyproject.toml pins
exactly. :func:`check_aiortc` runs when the SFU starts and raises
:class:`~bot.errors.IncompatibleDependency` naming whatever is missing, rather than letting
media fail silently later. Nothing outside this module touches aiortc internals.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from bot.devsfu._tasks import spawn
from bot.errors import IncompatibleDependency

try:
    import aioice.ice
    import aiortc
    from aiortc import (
        RTCPeerConnection,
        RTCRtpCodecParameters,
        RTCRtpReceiver,
        RTCRtpSender,
        RTCRtpTransceiver,
    )
    from aiortc import clock as rtc_clock
    from aiortc.codecs import is_rtx
    from aiortc.mediastreams import MediaStreamTrack
    from aiortc.rtcrtpreceiver import StreamStatistics
    from aiortc.rtp import RTP_HISTORY_SIZE, RtpPacket, unwrap_rtx
except ImportError as e:  # a renamed module is as fatal as a renamed attribute
    raise IncompatibleDependency(
        f"bot.devsfu needs aiortc 1.16.0 (pinned in pyproject.toml); import failed: {e}"
    ) from e

log = logging.getLogger(__name__)

AIORTC_VERSION = "1.16.0"

# Instance attributes set in aiortc's constructors, checked on live objects at start-up.
_SENDER_ATTRS = (
    "_RTCRtpSender__rtp_started",
    "_RTCRtpSender__rtp_exited",
    "_RTCRtpSender__mid",
    "_RTCRtpSender__rtp_history",
    "_RTCRtpSender__rtp_header_extensions_map",
    "_RTCRtpSender__ntp_timestamp",
    "_RTCRtpSender__rtp_timestamp",
    "_RTCRtpSender__octet_count",
    "_RTCRtpSender__packet_count",
    "_ssrc",
    "_stream_id",
    "_enabled",
    # methods aiortc calls and we override or call
    "_run_rtp",
    "_send_keyframe",
)
_RECEIVER_ATTRS = (
    "_RTCRtpReceiver__started",
    "_RTCRtpReceiver__codecs",
    "_RTCRtpReceiver__remote_streams",
    "_RTCRtpReceiver__rtx_ssrc",
    "_RTCRtpReceiver__nack_generator",
    "_RTCRtpReceiver__stop_decoder",
    "_enabled",
    "_handle_rtp_packet",
    "_send_rtcp_pli",
    "_send_rtcp_nack",
)
_TRANSCEIVER_ATTRS = ("_codecs", "_offerDirection")
_TRANSPORT_ATTRS = ("_rtp_router", "_send_rtp")
_PC_ATTRS = ("_RTCPeerConnection__connect",)

KeyframeRequest = Callable[[], None]
RtpHandler = Callable[[RtpPacket], Awaitable[None]]


class RelayTrack(MediaStreamTrack):
    """The track of a subscriber-side transceiver. It only gives the m-line its kind and its
    ``a=msid`` track id (the LiveKit track sid); nothing ever reads frames from it."""

    def __init__(self, kind: str, track_sid: str) -> None:
        super().__init__()
        self.kind = kind
        self._id = track_sid

    async def recv(self) -> Any:  # pragma: no cover - ForwardingSender never asks
        await asyncio.Event().wait()


class ForwardingSender(RTCRtpSender):
    """An aiortc sender, adopted with :meth:`adopt`, that sends already-encoded RTP packets."""

    codec: RTCRtpCodecParameters | None
    _on_keyframe_request: KeyframeRequest

    @classmethod
    def adopt(
        cls, sender: RTCRtpSender, stream_id: str, on_keyframe_request: KeyframeRequest
    ) -> ForwardingSender:
        sender.__class__ = cls
        assert isinstance(sender, ForwardingSender)
        sender.codec = None  # the negotiated codec, known once aiortc starts sending
        sender._on_keyframe_request = on_keyframe_request
        sender._stream_id = stream_id  # the msid stream id, "PA_...|TR_..." for LiveKit clients
        return sender

    @property
    def ssrc(self) -> int:
        return self._ssrc

    @property
    def enabled(self) -> bool:
        """False while aiortc has the sender paused (its m-line is not sending)."""
        return self._enabled

    async def _run_rtp(self, codec: RTCRtpCodecParameters) -> None:
        # Replaces aiortc's encode loop, which aiortc starts from send() once DTLS is up. We only
        # remember the negotiated payload type and idle until stop() cancels us.
        self.codec = codec
        self._RTCRtpSender__rtp_started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            pass
        finally:
            self.codec = None
            self._RTCRtpSender__rtp_exited.set()

    def _send_keyframe(self) -> None:
        # aiortc calls this on PLI/FIR from the subscriber; only the publisher can answer it.
        self._on_keyframe_request()

    async def send_packet(self, packet: RtpPacket) -> None:
        """Send one rewritten packet; keep the NACK history and the RTCP SR counters current."""
        packet.extensions.mid = self._RTCRtpSender__mid
        packet.extensions.abs_send_time = (rtc_clock.current_ntp_time() >> 14) & 0x00FFFFFF
        history: dict[int, RtpPacket] = self._RTCRtpSender__rtp_history
        history[packet.sequence_number % RTP_HISTORY_SIZE] = packet
        data = packet.serialize(self._RTCRtpSender__rtp_header_extensions_map)
        await self.transport._send_rtp(data)
        self._RTCRtpSender__ntp_timestamp = rtc_clock.current_ntp_time()
        self._RTCRtpSender__rtp_timestamp = packet.timestamp
        self._RTCRtpSender__octet_count += len(packet.payload)
        self._RTCRtpSender__packet_count += 1


class ForwardingReceiver(RTCRtpReceiver):
    """An aiortc receiver, adopted with :meth:`adopt`, that hands RTP packets to a handler."""

    _on_rtp: RtpHandler

    @classmethod
    def adopt(cls, receiver: RTCRtpReceiver, on_rtp: RtpHandler) -> ForwardingReceiver:
        receiver.__class__ = cls
        assert isinstance(receiver, ForwardingReceiver)
        receiver._on_rtp = on_rtp
        return receiver

    async def receive(self, parameters: Any) -> None:
        first = not self._RTCRtpReceiver__started
        await super().receive(parameters)
        if first:
            # aiortc has just started a decoder thread for this receiver; we never decode.
            self._RTCRtpReceiver__stop_decoder()
            # Route retransmissions by their RTX SSRC: aiortc otherwise routes them by payload
            # type alone, which fails as soon as a publisher has two video tracks.
            for enc in parameters.encodings:
                if enc.rtx:
                    self.transport._rtp_router.ssrc_table[enc.rtx.ssrc] = self

    async def _handle_rtp_packet(self, packet: RtpPacket, arrival_time_ms: int) -> None:
        # aiortc's method without depacketising, jitter buffer and decoding (and without REMB,
        # which it computes only for its own decoder's benefit).
        if not self._enabled:
            return
        codecs: dict[int, RTCRtpCodecParameters] = self._RTCRtpReceiver__codecs
        codec = codecs.get(packet.payload_type)
        if codec is None:
            return
        streams: dict[int, StreamStatistics] = self._RTCRtpReceiver__remote_streams
        stats = streams.get(packet.ssrc)
        if stats is None:
            stats = streams[packet.ssrc] = StreamStatistics(codec.clockRate)
        stats.add(packet)  # for the RTCP receiver reports the publisher adapts to
        if is_rtx(codec):
            original_ssrc = self._RTCRtpReceiver__rtx_ssrc.get(packet.ssrc)
            apt = codec.parameters.get("apt")
            if original_ssrc is None or len(packet.payload) < 2 or apt not in codecs:
                return  # unknown stream, or RTX padding (bandwidth probing)
            packet = unwrap_rtx(packet, payload_type=apt, ssrc=original_ssrc)
        nack = self._RTCRtpReceiver__nack_generator
        if nack is not None and nack.add(packet):
            await self._send_rtcp_nack(packet.ssrc, sorted(nack.missing))
        await self._on_rtp(packet)

    def request_keyframe(self, media_ssrc: int) -> None:
        spawn(self._send_rtcp_pli(media_ssrc), "sending a PLI")


def first_codec(transceiver: RTCRtpTransceiver) -> RTCRtpCodecParameters | None:
    """The codec the remote side sends with: the first codec both sides negotiated."""
    codecs: list[RTCRtpCodecParameters] = transceiver._codecs
    return codecs[0] if codecs else None


def offered_direction(transceiver: RTCRtpTransceiver) -> str | None:
    """The direction in the remote offer (publisher side: "sendonly" while it publishes)."""
    return transceiver._offerDirection


def restart_connect(pc: RTCPeerConnection) -> None:
    """Re-run aiortc's connect step, which starts the RTP senders and receivers.

    aiortc starts them only if DTLS is already up when a description is applied. A
    renegotiation that lands while the first DTLS handshake still runs (a late joiner's tracks,
    a client that publishes right after connecting) would leave them unstarted; the step is
    idempotent, so the SFU re-runs it once the connection is up.
    """
    spawn(pc._RTCPeerConnection__connect(), "restarting aiortc's connect step")


# The addresses restrict_ice_to was given and not yet undone, one entry per call: two SFUs of
# one process (the federation tests') each add theirs, and either may stop first.
_ice_ips: list[str] = []
_original_host_addresses: Callable[..., list[str]] | None = None


def _restricted(use_ipv4: bool, use_ipv6: bool) -> list[str]:
    return list(dict.fromkeys(_ice_ips))


def restrict_ice_to(ip: str) -> Callable[[], None]:
    """Gather ICE host candidates on ``ip`` only (and on the addresses of other calls not yet
    undone); returns the function that undoes it.

    aioice offers no per-connection interface filter, so this replaces its module-level
    address lookup, process-wide.
    """
    global _original_host_addresses
    if not _ice_ips:
        _original_host_addresses = aioice.ice.get_host_addresses
        aioice.ice.get_host_addresses = _restricted
    _ice_ips.append(ip)
    done = False

    def undo() -> None:
        nonlocal done
        if done:
            return
        done = True
        _ice_ips.remove(ip)
        if not _ice_ips and _original_host_addresses is not None:
            if aioice.ice.get_host_addresses is _restricted:
                aioice.ice.get_host_addresses = _original_host_addresses

    return undo


def _missing(obj: object, names: tuple[str, ...], label: str) -> list[str]:
    return [f"{label}.{name}" for name in names if not hasattr(obj, name)]


async def check_aiortc() -> None:
    """Raise IncompatibleDependency if an aiortc internal used here is missing."""
    pc = RTCPeerConnection()
    try:
        transceiver = pc.addTransceiver("audio")
        missing = _missing(transceiver.sender, _SENDER_ATTRS, "RTCRtpSender")
        missing += _missing(transceiver.receiver, _RECEIVER_ATTRS, "RTCRtpReceiver")
        missing += _missing(transceiver, _TRANSCEIVER_ATTRS, "RTCRtpTransceiver")
        missing += _missing(transceiver.receiver.transport, _TRANSPORT_ATTRS, "RTCDtlsTransport")
        missing += _missing(pc, _PC_ATTRS, "RTCPeerConnection")
        if not callable(getattr(aioice.ice, "get_host_addresses", None)):
            missing.append("aioice.ice.get_host_addresses")
    finally:
        await pc.close()
    if missing:
        raise IncompatibleDependency(
            f"bot.devsfu forwards RTP through aiortc internals that aiortc {aiortc.__version__} "
            f"does not have: {', '.join(missing)}. It was written for aiortc {AIORTC_VERSION}; "
            "install the version pinned in pyproject.toml."
        )
    if aiortc.__version__ != AIORTC_VERSION:
        log.warning(
            "aiortc %s is installed; bot.devsfu was tested with %s",
            aiortc.__version__,
            AIORTC_VERSION,
        )
