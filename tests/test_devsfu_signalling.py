"""The dev SFU's HTTP and signalling surface, with raw websocket clients (no media, so no
network namespace): auth, the routes browsers need, join/leave bookkeeping, timeouts, and
malformed messages that must never hurt the SFU."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import os
import random
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
import pytest
from aiortc import RTCPeerConnection
from livekit.protocol import models as m
from livekit.protocol import rtc as lk

from bot.devsfu import DevSfu
from bot.devsfu.auth import DEFAULT_API_KEY, DEFAULT_API_SECRET, TokenAuthority
from bot.devsfu.signalling import SignalSettings
from tests.lkclient import token, wait_until
from tests.synapse import REPO, free_port


@pytest.fixture
async def sfu() -> AsyncIterator[DevSfu]:
    server = DevSfu()
    await server.start("127.0.0.1", 0)
    yield server
    await server.stop()


@dataclass
class Raw:
    """A signalling client that speaks the protocol by hand."""

    http: aiohttp.ClientSession
    ws: aiohttp.ClientWebSocketResponse
    join: lk.JoinResponse

    async def send(self, **message: object) -> None:
        await self.ws.send_bytes(lk.SignalRequest(**message).SerializeToString())

    async def next(self, which: str, timeout: float = 5) -> lk.SignalResponse:
        """The next response of kind ``which``, skipping others."""
        async with asyncio.timeout(timeout):
            while True:
                msg = await self.ws.receive()
                if msg.type != aiohttp.WSMsgType.BINARY:
                    raise ConnectionError(f"websocket: {msg.type.name}")
                resp = lk.SignalResponse.FromString(msg.data)
                if resp.WhichOneof("message") == which:
                    return resp

    async def ping(self, stamp: int = 1234) -> None:
        """The SFU still serves this client: a ping is answered."""
        await self.send(ping_req=lk.Ping(timestamp=stamp))
        while (await self.next("pong_resp")).pong_resp.last_ping_timestamp != stamp:
            pass  # answers to earlier pings

    async def close(self) -> None:
        await self.ws.close()
        await self.http.close()


async def raw_join(sfu: DevSfu, identity: str, room: str = "r", query: str = "") -> Raw:
    http = aiohttp.ClientSession()
    headers = {"Authorization": f"Bearer {token(identity, room)}"}
    ws = await http.ws_connect(f"{sfu.http_url}/rtc?sdk=test{query}", headers=headers)
    client = Raw(http, ws, lk.JoinResponse())
    client.join = (await client.next("join")).join
    return client


async def updates_about(client: Raw, identity: str, timeout: float = 5) -> m.ParticipantInfo:
    async with asyncio.timeout(timeout):
        while True:
            for info in (await client.next("update")).update.participants:
                if info.identity == identity:
                    return info


# -- HTTP routes ------------------------------------------------------------------------


async def test_single_pc_paths_are_404_with_cors(sfu: DevSfu) -> None:
    async with aiohttp.ClientSession() as http:
        for path in ("/rtc/v1", "/rtc/v1/validate"):
            async with http.get(f"{sfu.http_url}{path}") as resp:
                assert resp.status == 404
                assert resp.headers["Access-Control-Allow-Origin"] == "*"


async def test_validate_and_health(sfu: DevSfu) -> None:
    good = {"Authorization": f"Bearer {token('a', 'r')}"}
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{sfu.http_url}/rtc/validate", headers=good) as resp:
            assert (resp.status, await resp.text()) == (200, "success")
        async with http.get(f"{sfu.http_url}/rtc/validate?access_token=bad") as resp:
            assert resp.status == 401
            assert resp.headers["Access-Control-Allow-Origin"] == "*"
        async with http.get(f"{sfu.http_url}/healthz") as resp:
            assert resp.status == 200
        async with http.get(f"{sfu.http_url}/sfu/get") as resp:
            assert resp.status == 404  # no homeserver, no JWT service


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "not-a-jwt",
        TokenAuthority(DEFAULT_API_KEY, "wrong-secret").mint("a", "r"),
        TokenAuthority().mint("a", "r", ttl=datetime.timedelta(minutes=-5)),  # expired
    ],
)
async def test_bad_tokens_get_401(sfu: DevSfu, bad: str) -> None:
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.WSServerHandshakeError) as e:
            await http.ws_connect(f"{sfu.http_url}/rtc", headers={"Authorization": f"Bearer {bad}"})
        assert e.value.status == 401
    assert sfu.participants() == []


# -- joining and leaving ----------------------------------------------------------------


async def test_join_update_and_leave(sfu: DevSfu) -> None:
    a = await raw_join(sfu, "alice")
    assert a.join.participant.identity == "alice"
    assert a.join.participant.sid.startswith("PA_") and a.join.room.sid.startswith("RM_")
    assert a.join.ping_interval > 0
    b = await raw_join(sfu, "bob")
    assert [p.identity for p in b.join.other_participants] == ["alice"]
    assert (await updates_about(a, "bob")).state == m.ParticipantInfo.ACTIVE
    await b.send(leave=lk.LeaveRequest())
    left = await updates_about(a, "bob")
    assert left.state == m.ParticipantInfo.DISCONNECTED
    assert left.disconnect_reason == m.DisconnectReason.CLIENT_INITIATED
    await b.close()
    await a.close()
    await wait_until(lambda: not sfu.rooms, 5, "the empty room to go")


async def test_rooms_are_isolated(sfu: DevSfu) -> None:
    a = await raw_join(sfu, "alice", "one")
    b = await raw_join(sfu, "bob", "two")
    assert list(b.join.other_participants) == []
    c = await raw_join(sfu, "carol", "one")
    assert [p.identity for p in c.join.other_participants] == ["alice"]
    assert set(sfu.rooms) == {"one", "two"}
    for client in (a, b, c):
        await client.close()


async def test_the_newest_connection_of_an_identity_wins(sfu: DevSfu) -> None:
    old = await raw_join(sfu, "alice")
    new = await raw_join(sfu, "alice")
    leave = (await old.next("leave")).leave
    assert leave.reason == m.DisconnectReason.DUPLICATE_IDENTITY
    assert [p.sid for p in sfu.participants("alice")] == [new.join.participant.sid]
    await new.ping()
    await old.close()
    await new.close()


async def test_resume_is_answered_with_a_full_reconnect(sfu: DevSfu) -> None:
    first = await raw_join(sfu, "alice")
    async with aiohttp.ClientSession() as http:
        headers = {"Authorization": f"Bearer {token('alice', 'r')}"}
        url = f"{sfu.http_url}/rtc?reconnect=1&sid={first.join.participant.sid}"
        async with http.ws_connect(url, headers=headers) as ws:
            msg = await ws.receive(timeout=5)
            leave = lk.SignalResponse.FromString(msg.data).leave
            assert leave.action == lk.LeaveRequest.RECONNECT and leave.can_reconnect
    await first.close()


async def test_silent_clients_are_dropped() -> None:
    sfu = DevSfu(signal_settings=SignalSettings(ping_interval=1, ping_timeout=2))
    await sfu.start("127.0.0.1", 0)
    try:
        silent = await raw_join(sfu, "silent")
        watcher = await raw_join(sfu, "watcher")

        async def keep_pinging() -> None:
            while True:
                await watcher.send(ping_req=lk.Ping(timestamp=1))
                await asyncio.sleep(0.5)

        pinger = asyncio.create_task(keep_pinging())
        info = await updates_about(watcher, "silent", timeout=10)
        while info.state != m.ParticipantInfo.DISCONNECTED:
            info = await updates_about(watcher, "silent", timeout=10)
        assert info.disconnect_reason == m.DisconnectReason.CONNECTION_TIMEOUT
        assert sfu.participants("silent") == []
        pinger.cancel()
        await silent.close()
        await watcher.close()
    finally:
        await sfu.stop()


# -- answers ----------------------------------------------------------------------------


async def _publisher_offer() -> tuple[RTCPeerConnection, str]:
    pc = RTCPeerConnection()
    pc.createDataChannel("_reliable")
    pc.addTransceiver("audio", direction="sendonly")
    await pc.setLocalDescription(await pc.createOffer())
    return pc, pc.localDescription.sdp


async def test_answers_echo_the_offer_id(sfu: DevSfu) -> None:
    client = await raw_join(sfu, "alice")
    pc, sdp = await _publisher_offer()
    await client.send(offer=lk.SessionDescription(type="offer", sdp=sdp, id=42))
    answer = (await client.next("answer")).answer
    assert (answer.type, answer.id) == ("answer", 42)
    assert answer.sdp.startswith("v=0")
    await pc.close()
    await client.close()


async def test_track_published_response(sfu: DevSfu) -> None:
    client = await raw_join(sfu, "alice")
    await client.send(add_track=lk.AddTrackRequest(cid="c1", name="mic", type=m.AUDIO))
    published = (await client.next("track_published")).track_published
    assert published.cid == "c1" and published.track.sid.startswith("TR_")
    await client.close()


# -- malformed messages -----------------------------------------------------------------


def _bad_requests() -> list[lk.SignalRequest]:
    """Well-formed protobufs with contents no client should send."""
    sd = lk.SessionDescription
    return [
        lk.SignalRequest(offer=sd(type="offer", sdp="garbage", id=1)),
        lk.SignalRequest(offer=sd(type="offer", sdp="v=0\r\nm=audio 9 RTP/AVP 0\r\n")),
        lk.SignalRequest(offer=sd(type="offer", sdp="")),
        lk.SignalRequest(answer=sd(type="answer", sdp="garbage")),
        lk.SignalRequest(answer=sd(type="answer", sdp="")),
        lk.SignalRequest(trickle=lk.TrickleRequest(candidateInit="{", target=lk.SUBSCRIBER)),
        lk.SignalRequest(trickle=lk.TrickleRequest(candidateInit="[]", target=lk.PUBLISHER)),
        lk.SignalRequest(trickle=lk.TrickleRequest(candidateInit='{"candidate": "candidate:x"}')),
        lk.SignalRequest(trickle=lk.TrickleRequest(candidateInit=json.dumps({"candidate": 7}))),
        lk.SignalRequest(trickle=lk.TrickleRequest(candidateInit="{}", target=99)),
        lk.SignalRequest(add_track=lk.AddTrackRequest(cid="", type=99, width=2**31)),
        lk.SignalRequest(mute=lk.MuteTrackRequest(sid="TR_nope", muted=True)),
        lk.SignalRequest(subscription=lk.UpdateSubscription(track_sids=["x"], subscribe=True)),
        lk.SignalRequest(subscription=lk.UpdateSubscription(track_sids=["x"], subscribe=False)),
        lk.SignalRequest(track_setting=lk.UpdateTrackSettings(track_sids=["x"], disabled=True)),
        lk.SignalRequest(update_metadata=lk.UpdateParticipantMetadata(name="x" * 10000)),
        lk.SignalRequest(simulate=lk.SimulateScenario(speaker_update=3)),
        lk.SignalRequest(sync_state=lk.SyncState()),
    ]


async def test_malformed_messages_never_hurt_the_sfu(sfu: DevSfu) -> None:
    victim = await raw_join(sfu, "victim")
    bystander = await raw_join(sfu, "bystander")
    rng = random.Random(4)
    valid = [r.SerializeToString() for r in _bad_requests()]
    valid.append(lk.SignalRequest(ping_req=lk.Ping(timestamp=1)).SerializeToString())
    frames: list[bytes] = [b"", b"\x00", b"\xff" * 64]
    frames += [rng.randbytes(rng.randrange(1, 300)) for _ in range(200)]
    for data in valid:  # flipped bytes in real requests reach deeper than random ones
        for _ in range(10):
            mutated = bytearray(data)
            mutated[rng.randrange(len(mutated))] = rng.randrange(256)
            frames.append(bytes(mutated))
    for req in _bad_requests():
        await victim.ws.send_bytes(req.SerializeToString())
    for data in frames:
        await victim.ws.send_bytes(data)
    await victim.ws.send_str("a text frame")
    await victim.ping(stamp=99)  # everything before was handled (or skipped), in order
    await bystander.ping()
    late = await raw_join(sfu, "late")  # and the SFU still takes new participants
    assert {p.identity for p in late.join.other_participants} == {"victim", "bystander"}
    for client in (victim, bystander, late):
        await client.close()


# -- command line -----------------------------------------------------------------------


def test_cli_help_says_what_it_is_for() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "bot", "dev-sfu", "--help"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )
    assert out.returncode == 0
    text = " ".join(out.stdout.split())
    assert "For tests and the demo only; production uses LiveKit" in text
    assert f"default: {DEFAULT_API_KEY}" in text and f"default: {DEFAULT_API_SECRET}" in text


async def test_cli_serves_until_sigterm_and_tells_clients() -> None:
    port = free_port()
    cmd = [sys.executable, "-m", "bot", "dev-sfu", "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--homeserver", "http://127.0.0.1:9"]
    proc = subprocess.Popen(cmd, cwd=REPO, stderr=subprocess.PIPE, text=True)  # noqa: ASYNC220
    try:
        sfu_url = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession() as http:
            for _ in range(100):
                with contextlib.suppress(aiohttp.ClientError):
                    async with http.get(f"{sfu_url}/healthz") as resp:
                        if resp.status == 200:
                            break
                await asyncio.sleep(0.1)
            headers = {"Authorization": f"Bearer {token('a', 'r')}"}
            async with http.ws_connect(f"{sfu_url}/rtc", headers=headers) as ws:
                await ws.receive(timeout=5)  # the JoinResponse
                proc.send_signal(signal.SIGTERM)
                msg = await ws.receive(timeout=10)
                leave = lk.SignalResponse.FromString(msg.data).leave
                assert leave.reason == m.DisconnectReason.SERVER_SHUTDOWN
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        _, err = proc.communicate()
    assert "dev SFU on ws://127.0.0.1" in err
