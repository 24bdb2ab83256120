"""A cheap load-generator participant: Matrix and MatrixRTC from the bot framework, media from
a loop of Opus frames that were encoded and end-to-end encrypted once, sent with aiortc.

The livekit SDK encodes, encrypts and paces every stream on its own (libwebrtc's encoder queue,
the source's 10 ms capture thread, the frame cryptor): about 3% of a core per published
stream here, more than the bot spends receiving it, so the generator, not the bot, set the
limit of ``bench.load``. What the bot receives does not need a live encoder: a tone (or the
speech samples) is encoded once into 20 ms Opus packets, each packet encrypted once the way
Element Call's livekit-client does it (HKDF-SHA256 of the member's key with the salt
``LKFrameEncryptionKey`` and 128 zero bytes of info, AES-128-GCM with the Opus TOC byte in
clear as additional data, then the IV and the trailer ``[12, key index]``;
shared/docs/livekit-python.md §3.4, §4), and the loop is sent as it is, paced at 20 ms. The
receiver takes each frame's IV from its trailer, so repeating frames decrypt like new ones.

The LiveKit side is the dev SFU's signalling (``/rtc``, dual peer connections): join,
``AddTrackRequest``, a publisher offer with one send-only Opus transceiver, pings. The
subscriber connection the SFU offers is left unanswered: this participant hears nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import math
import os
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import av
import numpy as np
from aiortc import MediaStreamTrack, RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from livekit.protocol import models as m
from livekit.protocol import rtc as lk

from bot import outbound
from bot.config import Config
from bot.matrix.client import MatrixClient
from bot.outbound import OutboundPolicy
from bot.rtc.focus import SfuAccess
from bot.rtc.manager import MatrixRTCSessionManager
from bot.rtc.session import EncryptionKeyChanged

RATE = 48_000
PACKET = RATE // 50  # 20 ms, what livekit-client sends
AMPLITUDE = 0.25
PAUSE_S = 1.5  # between sentences
SALT = b"LKFrameEncryptionKey"
TIME_BASE = fractions.Fraction(1, RATE)
#: Packets this late are skipped (a gap this process made) rather than sent in a burst.
CATCH_UP_S = 0.3
#: Packets this late are counted: the receiver's jitter buffer may not cover them.
LATE_S = 0.06


def tone_hz(index: int) -> int:
    """Whole hertz, so one second of it loops without a click."""
    return 300 + 70 * index


@dataclass
class Spoken:
    """One sentence a speaker said: its text and when its last sample left (monotonic)."""

    text: str
    end: float


@dataclass
class VoiceStats:
    written_s: float = 0.0
    #: (when, seconds): times this process was late with a packet (its own gap)
    underruns: list[tuple[float, float]] = field(default_factory=list)
    #: (when, seconds): packets sent more than LATE_S after their time (a burst follows;
    #: past the receiver's jitter buffer that is a quiet stretch this process made)
    late: list[tuple[float, float]] = field(default_factory=list)
    spoken: list[Spoken] = field(default_factory=list)


def frame_key(raw: bytes) -> AESGCM:
    """The AES-128-GCM key livekit-client derives from a member's raw media key."""
    hkdf = HKDF(algorithm=hashes.SHA256(), length=16, salt=SALT, info=bytes(128))
    return AESGCM(hkdf.derive(raw))


def encrypt_frame(key: AESGCM, index: int, payload: bytes) -> bytes:
    """One Opus frame as Element Call encrypts it: TOC byte clear (and authenticated),
    ciphertext with tag, IV, ``[IV length, key index]``."""
    iv = os.urandom(12)
    header, body = payload[:1], payload[1:]
    return header + key.encrypt(iv, body, header) + iv + bytes([12, index])


def encode_opus(pcm: np.ndarray) -> list[bytes]:
    """int16 mono 48 kHz -> 20 ms Opus packets (livekit-client's frame size and rate)."""
    codec = av.CodecContext.create("libopus", "w")
    codec.sample_rate, codec.layout, codec.format = RATE, "mono", "s16"  # type: ignore[attr-defined]
    codec.bit_rate = 32_000
    codec.open()
    packets: list[bytes] = []
    for i in range(0, pcm.size - PACKET + 1, PACKET):
        frame = av.AudioFrame.from_ndarray(
            pcm[i : i + PACKET].reshape(1, -1), format="s16", layout="mono"
        )
        frame.sample_rate, frame.pts = RATE, i
        packets += [bytes(p) for p in codec.encode(frame)]  # type: ignore[attr-defined]
    packets += [bytes(p) for p in codec.encode(None)]  # type: ignore[attr-defined]
    return packets


@dataclass(frozen=True)
class Script:
    """What a participant sends over and over: its packets, and where sentences end
    (packet index -> text)."""

    packets: tuple[bytes, ...]
    sentence_ends: dict[int, str] = field(default_factory=dict)


def tone_script(index: int) -> Script:
    t = np.arange(RATE * 2) / RATE  # 2 s encoded, the second one looped (a settled encoder)
    wave = (AMPLITUDE * 32767 * np.sin(2 * math.pi * tone_hz(index) * t)).astype(np.int16)
    packets = encode_opus(wave)
    return Script(tuple(packets[50:100]))


def silence_script() -> Script:
    return Script(tuple(encode_opus(np.zeros(RATE * 2, dtype=np.int16))[50:100]))


def speech_script(index: int, room: str) -> Script:
    """The shipped sentences of one voice with pauses, after a lead of silence that differs
    per speaker and room (so speakers do not all pause together)."""
    from plugins.transcriber.samples import samples

    voice = "slt" if index % 2 == 0 else "rms"
    lead = 0.2 + (index * 7 + sum(map(ord, room))) % 29 / 10
    parts = [np.zeros(round(lead * RATE) // PACKET * PACKET, dtype=np.int16)]
    ends: dict[int, str] = {}
    position = parts[0].size
    for sample in samples().values():
        if sample.voice != voice:
            continue
        pcm = sample.pcm(RATE).astype(np.int16)
        pcm = np.pad(pcm, (0, -pcm.size % PACKET))
        parts.append(pcm)
        position += pcm.size
        ends[position // PACKET - 1] = sample.text
        pause = np.zeros(round(PAUSE_S * RATE) // PACKET * PACKET, dtype=np.int16)
        parts.append(pause)
        position += pause.size
    packets = encode_opus(np.concatenate(parts))
    return Script(tuple(packets[: position // PACKET]), ends)


class LoopTrack(MediaStreamTrack):
    """Encrypted packets of a script, one every 20 ms, in a loop. aiortc packs pre-encoded
    ``av.Packet`` as they are (``RTCRtpSender._next_encoded_frame``)."""

    kind = "audio"

    def __init__(self, script: Script, stats: VoiceStats) -> None:
        super().__init__()
        self._script = script
        self._frames: list[bytes] = []
        self._keyed = asyncio.Event()
        self._ends = script.sentence_ends
        self.stats = stats
        self._n = 0
        self._t0: float | None = None

    def set_key(self, raw: bytes, index: int) -> None:
        """Encrypt with this key from now on (the loop is encrypted again: 50 frames)."""
        key = frame_key(raw)
        self._frames = [encrypt_frame(key, index, p) for p in self._script.packets]
        self._keyed.set()

    async def recv(self) -> av.Packet:
        await self._keyed.wait()  # the first key comes once someone else is in the call
        now = time.monotonic()
        if self._t0 is None:
            self._t0 = now
        due = self._t0 + (self._n + 1) * PACKET / RATE  # a 20 ms packet is whole at its end
        if due > now:
            await asyncio.sleep(due - now)
        elif now - due > CATCH_UP_S:  # this process was stuck: its own gap, not the bot's
            self.stats.underruns.append((now, now - due))
            self._t0 += now - due
        elif now - due > LATE_S:
            self.stats.late.append((now, now - due))
        # Late by less: sent at once, the next ones too until on time again, as a network
        # delay would bring them; the receiver's jitter buffer is there for that.
        k = self._n % len(self._frames)
        packet = av.Packet(self._frames[k])
        packet.pts, packet.time_base = self._n * PACKET, TIME_BASE
        self._n += 1
        self.stats.written_s = self._n * PACKET / RATE
        text = self._ends.get(k)
        if text is not None:
            self.stats.spoken.append(Spoken(text, time.monotonic()))
        return packet


class LiveKitPublisher:
    """One participant's connection to one call's SFU, publishing one microphone track."""

    def __init__(self, access: SfuAccess, track: LoopTrack) -> None:
        self.access = access
        self.track = track
        self.stats = track.stats
        self._session: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self._tasks: list[asyncio.Task[None]] = []
        self._published: asyncio.Future[lk.TrackPublishedResponse] | None = None
        self._answer: asyncio.Future[lk.SessionDescription] | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._published, self._answer = loop.create_future(), loop.create_future()
        self._session = aiohttp.ClientSession()
        url = f"{self.access.url.rstrip('/')}/rtc"
        self._ws = await self._session.ws_connect(
            url,
            params={"auto_subscribe": "0", "protocol": "15", "sdk": "python"},
            headers={"Authorization": f"Bearer {self.access.jwt}"},
        )
        join = lk.SignalResponse.FromString(await self._ws.receive_bytes(timeout=20)).join
        self._tasks.append(asyncio.create_task(self._read()))
        self._tasks.append(asyncio.create_task(self._ping(max(1, join.ping_interval or 5))))
        cid = f"TR_load{id(self):x}"
        await self._send(
            add_track=lk.AddTrackRequest(
                cid=cid,
                name="microphone",
                type=m.AUDIO,
                source=m.TrackSource.MICROPHONE,
                encryption=m.Encryption.GCM,
                disable_red=True,
            )
        )
        await asyncio.wait_for(self._published, 20)
        self.track._id = cid  # the SFU matches the offer's msid to the AddTrackRequest's cid
        self._pc.addTransceiver(self.track, direction="sendonly")
        await self._pc.setLocalDescription(await self._pc.createOffer())
        sdp = self._pc.localDescription.sdp
        await self._send(offer=lk.SessionDescription(type="offer", sdp=sdp, id=1))
        answer = await asyncio.wait_for(self._answer, 20)
        await self._pc.setRemoteDescription(RTCSessionDescription(answer.sdp, "answer"))

    async def _send(self, **message: Any) -> None:
        assert self._ws is not None
        await self._ws.send_bytes(lk.SignalRequest(**message).SerializeToString())

    async def _read(self) -> None:
        assert self._ws is not None and self._published is not None and self._answer is not None
        async for msg in self._ws:
            if msg.type != aiohttp.WSMsgType.BINARY:
                continue
            resp = lk.SignalResponse.FromString(msg.data)
            which = resp.WhichOneof("message")
            if which == "track_published" and not self._published.done():
                self._published.set_result(resp.track_published)
            elif which == "answer" and not self._answer.done():
                self._answer.set_result(resp.answer)
            # trickle: the SFU's answer carries its candidates; subscriber offers: unanswered

    async def _ping(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            now = int(time.time() * 1000)
            await self._send(ping_req=lk.Ping(timestamp=now))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        with contextlib.suppress(Exception):
            await self._send(leave=lk.LeaveRequest(reason=m.DisconnectReason.CLIENT_INITIATED))
        await self._pc.close()
        if self._ws is not None:
            await self._ws.close()
        if self._session is not None:
            await self._session.close()


class LoadParticipant:
    """A Matrix user in many calls at once: memberships and media keys through the bot
    framework's own MatrixRTC layer (as Element Call does them), media from ``LiveKitPublisher``
    (no livekit SDK in this process)."""

    def __init__(self, config: Config, index: int, idle: str) -> None:
        self.config = config
        self.matrix = MatrixClient(config.matrix, config.bot.data_dir)
        self.rtc = MatrixRTCSessionManager(self.matrix, config.rtc)
        self.index = index
        #: "tone": a tone of its own pitch where not speaking; "silence": silence there
        self.idle = idle
        #: the calls where it says the speech samples instead
        self.speak_rooms: frozenset[str] = frozenset()
        #: its connection in each call it publishes in, by room
        self.instances: dict[str, LiveKitPublisher] = {}
        self._idle_script: Script | None = None
        self.matrix.on_invite(self._on_invite)

    async def _on_invite(self, room_id: str, inviter: str) -> None:
        await self.matrix.join(room_id)  # the bench's own rooms, from its first participant

    async def start(self) -> None:
        outbound.configure(OutboundPolicy.from_config(self.config))
        await self.matrix.start()

    async def join_call(self, room_id: str) -> None:
        deadline = time.monotonic() + 60
        while room_id not in self.matrix.nio.rooms:  # its own sync of the room it joined
            if time.monotonic() > deadline:
                raise TimeoutError(f"{room_id} never synced")
            await asyncio.sleep(0.1)
        session = self.rtc.get_room_session(room_id)
        access = await session.join()
        if room_id in self.speak_rooms:
            script = await asyncio.to_thread(speech_script, self.index, room_id)
        else:
            if self._idle_script is None:
                make = silence_script if self.idle == "silence" else tone_script
                self._idle_script = await asyncio.to_thread(
                    make, *(() if self.idle == "silence" else (self.index,))
                )
            script = self._idle_script
        track = LoopTrack(script, VoiceStats())

        def on_key(change: EncryptionKeyChanged) -> None:
            if change.own:  # emitted when it is to be used (after js's use-key delay)
                track.set_key(change.key.key, change.key.index)

        session.encryption_key_changed.connect(on_key)
        if session.own_key is not None:
            track.set_key(session.own_key.key, session.own_key.index)
        publisher = LiveKitPublisher(access, track)
        await publisher.start()
        self.instances[room_id] = publisher

    async def stop(self) -> None:
        for publisher in self.instances.values():
            with contextlib.suppress(Exception):
                await publisher.stop()
        if self.matrix.started:
            await self.rtc.stop()
        await self.matrix.stop()
