"""The dev SFU's pure parts: key-frame detection, RTP rewriting, parsing untrusted input,
tokens, and the aiortc compatibility check."""

from __future__ import annotations

import datetime
import fractions
import json
import random

import aioice.ice
import av
import numpy as np
import pytest
from aiortc import RTCPeerConnection, RTCRtpReceiver
from aiortc.codecs.h264 import H264Encoder
from aiortc.codecs.vpx import Vp8Encoder
from hypothesis import given
from hypothesis import strategies as st
from livekit import api
from livekit.protocol import rtc as lk

from bot.devsfu import aiortc_compat
from bot.devsfu.auth import TokenAuthority, TokenError
from bot.devsfu.forwarding import (
    LatencyStats,
    RtpRewriter,
    h264_keyframe_start,
    vp8_keyframe_start,
)
from bot.devsfu.jwt_service import MatrixError, decode_like_go
from bot.devsfu.participant import parse_candidate
from bot.devsfu.signalling import decode_request
from bot.errors import IncompatibleDependency

# -- key frames -------------------------------------------------------------------------


def _encoded_frames(encoder: Vp8Encoder | H264Encoder, count: int) -> list[list[bytes]]:
    """RTP payloads of ``count`` frames, the first forced to be a key frame."""
    rng = np.random.default_rng(1)
    frames = []
    for i in range(count):
        image = rng.integers(0, 255, (240, 320, 3), dtype=np.uint8)
        frame = av.VideoFrame.from_ndarray(image, format="rgb24")
        frame.pts, frame.time_base = i * 3000, fractions.Fraction(1, 90000)
        payloads, _ = encoder.encode(frame, force_keyframe=i == 0)
        frames.append(payloads)
    return frames


def test_vp8_key_frames_are_found_in_real_packets() -> None:
    frames = _encoded_frames(Vp8Encoder(), 3)
    assert vp8_keyframe_start(frames[0][0])
    assert not any(vp8_keyframe_start(p) for p in frames[0][1:])  # not a partition start
    assert not any(vp8_keyframe_start(p) for f in frames[1:] for p in f)  # delta frames


@pytest.mark.parametrize(
    ("payload", "key"),
    [
        (bytes([0x10, 0x00]), True),  # S=1, no extension, P=0
        (bytes([0x10, 0x01]), False),  # P=1: delta frame
        (bytes([0x00, 0x00]), False),  # not the start of a partition
        (bytes([0x11, 0x00]), False),  # partition 1
        (bytes([0x90, 0x80, 0x05, 0x00]), True),  # 7-bit picture id
        (bytes([0x90, 0x80, 0x85, 0x01, 0x00]), True),  # 15-bit picture id
        (bytes([0x90, 0xE0, 0x05, 0x07, 0x20, 0x00]), True),  # picture id, TL0PICIDX, TID
        (bytes([0x90, 0xE0, 0x05, 0x07, 0x20, 0x01]), False),
        (bytes([0x90, 0x80]), False),  # truncated
    ],
)
def test_vp8_descriptor_variants(payload: bytes, key: bool) -> None:
    assert vp8_keyframe_start(payload) is key


def test_h264_key_frames_are_found_in_real_packets() -> None:
    frames = _encoded_frames(H264Encoder(), 3)
    assert h264_keyframe_start(frames[0][0])  # STAP-A with SPS/PPS
    assert not any(h264_keyframe_start(f[0]) for f in frames[1:])


@pytest.mark.parametrize(
    ("payload", "key"),
    [
        (bytes([0x65, 0x88]), True),  # IDR slice
        (bytes([0x67, 0x42]), True),  # SPS
        (bytes([0x41, 0x9A]), False),  # non-IDR slice
        (bytes([0x7C, 0x85, 0x88]), True),  # FU-A start of an IDR
        (bytes([0x7C, 0x05, 0x88]), False),  # FU-A continuation
        (bytes([0x78, 0x00, 0x02, 0x68, 0xCE, 0x00, 0x02, 0x65, 0x88]), True),  # STAP-A
        (bytes([0x78, 0x00, 0x02, 0x68, 0xCE]), False),  # STAP-A with only a PPS
        (b"", False),
    ],
)
def test_h264_variants(payload: bytes, key: bool) -> None:
    assert h264_keyframe_start(payload) is key


@given(st.binary(max_size=64))
def test_key_frame_detection_never_raises(payload: bytes) -> None:
    assert isinstance(vp8_keyframe_start(payload), bool)
    assert isinstance(h264_keyframe_start(payload), bool)


# -- RTP rewriting ----------------------------------------------------------------------


@given(
    first_seq=st.integers(0, 0xFFFF),
    first_ts=st.integers(0, 0xFFFFFFFF),
    steps=st.lists(st.integers(1, 3), min_size=1, max_size=50),
)
def test_rewriting_keeps_gaps_and_wraps(first_seq: int, first_ts: int, steps: list[int]) -> None:
    rw = RtpRewriter(48000, rng=random.Random(0))
    rw.start(1, first_seq, first_ts, now=0.0)
    out = [rw.rewrite(first_seq, first_ts, 0.0)]
    seq, ts = first_seq, first_ts
    for step in steps:
        seq, ts = (seq + step) & 0xFFFF, (ts + 960 * step) & 0xFFFFFFFF
        out.append(rw.rewrite(seq, ts, 0.0))
    assert None not in out
    pairs = [o for o in out if o is not None]
    for (s0, t0), (s1, t1), step in zip(pairs[:-1], pairs[1:], steps, strict=True):
        assert (s1 - s0) & 0xFFFF == step  # gaps survive, across the wrap
        assert (t1 - t0) & 0xFFFFFFFF == 960 * step


def test_a_new_upstream_stream_continues_the_outgoing_one() -> None:
    rw = RtpRewriter(48000, rng=random.Random(0))
    rw.start(ssrc=1, seq=100, ts=5000, now=10.0)
    last = rw.rewrite(100, 5000, 10.0)
    assert last is not None
    rw.start(ssrc=2, seq=40000, ts=123, now=10.5)  # e.g. the publisher restarted its encoder
    nxt = rw.rewrite(40000, 123, 10.5)
    assert nxt == ((last[0] + 1) & 0xFFFF, (last[1] + 24000) & 0xFFFFFFFF)


def test_packets_from_before_the_start_are_dropped() -> None:
    rw = RtpRewriter(90000, rng=random.Random(0))
    rw.start(1, seq=10, ts=0, now=0.0)
    assert rw.rewrite(10, 0, 0.0) is not None
    assert rw.rewrite(9, 0, 0.0) is None  # reordered from before the key frame we started at
    assert rw.rewrite(11, 0, 0.0) is not None


def test_latency_summary() -> None:
    stats = LatencyStats(keep=10)
    assert stats.summary() == {"n": 0}
    for us in range(1, 21):
        stats.add(us / 1e6)
    summary = stats.summary()
    assert summary["n"] == 20  # counted all, kept the last 10
    assert summary["max_us"] == 20.0
    assert 11.0 <= summary["p50_us"] <= 20.0


# -- untrusted input --------------------------------------------------------------------


@given(st.binary(max_size=200))
def test_decoding_signal_requests_never_raises(data: bytes) -> None:
    req = decode_request(data)
    assert req is None or req.WhichOneof("message") is not None


def test_decoding_a_signal_request() -> None:
    data = lk.SignalRequest(ping_req=lk.Ping(timestamp=5)).SerializeToString()
    req = decode_request(data)
    assert req is not None and req.ping_req.timestamp == 5
    assert decode_request(b"") is None


def test_parsing_candidates() -> None:
    line = "candidate:1 1 udp 2122260223 10.213.0.2 50000 typ host generation 0"
    c = parse_candidate(json.dumps({"candidate": line, "sdpMid": "0", "sdpMLineIndex": 0}))
    assert c is not None and (c.ip, c.port, c.sdpMid) == ("10.213.0.2", 50000, "0")
    assert parse_candidate(json.dumps({"candidate": ""})) is None  # end of candidates
    for bad in ["", "[]", '{"candidate": 5}', '{"candidate": "candidate:x"}', "{"]:
        with pytest.raises(ValueError):
            parse_candidate(bad)


@given(st.text(max_size=100))
def test_parsing_candidates_raises_only_value_error(text: str) -> None:
    for init in (text, json.dumps({"candidate": text})):
        try:
            parse_candidate(init)
        except ValueError:
            pass


_FIELDS = {"room": str, "openid_token": dict, "device_id": str, "delay_timeout": int}


def test_jwt_requests_are_decoded_like_go() -> None:
    body = decode_like_go(b'{"room": "!r:x", "delay_timeout": null}', _FIELDS)
    assert body["room"] == "!r:x" and body["delay_timeout"] == 0 and body["device_id"] == ""
    assert body["openid_token"]["access_token"] == ""  # absent objects are zero values too
    assert decode_like_go(b'{"room": "a\\ud800b"}', _FIELDS)["room"] == "a\ufffdb"
    for bad in [
        b"not json",
        b"[1]",
        b'{"room": 5}',
        b'{"rooom": "x"}',  # unknown field
        b'{"openid_token": {"access_token": "t", "extra": 1}}',
        b'{"delay_timeout": 1.5}',
        b'{"delay_timeout": true}',
        b'{"delay_timeout": NaN}',
        b"\xff",
    ]:
        with pytest.raises(MatrixError) as e:
            decode_like_go(bad, _FIELDS)
        assert (e.value.status, e.value.errcode) == (400, "M_NOT_JSON")


@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(), st.lists, max_leaves=8))
def test_jwt_request_decoding_raises_only_matrix_errors(value: object) -> None:
    for doc in (value, {"room": value}, {"openid_token": value}):
        try:
            decode_like_go(json.dumps(doc).encode(), _FIELDS)
        except MatrixError:
            pass


# -- tokens -----------------------------------------------------------------------------


def test_tokens_round_trip() -> None:
    authority = TokenAuthority()
    grant = authority.verify(authority.mint("@a:x:DEV", "room"))
    assert (grant.identity, grant.room, grant.can_publish) == ("@a:x:DEV", "room", True)
    assert grant.can_update_metadata


def test_bad_tokens_are_refused() -> None:
    authority = TokenAuthority()
    expired = authority.mint("a", "r", ttl=datetime.timedelta(minutes=-5))
    other_secret = TokenAuthority("devkey", "other-secret").mint("a", "r")
    other_key = TokenAuthority("otherkey", "secret").mint("a", "r")
    no_room = api.AccessToken("devkey", "secret-secret-secret-secret-secret").with_identity("a")
    lenient = TokenAuthority("devkey", "secret-secret-secret-secret-secret")
    for token in ["", "garbage", expired, other_secret, other_key]:
        with pytest.raises(TokenError):
            authority.verify(token)
    with pytest.raises(TokenError, match="roomJoin"):
        lenient.verify(no_room.to_jwt())


# -- aiortc internals -------------------------------------------------------------------


async def test_aiortc_check_passes_with_the_pinned_version() -> None:
    await aiortc_compat.check_aiortc()


async def test_aiortc_check_names_missing_internals(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(RTCPeerConnection, "_RTCPeerConnection__connect")
    monkeypatch.delattr(RTCRtpReceiver, "_send_rtcp_pli")
    with pytest.raises(IncompatibleDependency) as e:
        await aiortc_compat.check_aiortc()
    assert "RTCPeerConnection._RTCPeerConnection__connect" in str(e.value)
    assert "RTCRtpReceiver._send_rtcp_pli" in str(e.value)
    assert "1.16.0" in str(e.value)


def test_ice_restriction_is_undone() -> None:
    original = aioice.ice.get_host_addresses
    undo = aiortc_compat.restrict_ice_to("10.213.0.1")
    try:
        assert aioice.ice.get_host_addresses(use_ipv4=True, use_ipv6=True) == ["10.213.0.1"]
    finally:
        undo()
    assert aioice.ice.get_host_addresses is original


def test_ice_restrictions_of_two_sfus_add_up_and_undo_in_any_order() -> None:
    original = aioice.ice.get_host_addresses
    undo_a = aiortc_compat.restrict_ice_to("10.213.0.1")
    undo_b = aiortc_compat.restrict_ice_to("10.213.0.2")
    try:
        both = aioice.ice.get_host_addresses(use_ipv4=True, use_ipv6=True)
        assert both == ["10.213.0.1", "10.213.0.2"]
        undo_a()
        undo_a()  # a second undo changes nothing
        assert aioice.ice.get_host_addresses(use_ipv4=True, use_ipv6=True) == ["10.213.0.2"]
    finally:
        undo_a()
        undo_b()
    assert aioice.ice.get_host_addresses is original
