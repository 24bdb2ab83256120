"""Media through the dev SFU between real livekit SDK clients, end-to-end encrypted as Element
Call does it. Needs the network namespace of scripts/netns-run.sh (libwebrtc ignores
loopback); the SFU binds to its first veth address and gathers ICE candidates only there."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable

import aiohttp
import pytest
from aiortc.rtp import RtpPacket
from livekit import rtc

from bot.devsfu import DevSfu
from bot.devsfu.forwarding import DownTrack
from tests.lkclient import (
    SILENCE_RMS,
    AudioProbe,
    Client,
    FrameCounter,
    Pattern,
    Tone,
    connect,
    token,
    wait_until,
)
from tests.synapse import REPO, free_port

AUDIO, VIDEO = rtc.TrackKind.KIND_AUDIO, rtc.TrackKind.KIND_VIDEO
E2EE_TRAILER_IV_LENGTH = 12  # LiveKit E2EE frames end with [IV length, key index]


@pytest.fixture
async def sfu(netns_addrs: tuple[str, str]) -> AsyncIterator[DevSfu]:
    server = DevSfu()
    await server.start(netns_addrs[0], 0)
    yield server
    await server.stop()


async def hears(client: Client, who: str, freq: float) -> float:
    """Wait until ``client`` hears ``who``'s tone at ``freq``; return its level."""
    probe = AudioProbe(await client.track(who, AUDIO))
    try:
        heard = await probe.tone(near=freq)
    except TimeoutError as e:
        raise AssertionError(f"{client.identity} does not hear {who}: {e}") from e
    finally:
        await probe.close()
    return heard.rms


async def test_e2ee_media_reaches_key_holders_only(
    sfu: DevSfu, monkeypatch: pytest.MonkeyPatch
) -> None:
    forwarded: list[tuple[str, str, bytes]] = []  # (subscriber, kind, payload) as sent
    write = DownTrack.write

    async def recording_write(self: DownTrack, packet: RtpPacket, now: float) -> bool:
        sent = await write(self, packet, now)
        if sent:
            forwarded.append((self.subscriber.identity, self.forwarder.kind, packet.payload))
        return sent

    monkeypatch.setattr(DownTrack, "write", recording_write)
    alice_key, bob_key = os.urandom(16), os.urandom(16)
    keys = {"alice": alice_key, "bob": bob_key}
    alice = await connect(sfu.url, "alice", "e2ee", keys=keys)
    bob = await connect(sfu.url, "bob", "e2ee", keys=keys)
    carol = await connect(sfu.url, "carol", "e2ee", keys={"alice": os.urandom(16)})
    tone, pattern = Tone(440), Pattern()
    await tone.publish(alice)
    await pattern.publish(alice)
    try:
        assert await hears(bob, "alice", 440) > 1000
        video = FrameCounter(await bob.track("alice", VIDEO))
        await wait_until(lambda: video.frames >= 5, 15, "decoded video frames")
        assert video.size == (320, 240)

        wrong_key_audio = AudioProbe(await carol.track("alice", AUDIO))
        wrong_key_video = FrameCounter(await carol.track("alice", VIDEO))
        assert await wrong_key_audio.loudest(1.0) < SILENCE_RMS
        assert wrong_key_video.frames == 0
        for probe in (video, wrong_key_audio, wrong_key_video):
            await probe.close()
    finally:
        await tone.stop()
        await pattern.stop()
    # Carol got the packets, as encrypted frames: the SFU forwards, it never decrypts.
    to_carol = [(kind, payload) for who, kind, payload in forwarded if who == "carol"]
    assert {kind for kind, _ in to_carol} == {"audio", "video"}
    assert all(p[-2] == E2EE_TRAILER_IV_LENGTH for kind, p in to_carol if kind == "audio")
    published = sfu.stats()["rooms"]["e2ee"]["alice"]["published"]
    for track in published.values():
        assert track["subscribers"]["carol"] > 0 and track["packets_in"] > 0
    for client in (alice, bob, carol):
        await client.close()


@pytest.fixture
async def sfu_process(netns_addrs: tuple[str, str]) -> AsyncIterator[str]:
    """``callbot dev-sfu`` in its own process; its base URL. With many SDK clients in the test
    process, an SFU in the same process would share its interpreter lock with their callback
    threads, and forwarding would stall (the prototype's figures were taken this way too)."""
    base = f"http://{netns_addrs[0]}:{free_port()}"
    host, port = base.removeprefix("http://").split(":")
    proc = await asyncio.create_subprocess_exec(
        *[sys.executable, "-m", "bot", "dev-sfu", "--host", host, "--port", port],
        *["--homeserver", "http://127.0.0.1:9", "--log-level", "WARNING"],
        cwd=REPO,
    )
    try:
        async with aiohttp.ClientSession() as http:
            for _ in range(200):
                with contextlib.suppress(aiohttp.ClientError):
                    async with http.get(f"{base}/healthz") as resp:
                        if resp.status == 200:
                            break
                await asyncio.sleep(0.05)
        yield base
    finally:
        proc.terminate()
        assert await proc.wait() == 0


async def test_eight_participants_hear_everybody(sfu_process: str) -> None:
    url = sfu_process.replace("http://", "ws://")
    names = [f"p{i}" for i in range(8)]
    freqs = {name: 300 + 100 * i for i, name in enumerate(names)}
    keys = {name: os.urandom(16) for name in names}
    clients = [await connect(url, name, "eight", keys=keys) for name in names]
    tones = [Tone(freqs[name]) for name in names]
    for tone, client in zip(tones, clients, strict=True):
        await tone.publish(client)
    try:
        await asyncio.gather(
            *(
                hears(client, other, freqs[other])
                for client in clients
                for other in names
                if other != client.identity
            )
        )
    finally:
        for tone in tones:
            await tone.stop()
    async with aiohttp.ClientSession() as http, http.get(f"{sfu_process}/debug/stats") as resp:
        room = (await resp.json())["rooms"]["eight"]
    for name in names:
        (track,) = room[name]["published"].values()
        assert sorted(track["subscribers"]) == sorted(set(names) - {name})
    for client in clients:
        await client.close()


async def test_late_joiner_data_and_leave(sfu: DevSfu) -> None:
    alice = await connect(sfu.url, "alice", "late")
    bob = await connect(sfu.url, "bob", "late")
    alice_tone, bob_tone = Tone(500), Tone(700)
    await alice_tone.publish(alice)
    await bob_tone.publish(bob)
    try:
        await hears(bob, "alice", 500)
        carol = await connect(sfu.url, "carol", "late")  # joins after everything is published
        await hears(carol, "alice", 500)
        await hears(carol, "bob", 700)

        # Data packets: to one participant, then to everybody (one ordered channel, so bob
        # would have had the first one before the second if it had been sent to him).
        me = alice.room.local_participant
        await me.publish_data(b"for carol", reliable=True, destination_identities=["carol"])
        await me.publish_data(b"for all", reliable=True)
        await wait_until(lambda: len(carol.data) == 2 and len(bob.data) == 1, 10, "data")
        assert carol.data == [("alice", b"for carol"), ("alice", b"for all")]
        assert bob.data == [("alice", b"for all")]

        await bob.close()
        await wait_until(lambda: "bob" in alice.left and "bob" in carol.left, 10, "bob leaving")
        assert sfu.participants("bob") == []
        assert "bob" not in sfu.stats()["rooms"]["late"]
        await hears(carol, "alice", 500)  # the others are unaffected
    finally:
        await alice_tone.stop()
        await bob_tone.stop()
    await alice.close()
    await carol.close()


async def test_killed_participant_is_removed(sfu: DevSfu) -> None:
    alice = await connect(sfu.url, "alice", "kill")
    proc = subprocess.Popen(  # noqa: ASYNC220 - the pipe is read in a thread below
        [sys.executable, "-m", "tests.lkclient", sfu.url, token("dave", "kill"), "600"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 30)
        assert line.strip() == "ready"
        await hears(alice, "dave", 600)
        os.kill(proc.pid, signal.SIGKILL)
        await wait_until(lambda: "dave" in alice.left, 10, "dave to be seen leaving")
        assert sfu.participants("dave") == []
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        await asyncio.to_thread(proc.wait)
    await alice.close()


def resubscribed(client: Client, who: str, old: rtc.RemoteTrack) -> Callable[[], bool]:
    return lambda: client.tracks.get((who, AUDIO), old) is not old


async def test_reconnecting_client_gets_its_subscriptions_back(sfu: DevSfu) -> None:
    alice = await connect(sfu.url, "alice", "again")
    bob = await connect(sfu.url, "bob", "again")
    reconnected = asyncio.Event()
    bob.room.on("reconnected", lambda: reconnected.set())
    alice_tone, bob_tone = Tone(450), Tone(650)
    await alice_tone.publish(alice)
    await bob_tone.publish(bob)
    try:
        await hears(bob, "alice", 450)
        await hears(alice, "bob", 650)
        old_alice_track = bob.tracks[("alice", AUDIO)]
        old_bob_track = alice.tracks[("bob", AUDIO)]

        await sfu.drop_signalling("bob")  # as a network failure would
        await asyncio.wait_for(reconnected.wait(), 20)
        await wait_until(resubscribed(bob, "alice", old_alice_track), 15, "bob resubscribing")
        await wait_until(resubscribed(alice, "bob", old_bob_track), 15, "bob's new track")
        await hears(bob, "alice", 450)
        await hears(alice, "bob", 650)  # bob published again, and alice got it
        assert len(sfu.participants("bob")) == 1
    finally:
        await alice_tone.stop()
        await bob_tone.stop()
    await alice.close()
    await bob.close()


async def test_same_identity_joining_again_replaces_the_old_connection(sfu: DevSfu) -> None:
    alice = await connect(sfu.url, "alice", "twice")
    tone = Tone(520)
    await tone.publish(alice)
    try:
        first = await connect(sfu.url, "bob", "twice")
        await hears(first, "alice", 520)
        disconnected = asyncio.Event()
        first.room.on("disconnected", lambda *_: disconnected.set())
        second = await connect(sfu.url, "bob", "twice")  # e.g. a restarted process
        await asyncio.wait_for(disconnected.wait(), 10)
        await hears(second, "alice", 520)
        assert len(sfu.participants("bob")) == 1
    finally:
        await tone.stop()
    for client in (alice, first, second):
        await client.close()
