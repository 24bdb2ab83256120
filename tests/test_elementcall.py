"""Element Call itself and the bot in one encrypted call.

alice is Element Call 0.26.1 (its embedded build, as Element Web and Element X embed it) in
headless Chromium, in a widget host whose Matrix side is matrix-js-sdk with Rust crypto in
"exclude insecure devices" mode (tests/elementcall.py). Her microphone is Chromium's fake
capture device playing a WAV the test writes: a 440 Hz tone, then a spoken sentence, looped.
The bot runs in-process with the recorder, the transcriber and the music player, on the real
Synapse and the dev SFU with its JWT service; alice types its commands. Screenshots of Element
Call's page are saved in the test's tmp_path (joined.png, rotated.png).

Runs inside the network namespace (scripts/netns-run.sh).
"""

from __future__ import annotations

import asyncio
import contextlib
import wave
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from livekit import rtc

from bot.app import CallBot
from bot.devsfu.server import DevSfu
from bot.rtc.identity import livekit_room_alias
from bot.rtc.session import MatrixRTCSession
from plugins.transcriber.samples import Sample, samples, word_error_rate
from tests import lkclient
from tests.conftest import bot_config, running_bot
from tests.elementcall import ElementCallPage, Heard, element_call, widget_backend
from tests.jspeer import JsPeer, js_peer
from tests.music_files import write_tones
from tests.peer import wait_until
from tests.synapse import Synapse
from tests.test_media import Listener, heard
from tests.test_recorder import decode, level

TIMEOUT = 30.0
RATE = 48_000
ALICE_HZ, MUSIC_HZ = 440, 660
SPOKEN = samples()["slt-2"]
TONE_S, LOOP_S = 4.0, 4.0 + 1.0 + SPOKEN.seconds + 2.0  # what alice's microphone plays


def write_microphone(path: Path, freq: float, speech: Sample) -> Path:
    """What alice's fake microphone plays, over and over: TONE_S of ``freq``, a pause, the
    sentence, a pause (16-bit mono WAV, as Chromium's fake capture reads it)."""
    t = np.arange(int(TONE_S * RATE)) / RATE
    tone = (0.3 * 32767 * np.sin(2 * np.pi * freq * t)).astype(np.int16)
    pause = np.zeros(RATE, dtype=np.int16)
    pcm = np.concatenate([tone, pause, speech.pcm(RATE), pause, pause])
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(pcm.astype("<i2").tobytes())
    return path


@dataclass
class EcScene:
    """The bot and Element Call (alice) in one call, the bot joined by alice's ``!join``,
    shown by Element Call, decrypting alice, its music decoded by Element Call's page."""

    bot: CallBot
    alice: JsPeer
    page: ElementCallPage
    room: str
    session: MatrixRTCSession
    listener: Listener
    tmp_path: Path

    @property
    def alice_identity(self) -> str:
        """Her LiveKit identity (a legacy membership: user and device)."""
        return f"{self.alice.user_id}:{self.alice.device_id}"

    @property
    def bot_identity(self) -> str:
        return self.session.own_identity

    async def say(self, body: str, expect: str) -> dict[str, Any]:
        """Types ``body`` as alice; the first message of the bot's from then on that holds
        ``expect``, as alice's client decrypted it."""
        mark = self.alice.mark()
        await self.alice.call("send_text", room_id=self.room, body=body)
        return await self.alice.wait_event(
            lambda e: (
                e["event"] == "message"
                and e["sender"] == self.bot.matrix.user_id
                and expect in (e["body"] or "")
            ),
            TIMEOUT,
            since=mark,
        )

    async def hears(self, freq: float, timeout: float = TIMEOUT) -> Heard:
        """Waits until Element Call's page decodes ``freq`` on a remote audio track, in two
        looks 0.2 s apart."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        before: set[str] = set()
        while True:
            found = await self.page.hear()
            now = {h.track for h in found if h.is_tone(freq)}
            if now & before:
                return next(h for h in found if h.track in now & before)
            before = now
            if loop.time() > deadline:
                raise TimeoutError(f"Element Call's page decoded no {freq} Hz: {found}")
            await asyncio.sleep(0.2)


@contextlib.asynccontextmanager
async def ec_scene(synapse: Synapse, sfu: DevSfu, tmp_path: Path) -> AsyncIterator[EcScene]:
    music = tmp_path / "music"
    music.mkdir()
    write_tones(music / "tone.flac", [(MUSIC_HZ, 180.0)])
    bot_account = synapse.register("bot")
    config = bot_config(
        synapse,
        bot_account,
        tmp_path / "data",
        rtc={"livekit_service_url": sfu.http_url},
        plugins={
            "enabled": ["recorder", "transcriber", "music"],
            "recorder": {"upload_mixed": False},
            "transcriber": {"upload": []},
            "music": {"music_dir": str(music), "duck": False, "announce": False},
        },
    )
    mic = write_microphone(tmp_path / "microphone.wav", ALICE_HZ, SPOKEN)
    # What Element Web would get from the homeserver's /rtc/transports (MSC4143) for it.
    transports = [{"type": "livekit", "livekit_service_url": sfu.http_url}]
    async with (
        running_bot(config) as bot,
        widget_backend(synapse, tmp_path, "alice") as alice,
    ):
        listener = Listener()
        bot.media.add_plugin(lambda: listener)
        room = (await alice.call("create_room", invite=[bot_account.user_id]))["room_id"]
        await wait_until(lambda: room in bot.matrix.joined_rooms(), TIMEOUT, "bot in room")
        async with element_call(tmp_path / "ec", alice, room, transports, mic) as page:
            session = bot.rtc.get_room_session(room)
            try:
                await wait_until(lambda: session.memberships, TIMEOUT, "Element Call's member")
            except TimeoutError as exc:
                raise AssertionError(f"Element Call did not join:\n{page.log_tail()}") from exc
            s = EcScene(bot, alice, page, room, session, listener, tmp_path)
            (member,) = session.memberships
            assert (member.user_id, member.device_id) == (alice.user_id, alice.device_id)
            seen = await page.seen()
            # Element Call asked for what Element Web grants it, and joined on its own
            # (skipLobby): it tells the host with io.element.join.
            assert seen["ready"] and seen["actions"].get("io.element.join") == 1, seen
            assert not seen["errors"], seen["errors"]

            # The bot joins Element Call's call and Element Call shows it.
            reply = await s.say("!join", "other member")
            assert reply["encrypted"] and reply["decryption_failure"] is None, reply
            assert "1 other member" in reply["body"], reply
            bot_name = bot.matrix.user_id.lstrip("@").split(":")[0]
            await wait_until_async(lambda: _tile(page, bot_name), "the bot's tile")

            # Media keys went both ways over Olm: the bot decrypts alice's microphone...
            await wait_until(
                lambda: bot.media.e2ee_state(room, s.alice_identity) == "decrypting",
                TIMEOUT,
                "the bot decrypting alice",
            )
            await wait_until(lambda: heard(listener, alice.user_id, ALICE_HZ), TIMEOUT, "440")
            # ... and Element Call's page decodes the bot's music.
            assert "tone.flac" in (await s.say("!play tone.flac", "tone.flac"))["body"]
            got = await s.hears(MUSIC_HZ)
            assert abs(got.freq - MUSIC_HZ) < 15, got
            yield s
            # No frame of the bot's failed to decrypt in Element Call (its RemoteTracks log).
            assert not page.logged(f"Encryption error for {s.bot_identity}"), page.log_tail()


async def test_element_call_and_the_bot_record_transcribe_and_play(
    synapse: Synapse, sfu: DevSfu, tmp_path: Path
) -> None:
    """Element Call joins, the bot joins on !join and shows up in Element Call's call;
    the bot records alice's microphone into her file at its pitch and transcribes her with
    her name; Element Call's page decodes the bot's !play."""
    async with ec_scene(synapse, sfu, tmp_path) as s:
        alice = s.alice
        assert alice.ready["trust"] == "strict"  # alice's client excludes insecure devices
        await s.page.screenshot(tmp_path / "joined.png")

        started = asyncio.get_running_loop().time()
        await s.say("!record start", "being recorded")
        notice = await s.say("!transcribe start", "being transcribed")
        name = s.bot.matrix.nio.rooms[s.room].user_name(alice.user_id)
        assert name

        def caption(e: dict[str, Any]) -> bool:
            rel = e.get("relates_to") or {}
            return e["event"] == "message" and rel.get("event_id") == notice["event_id"]

        line = await alice.wait_event(caption, TIMEOUT + LOOP_S)
        # At least one whole loop of the microphone in the file, so the tone is in it too.
        left = LOOP_S + 1.0 - (asyncio.get_running_loop().time() - started)
        await asyncio.sleep(max(0.0, left))
        await s.say("!record stop", "Recording stopped")
        await s.say("!transcribe stop", "Transcription stopped")

    assert line["sender"] == s.bot.matrix.user_id and line["body"].startswith(f"{name}: "), line
    # tiny.en with one pass over a flite voice: some words may come out wrong, not most.
    assert word_error_rate(SPOKEN.text, line["body"][len(name) + 2 :]) < 0.5, line

    (folder,) = [p for p in (tmp_path / "data" / "calls").glob("*/*") if p.is_dir()]
    localpart = alice.user_id.lstrip("@").split(":")[0]
    (alice_file,) = [p for p in folder.glob("*.ogg") if p.name.startswith(localpart)]
    pcm = decode(alice_file)
    assert pcm.size / RATE > LOOP_S
    # Her tone is in her file at its pitch, for most of its TONE_S, and the bot's music not.
    toned = [w for w in windows(pcm) if abs(dominant(w) - ALICE_HZ) < 5]
    assert len(toned) * 0.5 >= TONE_S - 1.5, [round(dominant(w)) for w in windows(pcm)]
    assert all(level(w, ALICE_HZ) > 10 * level(w, MUSIC_HZ) for w in toned)


async def test_element_call_and_the_bot_across_a_key_rotation(
    synapse: Synapse, sfu: DevSfu, tmp_path: Path
) -> None:
    """bob joins and leaves: Element Call and the bot both rotate to key index 1 and trade
    the new keys over Olm; each still decrypts the other, and Element Call's sender uses its
    new key (someone holding only that key hears alice)."""
    async with (
        ec_scene(synapse, sfu, tmp_path) as s,
        js_peer(synapse, tmp_path, "bob") as bob,
    ):
        alice, page = s.alice, s.page
        await alice.call("invite", room_id=s.room, user_id=bob.user_id)
        await bob.call("join_room", room_id=s.room)
        focus = [{"type": "livekit", "livekit_service_url": "http://unused.invalid"}]
        await bob.call("rtc_join", room_id=s.room, foci=focus)
        await wait_until(lambda: len(s.session.memberships) == 3, TIMEOUT, "bob in")
        await bob.call("rtc_leave", room_id=s.room)
        await wait_until(lambda: len(s.session.memberships) == 2, TIMEOUT, "bob out")

        def alice_key(index: int) -> bytes | None:
            for change in s.session.current_keys():
                if change.identity == s.alice_identity and change.key.index == index:
                    return change.key.key
            return None

        # Element Call's new key reached the bot over Olm, and the bot rotated its own.
        await wait_until(lambda: alice_key(1) is not None, TIMEOUT, "alice's key index 1")
        await wait_until(lambda: _index(s.session) == 1, TIMEOUT, "the bot's own key 1")

        # eve holds alice's index 1 key and no other: she hears alice only once Element
        # Call's sender encrypts with it.
        lk_room = livekit_room_alias(s.room, "m.call#ROOM")
        eve_id = "@eve:localhost:EVE"
        eve = await lkclient.connect(sfu.url, eve_id, lk_room, keys={})
        try:
            new_key = alice_key(1)
            assert new_key is not None
            eve.set_key(s.alice_identity, new_key, 1)
            probe = lkclient.AudioProbe(await eve.track(s.alice_identity, rtc.TrackKind.KIND_AUDIO))
            got = await probe.tone(near=ALICE_HZ, timeout=TIMEOUT + LOOP_S)
            assert abs(got.freq - ALICE_HZ) < 15, got
            await probe.close()
        finally:
            await eve.close()

        # Both ways still: the bot hears alice, Element Call's page the bot (past its switch).
        s.listener.frames.clear()
        await wait_until(
            lambda: heard(s.listener, alice.user_id, ALICE_HZ), TIMEOUT + LOOP_S, "440 after"
        )
        await asyncio.sleep(2.0)
        got_music = await s.hears(MUSIC_HZ)
        assert abs(got_music.freq - MUSIC_HZ) < 15, got_music
        assert page.logged(f"Received key over transport {s.bot_identity} at index 1")
        await page.screenshot(tmp_path / "rotated.png")


def windows(pcm: np.ndarray, seconds: float = 0.5) -> list[np.ndarray]:
    n = int(seconds * RATE)
    return [pcm[i : i + n] for i in range(0, pcm.size - n + 1, n)]


def dominant(pcm: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(pcm * np.hanning(pcm.size)))
    spectrum[0] = 0
    return float(np.argmax(spectrum) * RATE / pcm.size)


async def wait_until_async(
    pred: Callable[[], Awaitable[bool]], what: str, timeout: float = TIMEOUT
) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await pred():
        if loop.time() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        await asyncio.sleep(0.2)


def _index(session: MatrixRTCSession) -> int | None:
    own = session.own_key
    return None if own is None else own.index


async def _tile(page: ElementCallPage, name: str) -> bool:
    return any(name in tile for tile in (await page.view())["tiles"])
