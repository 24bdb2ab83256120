"""The bot's media in a real call: a matrix-js-sdk participant (Matrix side) with a livekit
SDK client (media side) publishes an encrypted tone through the dev SFU; a plugin in the bot
gets it, attributed to the right Matrix user; the bot's own encrypted tone is heard back.
Runs inside the network namespace (scripts/netns-run.sh)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import math
import re
import signal
import stat
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import numpy as np
from livekit import rtc

from bot.app import CallBot
from bot.devsfu.server import DevSfu
from bot.plugin import (
    AudioFrame,
    AudioWants,
    CallContext,
    ConnectionChange,
    ParticipantChange,
    ParticipantEvent,
    Plugin,
    VideoFrame,
    VideoWants,
)
from bot.rtc.identity import livekit_room_alias
from bot.rtc.keys import MediaKey
from bot.rtc.session import MatrixRTCSession
from tests import lkclient
from tests.botproc import BotProcess, write_config
from tests.conftest import bot_config, running_bot
from tests.jspeer import JsPeer, js_peer
from tests.peer import wait_until
from tests.synapse import Synapse

TIMEOUT = 30.0


class Listener(Plugin):
    name = "listener"
    audio = AudioWants(sample_rate=16_000, channels=1, frame_ms=20)

    def __init__(self) -> None:
        self.frames: list[AudioFrame] = []
        self.events: list[ParticipantEvent] = []
        self.connection: list[ConnectionChange] = []
        self.call: CallContext | None = None

    async def on_participant(self, event: ParticipantEvent) -> None:
        self.events.append(event)

    async def on_connection(self, change: ConnectionChange) -> None:
        self.connection.append(change)

    async def on_call_start(self, call: CallContext) -> None:
        self.call = call

    async def on_audio(self, frame: AudioFrame) -> None:
        self.frames.append(frame)

    def recent(self, user_id: str, seconds: float) -> np.ndarray:
        mine = [f.pcm[:, 0] for f in self.frames if f.participant.user_id == user_id]
        wanted = int(seconds * 1000 / self.audio.frame_ms)
        return np.concatenate(mine[-wanted:]) if len(mine) >= wanted else np.zeros(0)


class Watcher(Plugin):
    name = "watcher"
    video = VideoWants(fps=5, format="rgb24")

    def __init__(self) -> None:
        self.frames: list[VideoFrame] = []

    async def on_video(self, frame: VideoFrame) -> None:
        self.frames.append(frame)


class Sleepy(Plugin):
    """Never returns from its first frame."""

    name = "sleepy"
    audio = AudioWants(sample_rate=48_000)
    queue_size = 10

    async def on_audio(self, frame: AudioFrame) -> None:
        await asyncio.sleep(3600)


class Broken(Plugin):
    name = "broken"
    audio = AudioWants(sample_rate=16_000)

    async def on_audio(self, frame: AudioFrame) -> None:
        raise RuntimeError("broken plugin")


def heard(plugin: Listener, user_id: str, freq: float) -> bool:
    samples = plugin.recent(user_id, 0.5)
    if samples.size == 0 or lkclient.rms(samples) < 300:
        return False
    return abs(lkclient.dominant_frequency(samples, 16_000) - freq) < 15


async def sine(output, freq: float, stop: asyncio.Event) -> None:
    rate, n = output.sample_rate, output.sample_rate // 50
    t = 0
    while not stop.is_set():
        idx = np.arange(t, t + n)
        pcm = (0.3 * 32767 * np.sin(2 * math.pi * freq * idx / rate)).astype(np.int16)
        await output.write(pcm.reshape(-1, 1))
        t += n


@dataclass
class Scene:
    """The bot and alice (matrix-js-sdk for Matrix, a livekit client for media) in a call."""

    bot: CallBot
    alice: JsPeer
    lk: lkclient.Client
    room: str
    session: MatrixRTCSession
    bot_identity: str
    listener: Listener

    async def key_from(self, identity: str, index: int | None = None, own: bool = False):
        """A key alice's Matrix side holds (her own, or someone's), as a key event."""
        return await self.alice.wait_event(
            lambda e: (
                e["event"] == "key"
                and e["own"] == own
                and (own or e["identity"] == identity)
                and (index is None or e["index"] == index)
            ),
            TIMEOUT,
        )

    async def both_speak(self) -> tuple[lkclient.Tone, asyncio.Event, asyncio.Task[None]]:
        """alice publishes 440 Hz and the bot 660 Hz; returns once the bot hears alice.
        (alice's tone, the event that stops the bot's, the task feeding it)"""
        tone = lkclient.Tone(440)
        await tone.publish(self.lk)
        output = await self.listener.call.publish_audio("bot-tone")
        stop = asyncio.Event()
        feeder = asyncio.create_task(sine(output, 660, stop))
        await wait_until(lambda: heard(self.listener, self.alice.user_id, 440), TIMEOUT, "440")
        return tone, stop, feeder

    async def bring_in(self, peer: JsPeer, sfu: DevSfu) -> lkclient.Client:
        """Alice invites ``peer``, who joins the room and the call; their media client, with
        their own key (from their matrix-js-sdk) installed."""
        await self.alice.call("invite", room_id=self.room, user_id=peer.user_id)
        await peer.call("join_room", room_id=self.room)
        focus = [{"type": "livekit", "livekit_service_url": sfu.http_url}]
        await peer.call("rtc_join", room_id=self.room, foci=focus)
        lk = await lkclient.connect(
            sfu.url, peer.identity, livekit_room_alias(self.room, "m.call#ROOM"), keys={}
        )
        own = await peer.wait_event(lambda e: e["event"] == "key" and e["own"], TIMEOUT)
        lk.set_key(peer.identity, base64.b64decode(own["key"]), own["index"])
        return lk

    def install(self, event: dict, identity: str) -> None:
        self.lk.set_key(identity, base64.b64decode(event["key"]), event["index"])


@contextlib.asynccontextmanager
async def scene(
    synapse: Synapse,
    sfu: DevSfu,
    tmp_path: Path,
    extra: tuple[Plugin, ...] = (),
    join_config: dict[str, Any] | None = None,
) -> AsyncIterator[Scene]:
    """The bot and alice (matrix-js-sdk) in an encrypted call; ``join_config`` overrides
    alice's js MembershipManager settings (Element Call's by default)."""
    bot_account = synapse.register("bot")
    focus = {"type": "livekit", "livekit_service_url": sfu.http_url}
    # The SFU is the bot's own (a focus a member chose is used only if the config trusts it).
    rtc = {"livekit_service_url": sfu.http_url}
    config = bot_config(synapse, bot_account, tmp_path / "data", rtc=rtc)
    async with running_bot(config) as bot, js_peer(synapse, tmp_path, "alice") as alice:
        room = (await alice.call("create_room", invite=[bot_account.user_id]))["room_id"]
        await wait_until(lambda: room in bot.matrix.joined_rooms(), TIMEOUT, "bot in room")
        await alice.call("rtc_join", room_id=room, foci=[focus], config=join_config or {})
        session = bot.rtc.get_room_session(room)
        await wait_until(lambda: session.memberships, TIMEOUT, "alice's membership")
        listener = Listener()
        for plugin in (listener, *extra):
            bot.media.add_plugin(lambda plugin=plugin: plugin)
        access = await session.join()  # /sfu/get on the dev SFU, OpenID checked by Synapse
        await wait_until(lambda: listener.call is not None, TIMEOUT, "the plugin's call start")
        lk = await lkclient.connect(
            sfu.url, alice.identity, livekit_room_alias(room, "m.call#ROOM"), keys={}
        )
        s = Scene(bot, alice, lk, room, session, access.identity, listener)
        try:
            # alice's media side gets the keys her Matrix side (matrix-js-sdk) holds.
            s.install(await s.key_from(alice.identity, own=True), alice.identity)
            s.install(await s.key_from(access.identity), access.identity)
            yield s
        finally:
            await lk.close()
            await session.leave()


async def test_bot_hears_a_participant_and_is_heard(
    synapse: Synapse, sfu: DevSfu, tmp_path: Path
) -> None:
    watcher, sleepy, broken = Watcher(), Sleepy(), Broken()
    async with scene(synapse, sfu, tmp_path, (watcher, sleepy, broken)) as s:
        alice, listener, bot, room = s.alice, s.listener, s.bot, s.room
        tone = lkclient.Tone(440)
        await tone.publish(s.lk)
        pattern = lkclient.Pattern(320, 240)
        await pattern.publish(s.lk)

        # The plugin hears alice's 440 Hz, attributed to her Matrix identity.
        await wait_until(lambda: heard(listener, alice.user_id, 440), TIMEOUT, "440 Hz")
        frame = next(f for f in listener.frames if f.participant.user_id == alice.user_id)
        assert frame.participant.device_id == alice.device_id
        assert frame.participant.identity == alice.identity
        assert frame.sample_rate == 16_000 and frame.pcm.dtype == np.int16

        # Speaking is told, from the audio itself.
        await wait_until(
            lambda: any(
                e.change is ParticipantChange.SPEAKING and e.participant.user_id == alice.user_id
                for e in listener.events
            ),
            TIMEOUT,
            "a speaking event",
        )

        # A plugin stuck in a frame and one that keeps raising disturb nobody.
        runners = {r.name: r for r in bot.media.runners(room)}
        await wait_until(lambda: runners["broken"].stats.disabled, TIMEOUT, "broken disabled")
        await wait_until(lambda: runners["sleepy"].stats.dropped > 0, TIMEOUT, "sleepy drops")

        # Video, decrypted and converted to what the watcher declared.
        await wait_until(lambda: len(watcher.frames) >= 3, TIMEOUT, "video frames")
        image = watcher.frames[-1]
        assert (image.width, image.height, image.format) == (320, 240, "rgb24")
        assert image.image.shape == (240, 320, 3)
        assert image.participant.user_id == alice.user_id
        assert image.image[..., 1].std() > 10  # the stripes, not a blank picture

        # The bot's tone reaches alice, encrypted with the bot's key, and decrypts.
        assert {p.user_id for p in listener.call.participants()} == {
            alice.user_id,
            bot.matrix.user_id,
        }
        output = await listener.call.publish_audio("bot-tone")
        stop = asyncio.Event()
        feeder = asyncio.create_task(sine(output, 660, stop))
        probe = lkclient.AudioProbe(await s.lk.track(s.bot_identity, rtc.TrackKind.KIND_AUDIO))
        result = await probe.tone(near=660, timeout=TIMEOUT)
        assert abs(result.freq - 660) < 15, result
        stop.set()
        await feeder
        await probe.close()

        # The bot's video (VP8, encrypted) decodes at alice's.
        screen = await listener.call.publish_video("bot-screen", 320, 240)
        picture = np.zeros((240, 320, 4), np.uint8)
        picture[..., 0] = 200
        picture[..., 3] = 255
        video_track = asyncio.create_task(
            s.lk.track(s.bot_identity, rtc.TrackKind.KIND_VIDEO, timeout=TIMEOUT)
        )
        for _ in range(10):
            await screen.write(picture)
            await asyncio.sleep(0.05)
        counter = lkclient.FrameCounter(await video_track)
        for _ in range(100):
            await screen.write(picture)
            if counter.frames >= 3:
                break
            await asyncio.sleep(0.05)
        assert counter.frames >= 3 and counter.size == (320, 240)
        await counter.close()

        # E2EE diagnostics: alice's media decrypts, and !status says so.
        assert bot.media.e2ee_state(room, alice.identity) == "decrypting"
        status = "\n".join(bot.active_calls())
        assert f"{alice.user_id} ({alice.device_id}): key received, media: decrypting" in status
        assert "  plugin broken: disabled after errors" in status
        assert "  plugin listener: running" in status
        # The stuck plugin's queue is full, and !status shows it with what it dropped.
        assert re.search(
            r"  plugin sleepy: running, \d+ delivered, [1-9]\d* dropped, 0 errors, "
            r"10 of 10 frames queued",
            status,
        ), status

        # Someone in the LiveKit room without a call membership (and without our key): ignored,
        # as Element Call ignores them; !status notes them; the room is not bothered.
        notices: list[str] = []
        send = bot.matrix.send

        async def recording_send(room_id: str, content: dict) -> str:
            notices.append(content.get("body", ""))
            return await send(room_id, content)

        bot.matrix.send = recording_send
        mallory_id = "@mallory:localhost:MALLORY"
        mallory = await lkclient.connect(
            sfu.url, mallory_id, livekit_room_alias(room, "m.call#ROOM"), keys={}
        )
        mallory.set_key(mallory_id, b"m" * 16, 0)
        loud = lkclient.Tone(880)
        await loud.publish(mallory)
        await wait_until(
            lambda: any("without a call membership" in x for x in bot.media.plugin_lines(room)),
            TIMEOUT,
            "!status to note the LiveKit participant without a membership",
        )
        await wait_until(
            lambda: bot.media.e2ee_state(room, mallory_id) == "no key for their media",
            TIMEOUT,
            "the SDK to report mallory's missing key",
        )
        await asyncio.sleep(6.0)  # past the 5 s after which a member's undecryptable media is told
        assert not any("mallory" in n for n in notices)
        assert not heard(listener, "@mallory:localhost", 880)
        assert not any(p.user_id.startswith("@mallory") for p in listener.call.participants())
        await loud.stop()
        await mallory.close()
        await pattern.stop()
        await tone.stop()


async def test_audio_keeps_flowing_across_key_rotations(
    synapse: Synapse, sfu: DevSfu, tmp_path: Path
) -> None:
    """bob joins and leaves the call: alice and the bot both rotate to key index 1."""
    async with scene(synapse, sfu, tmp_path) as s, js_peer(synapse, tmp_path, "bob") as bob:
        alice, listener = s.alice, s.listener
        tone, stop, feeder = await s.both_speak()

        await alice.call("invite", room_id=s.room, user_id=bob.user_id)
        await bob.call("join_room", room_id=s.room)
        focus = [{"type": "livekit", "livekit_service_url": "http://unused.invalid"}]
        await bob.call("rtc_join", room_id=s.room, foci=focus)
        await wait_until(lambda: len(s.session.memberships) == 3, TIMEOUT, "bob in the call")
        await bob.call("rtc_leave", room_id=s.room)

        # alice's side: her new key and the bot's new key, both at index 1.
        own_new = await s.key_from(alice.identity, index=1, own=True)
        bot_new = await s.key_from(s.bot_identity, index=1)
        s.install(own_new, alice.identity)
        s.install(bot_new, s.bot_identity)
        for cryptor in s.lk.room.e2ee_manager.frame_cryptors():  # as Element Call's worker does
            if cryptor.participant_identity == alice.identity:
                cryptor.set_key_index(1)
        await wait_until(
            lambda: s.session.own_key is not None and s.session.own_key.index == 1, TIMEOUT
        )
        listener.frames.clear()
        await wait_until(lambda: heard(listener, alice.user_id, 440), TIMEOUT, "440 Hz after")
        probe = lkclient.AudioProbe(await s.lk.track(s.bot_identity, rtc.TrackKind.KIND_AUDIO))
        await asyncio.sleep(2.0)  # well past the bot's switch to index 1
        result = await probe.tone(near=660, timeout=TIMEOUT)
        assert abs(result.freq - 660) < 15, result
        stop.set()
        await feeder
        await probe.close()
        await tone.stop()


async def _rotate_own_key(s: Scene) -> int:
    """Make the bot rotate its key through its real path (a member it shared the key with
    left: a new key, sent to alice over Olm, used after the delay); the new index."""
    own = s.session._own_key
    assert own.current is not None
    own._shared_with = own._shared_with | {("@ghost:localhost", "GHOST", 1)}
    s.session.recalculate()
    nxt = (own.current.index + 1) % 256
    await wait_until(lambda: own.current is not None and own.current.index == nxt, TIMEOUT)
    return nxt


async def test_the_bots_key_index_goes_through_255_and_wraps_to_0(
    synapse: Synapse, sfu: DevSfu, tmp_path: Path
) -> None:
    """Issue 22: Element's Rust MatrixRTC crate notes native LiveKit crashing at key index
    255 with a ring of 256. The bot's key goes to 254, 255 and wraps to 0 (a new key where
    its first one was) through its own distribution and media path; alice's livekit client
    hears it at each index, and hears nothing while it holds only the stale key at 0."""
    async with scene(synapse, sfu, tmp_path) as s:
        tone, stop, feeder = await s.both_speak()
        probe = lkclient.AudioProbe(await s.lk.track(s.bot_identity, rtc.TrackKind.KIND_AUDIO))
        await probe.tone(near=660, timeout=TIMEOUT)
        own = s.session._own_key
        assert own.current is not None and own.current.index == 0
        # Skip most of the ring: the bookkeeping says 253 (no rotation happens here; the
        # bot goes on encrypting with its first key, which alice holds at index 0).
        own.current = MediaKey(own.current.key, 253)
        for want in (254, 255):
            assert await _rotate_own_key(s) == want
            s.install(await s.key_from(s.bot_identity, index=want), s.bot_identity)
            await asyncio.sleep(s.bot.config.rtc.use_key_delay_ms / 1000 + 1.0)
            heard_at = await probe.tone(near=660, timeout=TIMEOUT)
            assert abs(heard_at.freq - 660) < 15, (want, heard_at)
        first = await s.key_from(s.bot_identity, index=0)  # the one alice holds at 0
        mark = s.alice.mark()
        assert await _rotate_own_key(s) == 0
        wrapped = await s.alice.wait_event(
            lambda e: e["event"] == "key" and e["identity"] == s.bot_identity and e["index"] == 0,
            TIMEOUT,
            since=mark,
        )
        assert wrapped["key"] != first["key"]  # a new key at index 0, not the old one again
        await asyncio.sleep(s.bot.config.rtc.use_key_delay_ms / 1000 + 1.5)
        try:  # alice holds the stale key at 0: the bot's audio does not decrypt
            assert await probe.loudest(1.0) < lkclient.TONE_RMS
        except TimeoutError:
            pass  # no audio frames at all: silent too
        s.install(wrapped, s.bot_identity)
        heard_at = await probe.tone(near=660, timeout=TIMEOUT)
        assert abs(heard_at.freq - 660) < 15, heard_at
        stop.set()
        await feeder
        await probe.close()
        await tone.stop()


async def test_the_bot_reconnects_after_the_sfu_drops_it(
    synapse: Synapse, sfu: DevSfu, tmp_path: Path, netns_addrs: tuple[str, str]
) -> None:
    """The SFU restarts: the bot reconnects on its own, its plugin (same instance) hears
    alice again, and its published track is back."""
    async with scene(synapse, sfu, tmp_path) as s:
        alice, listener = s.alice, s.listener
        tone, stop, feeder = await s.both_speak()
        plugin_before = listener

        port = sfu.port
        mark = alice.mark()
        await sfu.stop()  # everyone is told the server shuts down
        await tone.stop()
        await s.lk.close()
        # Down for a while: the bot's first reconnection attempts fail, and it says so once.
        await alice.wait_event(
            lambda e: e["event"] == "message" and "cannot reconnect yet" in (e["body"] or ""),
            TIMEOUT,
            since=mark,
        )
        restarted = DevSfu(homeserver=synapse.url)
        await restarted.start(netns_addrs[0], port)
        try:
            lk = s.lk = await lkclient.connect(
                restarted.url, alice.identity, livekit_room_alias(s.room, "m.call#ROOM"), keys={}
            )
            s.install(await s.key_from(alice.identity, own=True), alice.identity)
            s.install(await s.key_from(s.bot_identity), s.bot_identity)
            tone = lkclient.Tone(440)
            await tone.publish(lk)
            listener.frames.clear()
            await wait_until(lambda: heard(listener, alice.user_id, 440), TIMEOUT, "440 again")
            assert s.bot.media.instance(s.room, Listener) is plugin_before
            # The plugin was told the media was gone, then back.
            lost, back = listener.connection
            assert (lost.connected, back.connected) == (False, True)
            assert lost.timestamp <= back.timestamp
            await alice.wait_event(
                lambda e: e["event"] == "message" and e["body"] == "I can hear the call again.",
                TIMEOUT,
                since=mark,
            )
            told = [e["body"] for e in alice.events[mark:] if e["event"] == "message"]
            assert sum("cannot reconnect yet" in (b or "") for b in told) == 1
            probe = lkclient.AudioProbe(await lk.track(s.bot_identity, rtc.TrackKind.KIND_AUDIO))
            result = await probe.tone(near=660, timeout=TIMEOUT)
            assert abs(result.freq - 660) < 15, result
            await probe.close()
            await tone.stop()
            await lk.close()
        finally:
            stop.set()
            await feeder
            await restarted.stop()


async def test_the_recorder_records_an_encrypted_call(
    synapse: Synapse, sfu: DevSfu, tmp_path: Path
) -> None:
    from plugins.recorder.plugin import Recorder, RecorderConfig
    from tests.test_recorder import decode, level

    recorder = Recorder(RecorderConfig(upload_mixed=False, video=True))
    async with scene(synapse, sfu, tmp_path, (recorder,)) as s:
        tone = lkclient.Tone(440)
        await tone.publish(s.lk)
        pattern = lkclient.Pattern(320, 240)
        await pattern.publish(s.lk)
        await wait_until(lambda: heard(s.listener, s.alice.user_id, 440), TIMEOUT, "440 Hz")
        await recorder.start()
        await asyncio.sleep(2.0)
        await recorder.stop()
        await pattern.stop()
        await tone.stop()
    (folder,) = [p for p in (tmp_path / "data" / "calls").glob("*/*") if p.is_dir()]
    files = sorted(p.name for p in folder.iterdir())
    alice_file = next(f for f in files if f.startswith(s.alice.user_id.lstrip("@").split(":")[0]))
    samples = decode(folder / alice_file)
    assert samples.size / 48_000 > 1.5
    loud = samples[samples.size // 4 :]
    assert level(loud, 440) > 10 * level(loud, 660)
    assert "mixed.ogg" in files and "meta.json" in files
    # alice's camera, decrypted by the bot and recorded as VP8/WebM.
    webm = next(folder.glob("*.webm"))
    with av.open(str(webm)) as container:
        pictures = list(container.decode(video=0))
    assert len(pictures) >= 5 and (pictures[0].width, pictures[0].height) == (320, 240)


def tone_onset(samples: np.ndarray, freq: float, rate: int = 48_000) -> float:
    """When ``freq`` first reaches half its eventual strength, in 10 ms steps (seconds)."""
    from tests.test_recorder import level

    step, win = rate // 100, rate // 25
    strengths = [level(samples[i : i + win], freq) for i in range(0, samples.size - win, step)]
    peak = max(strengths)
    first = next(i for i, v in enumerate(strengths) if v > 0.5 * peak)
    return first * step / rate


async def test_recordings_of_two_people_line_up(
    synapse: Synapse, sfu: DevSfu, tmp_path: Path
) -> None:
    """alice speaks from the start, bob joins a second later: his file and the mix agree on
    when he started (within 40 ms), and each file holds only its own voice."""
    from plugins.recorder.plugin import Recorder, RecorderConfig
    from tests.test_recorder import decode, level

    recorder = Recorder(RecorderConfig(upload_mixed=False))
    async with (
        scene(synapse, sfu, tmp_path, (recorder,)) as s,
        js_peer(synapse, tmp_path, "bob") as bob,
    ):
        alice_tone = lkclient.Tone(440)
        await alice_tone.publish(s.lk)
        bob_lk = await s.bring_in(bob, sfu)
        await wait_until(lambda: heard(s.listener, s.alice.user_id, 440), TIMEOUT, "alice")
        await recorder.start()
        await asyncio.sleep(1.0)
        bob_tone = lkclient.Tone(660)
        await bob_tone.publish(bob_lk)
        await wait_until(lambda: heard(s.listener, bob.user_id, 660), TIMEOUT, "bob")
        await asyncio.sleep(1.5)
        await recorder.stop()
        await bob_tone.stop()
        await alice_tone.stop()
        await bob_lk.close()
    (folder,) = [p for p in (tmp_path / "data" / "calls").glob("*/*") if p.is_dir()]
    by_user = {p.name.split("_")[0]: p for p in folder.glob("*.ogg") if p.name != "mixed.ogg"}
    alice_pcm = decode(by_user[s.alice.user_id.lstrip("@").split(":")[0]])
    bob_pcm = decode(by_user[bob.user_id.lstrip("@").split(":")[0]])
    mix = decode(folder / "mixed.ogg")
    # One timeline: bob's file starts with silence and his voice starts where it does in the mix.
    bob_start = tone_onset(bob_pcm, 660)
    assert bob_start > 0.8
    assert abs(bob_start - tone_onset(mix, 660)) < 0.04
    # Each file holds its own voice only; the mix holds both.
    tail = slice(-48_000, None)
    assert level(alice_pcm[tail], 440) > 10 * level(alice_pcm[tail], 660)
    assert level(bob_pcm[tail], 660) > 10 * level(bob_pcm[tail], 440)
    assert level(mix[tail], 440) > 0.1 * level(mix[tail], 660) > 0


@contextlib.asynccontextmanager
async def recording_bot_process(
    synapse: Synapse, sfu: DevSfu, tmp_path: Path, plugins: tuple[str, ...] = ("recorder",)
) -> AsyncIterator[tuple[BotProcess, Path, JsPeer, str]]:
    """The real `callbot run` in alice's encrypted call, hearing her 440 Hz tone, after she
    typed `!join` and `!record start` (and `!transcribe start` with the transcriber).
    (the bot, its config, alice, the room)"""
    account = synapse.register("bot")
    cfg = write_config(
        tmp_path / "config.toml",
        synapse.url,
        account,
        f'[rtc]\nlivekit_service_url = "{sfu.http_url}"\n'
        f"[plugins]\nenabled = {list(plugins)!r}\n[plugins.recorder]\nupload_mixed = false\n",
    )
    async with js_peer(synapse, tmp_path, "alice") as alice:
        bot = await BotProcess(cfg).start()
        try:
            room = (await alice.call("create_room", invite=[account.user_id]))["room_id"]
            await wait_until(lambda: bot.logged("joined on invite"), TIMEOUT, "bot in room")
            await asyncio.sleep(1.0)  # alice's client sees the bot's join before she types
            focus = [{"type": "livekit", "livekit_service_url": sfu.http_url}]
            await alice.call("rtc_join", room_id=room, foci=focus)
            lk = await lkclient.connect(
                sfu.url, alice.identity, livekit_room_alias(room, "m.call#ROOM"), keys={}
            )
            await alice.wait_event(lambda e: e["event"] == "key" and e["own"], TIMEOUT)
            # Her media side follows her Matrix side's keys (js rotates when a member leaves).
            keys = asyncio.create_task(_follow_own_keys(alice, lk))
            tone = lkclient.Tone(440)
            await tone.publish(lk)
            await alice.call("send_text", room_id=room, body="!join")
            await wait_until(
                lambda: any(e["msg"].startswith("connected to the SFU") for e in bot.entries),
                TIMEOUT,
                "the bot's media",
            )
            await alice.call("send_text", room_id=room, body="!record start")
            await wait_until(
                lambda: any(e["msg"].startswith("recording to") for e in bot.entries),
                TIMEOUT,
                "recording",
            )
            if "transcriber" in plugins:
                await alice.call("send_text", room_id=room, body="!transcribe start")
                await wait_until(
                    lambda: any(e["msg"].startswith("transcribing") for e in bot.entries),
                    TIMEOUT,
                    "transcribing",
                )
            yield bot, cfg, alice, room
            keys.cancel()
            await tone.stop()
            await lk.close()
        finally:
            if bot.proc and bot.proc.returncode is None:
                await bot.stop(signal.SIGKILL)


async def _follow_own_keys(alice: JsPeer, lk: lkclient.Client) -> None:
    seen = 0
    while True:
        for e in alice.events[seen:]:
            if e["event"] == "key" and e["own"]:
                lk.set_key(alice.identity, base64.b64decode(e["key"]), e["index"])
        seen = len(alice.events)
        await asyncio.sleep(0.1)


async def test_a_killed_bot_finalizes_its_recording_rejoins_and_records_on(
    synapse: Synapse, sfu: DevSfu, tmp_path: Path
) -> None:
    """The real `callbot run` records, is SIGKILLed, and on restart finalizes the recording,
    re-joins the call (alice is still in it) and records on in the same call folder."""
    from bot.app import RESUMED_NOTICE
    from tests.test_recorder import decode, level

    async with recording_bot_process(synapse, sfu, tmp_path) as (bot, cfg, alice, _):
        await asyncio.sleep(3.0)
        await bot.stop(signal.SIGKILL)
        (folder,) = [p for p in (tmp_path / "data" / "calls").glob("*/*") if p.is_dir()]
        meta = json.loads((folder / "meta.json").read_text())
        assert meta["complete"] is False
        alice_file = next(p for p in folder.glob("alice*.ogg"))
        # The real process writes with umask 077: only the bot's user can read anything.
        assert all(stat.S_IMODE(p.stat().st_mode) & 0o077 == 0 for p in folder.iterdir())
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700
        samples = decode(alice_file)  # playable after the kill
        assert samples.size / 48_000 > 1.5
        assert level(samples[-24_000:], 440) > 10 * level(samples[-24_000:], 660)

        mark = alice.mark()
        again = await BotProcess(cfg).start()
        try:
            await wait_until(
                lambda: any(
                    e["msg"].startswith("finalized the interrupted") for e in again.entries
                ),
                TIMEOUT,
                "the restart to finalize the recording",
            )
            await wait_until(
                lambda: again.logged("re-joined the call the bot was in before the restart"),
                TIMEOUT,
                "the re-join",
            )
            await wait_until(
                lambda: any(e["msg"].startswith("recording to") for e in again.entries),
                TIMEOUT,
                "the recording to go on",
            )
            await alice.wait_event(
                lambda e: e["event"] == "message" and e["body"] == RESUMED_NOTICE,
                TIMEOUT,
                since=mark,
            )
            await asyncio.sleep(4.0)
        finally:
            assert await again.stop() == 0
    # One call folder; the second part's files beside the first's, alice's tone in both.
    assert [p for p in (tmp_path / "data" / "calls").glob("*/*") if p.is_dir()] == [folder]
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["complete"] is True and meta["part"] == 2
    (earlier,) = meta["earlier_parts"]
    assert alice_file.name in earlier["files"] and "mixed.ogg" in earlier["files"]
    (interruption,) = meta["interruptions"]
    assert interruption["from_utc"] <= interruption["until_utc"]
    second = folder / alice_file.name.replace(".ogg", ".part2.ogg")
    assert {p["file"] for p in meta["participants"]} == {second.name}
    samples = decode(second)
    assert samples.size / 48_000 > 1.5
    assert level(samples[-24_000:], 440) > 10 * level(samples[-24_000:], 660)
    assert (folder / "mixed.part2.ogg").exists()


async def test_sigterm_finishes_the_files_and_leaves_the_call(
    synapse: Synapse, sfu: DevSfu, tmp_path: Path
) -> None:
    """SIGTERM: the recording and the transcript are finished and the bot leaves at once
    (not through its delayed leave event, 10 s later)."""
    async with recording_bot_process(synapse, sfu, tmp_path, ("recorder", "transcriber")) as (
        bot,
        _,
        alice,
        room,
    ):
        await asyncio.sleep(2.0)
        mark = alice.mark()
        t0 = asyncio.get_running_loop().time()
        assert await bot.stop(signal.SIGTERM) == 0
        await alice.wait_event(
            lambda e: (
                e["event"] == "memberships"
                and e["room_id"] == room
                and all(m["user_id"] == alice.user_id for m in e["members"])
            ),
            TIMEOUT,
            since=mark,
        )
        assert asyncio.get_running_loop().time() - t0 < 8.0
        (folder,) = [p for p in (tmp_path / "data" / "calls").glob("*/*") if p.is_dir()]
        meta = json.loads((folder / "meta.json").read_text())
        assert meta["complete"] is True and "interrupted" not in meta
        assert json.loads((folder / "transcript.json").read_text())["segments"] == []
        assert stat.S_IMODE((folder / "transcript.txt").stat().st_mode) == 0o600


async def test_a_killed_sticky_bot_is_left_by_the_jwt_service_at_once(
    synapse: Synapse, sfu: DevSfu, tmp_path: Path
) -> None:
    """Issue 22: with a sticky membership the bot hands its delayed leave to the JWT service
    (/delegate_delayed_leave, as Element Call does). SIGKILLed, it is out of the call as soon
    as the SFU notices, long before the homeserver's 60 s timer would send the leave."""
    account = synapse.register("bot")
    cfg = write_config(
        tmp_path / "config.toml",
        synapse.url,
        account,
        f'[rtc]\nlivekit_service_url = "{sfu.http_url}"\nmembership_format = "sticky"\n'
        "delayed_leave_ms = 60000\nauto_leave = false\n"
        # a plugin that wants media, or the bot stays on the Matrix side only
        '[plugins]\nenabled = ["recorder"]\n[plugins.recorder]\nupload_mixed = false\n',
    )
    async with js_peer(synapse, tmp_path, "alice") as alice:
        bot = await BotProcess(cfg).start()
        try:
            room = (await alice.call("create_room", invite=[account.user_id]))["room_id"]
            await wait_until(lambda: bot.logged("joined on invite"), TIMEOUT, "bot in room")
            await asyncio.sleep(1.0)
            focus = [{"type": "livekit", "livekit_service_url": sfu.http_url}]
            await alice.call("rtc_join", room_id=room, foci=focus)
            await alice.call("send_text", room_id=room, body="!join")
            await wait_until(
                lambda: any(e["msg"].startswith("connected to the SFU") for e in bot.entries),
                TIMEOUT,
                "the bot's media",
            )
            await wait_until(
                lambda: any("watches our delayed leave" in e["msg"] for e in bot.entries),
                TIMEOUT,
                "the delegation",
            )
            seen = await alice.wait_event(
                lambda e: (
                    e["event"] == "memberships"
                    and any(m["user_id"] == account.user_id for m in e["members"])
                ),
                TIMEOUT,
            )
            assert any(m["user_id"] == account.user_id for m in seen["members"])
            mark = alice.mark()
            loop = asyncio.get_running_loop()
            killed_at = loop.time()
            await bot.stop(signal.SIGKILL)
            await alice.wait_event(
                lambda e: (
                    e["event"] == "memberships"
                    and not any(m["user_id"] == account.user_id for m in e["members"])
                ),
                45.0,
                since=mark,
            )
            assert loop.time() - killed_at < 30.0  # the homeserver alone: 60 s
        finally:
            if bot.proc and bot.proc.returncode is None:
                await bot.stop(signal.SIGKILL)
