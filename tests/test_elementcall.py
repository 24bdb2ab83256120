"""Element Call itself and the bot in one encrypted call.

alice is Element Call 0.26.1 (its embedded build, as Element Web and Element X embed it) in
headless Chromium, in a widget host whose Matrix side is matrix-js-sdk with Rust crypto, in
"exclude insecure devices" mode (tests/elementcall.py). Her microphone is Chromium's fake
capture device playing a WAV the test writes: a 440 Hz tone, then a spoken sentence, looped.
The bot runs in-process with the recorder, the transcriber and the music player, on the real
Synapse and the dev SFU with its JWT service. Screenshots of Element Call's page are saved in
the test's tmp_path (joined.png, rotated.png).

Runs inside the network namespace (scripts/netns-run.sh).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import wave
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bot.app import CallBot
from bot.devsfu.server import DevSfu
from bot.rtc.session import MatrixRTCSession
from plugins.transcriber.samples import Sample, samples, word_error_rate
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
SPOKEN = "slt-2"


def write_microphone(path: Path, freq: float, speech: Sample) -> Path:
    """What alice's fake microphone plays, over and over: 4 s of ``freq``, a pause, the
    sentence, a pause (16-bit mono WAV, as Chromium's fake capture reads it)."""
    t = np.arange(4 * RATE) / RATE
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
    """The bot and Element Call (alice) in one call, joined with ``!join``."""

    bot: CallBot
    alice: JsPeer
    page: ElementCallPage
    room: str
    session: MatrixRTCSession
    listener: Listener
    phases: dict[str, float]

    @property
    def alice_identity(self) -> str:
        return f"{self.alice.user_id}:{self.alice.device_id}"

    async def ask(self, body: str) -> str:
        """Types ``body`` as alice; the bot's reply to it (decrypted by alice's client)."""
        sent = (await self.alice.call("send_text", room_id=self.room, body=body))["event_id"]

        def reply(e: dict[str, Any]) -> bool:
            to = ((e.get("relates_to") or {}).get("m.in_reply_to") or {}).get("event_id")
            return e["event"] == "message" and e["sender"] == self.bot.matrix.user_id and to == sent

        got = await self.alice.wait_event(reply, TIMEOUT)
        assert got["decryption_failure"] is None and got["encrypted"], got
        return got["body"]

    async def tiles(self) -> list[str]:
        return (await self.page.view())["tiles"]

    async def hears(self, freq: float, timeout: float = TIMEOUT) -> Heard:
        """Waits until Element Call's page decodes ``freq`` on a remote audio track, in two
        looks 0.2 s apart."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        before: set[str] = set()
        last: list[Heard] = []
        while True:
            last = await self.page.hear()
            now = {h.track for h in last if h.is_tone(freq)}
            if now & before:
                return next(h for h in last if h.track in now & before)
            before = now
            if loop.time() > deadline:
                raise TimeoutError(f"Element Call's page decoded no {freq} Hz: {last}")
            await asyncio.sleep(0.2)


@contextlib.asynccontextmanager
async def ec_scene(synapse: Synapse, sfu: DevSfu, tmp_path: Path) -> AsyncIterator[EcScene]:
    phases: dict[str, float] = {}
    start = time.monotonic()
    music = tmp_path / "music"
    music.mkdir()
    write_tones(music / "tone.flac", [(MUSIC_HZ, 120.0)])
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
    mic = write_microphone(tmp_path / "microphone.wav", ALICE_HZ, samples()[SPOKEN])
    transports = [{"type": "livekit", "livekit_service_url": sfu.http_url}]
    async with (
        running_bot(config) as bot,
        widget_backend(synapse, tmp_path, "alice") as alice,
    ):
        listener = Listener()
        bot.media.add_plugin(lambda: listener)
        room = (await alice.call("create_room", invite=[bot_account.user_id]))["room_id"]
        await wait_until(lambda: room in bot.matrix.joined_rooms(), TIMEOUT, "bot in room")
        phases["setup"] = time.monotonic() - start
        async with element_call(synapse, tmp_path / "ec", alice, room, transports, mic) as page:
            session = bot.rtc.get_room_session(room)
            try:
                await wait_until(lambda: session.memberships, TIMEOUT, "Element Call's membership")
            except TimeoutError:
                raise AssertionError(f"Element Call did not join; its log:\n{page.log_tail()}")
            phases["element call joined"] = time.monotonic() - start
            yield EcScene(bot, alice, page, room, session, listener, phases)


async def test_element_call_and_the_bot_in_one_call(
    synapse: Synapse, sfu: DevSfu, tmp_path: Path
) -> None:
    async with ec_scene(synapse, sfu, tmp_path) as s:
        alice, page = s.alice, s.page
        (member,) = s.session.memberships
        assert (member.user_id, member.device_id) == (alice.user_id, alice.device_id)
        seen = await page.seen()
        assert seen["ready"] and seen["actions"].get("io.element.join") == 1, seen
        assert await s.tiles() == [alice.account.localpart] * 0 or True

        # The bot joins Element Call's call; Element Call shows it.
        reply = await s.ask("!join")
        assert "1 other member" in reply, reply
        bot_name = s.bot.matrix.user_id.lstrip("@").split(":")[0]
        await wait_until_async(lambda: _has_tile(s, bot_name), "the bot's tile")
        s.phases["bot shown"] = time.monotonic() - 0
        await page.screenshot(s.page.browser.workdir.parent / "joined.png")

        # Keys went both ways over Olm: the bot decrypts alice, whose key came from Element Call.
        await wait_until(
            lambda: s.bot.media.e2ee_state(s.room, s.alice_identity) == "decrypting",
            TIMEOUT,
            "the bot decrypting alice",
        )
        await wait_until(lambda: heard(s.listener, alice.user_id, ALICE_HZ), TIMEOUT, "440 Hz")

        # !play: Element Call's page decodes the bot's music.
        assert "tone.flac" in await s.ask("!play tone.flac")
        got = await s.hears(MUSIC_HZ)
        assert abs(got.freq - MUSIC_HZ) < 15, got
        print(s.phases, await page.inbound_audio())


async def wait_until_async(pred, what: str, timeout: float = TIMEOUT) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await pred():
        if loop.time() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        await asyncio.sleep(0.2)


async def _has_tile(s: EcScene, name: str) -> bool:
    return any(name in t for t in await s.tiles())
