"""Browser interop: Element Call's media stack and the bot in one encrypted call.

alice joins from a "browser": her Matrix side is matrix-js-sdk's ``MatrixRTCSession``
(``tests/jspeer``: the real membership and Olm key exchange), her media side is the real
livekit-client that Element Call pins, in headless Chromium (``tests/browser``), with E2EE set
up as Element Call sets it up (its key provider options, HKDF key import, per-participant keys
and indexes, the sender moving to each new own key index). Every key her js-sdk session
announces is handed to livekit-client as it arrives (:func:`tests.browser.forward_keys`), so
the keys the browser uses are the ones it received from the bot over Olm.

Why this shape (chosen as the least fragile): the browser runs no Matrix code, so the
js-sdk side stays the one ``tests/jspeer.py`` already drives; Python speaks the DevTools
protocol to the page itself (no playwright, no second Node process to keep in step); the page
comes from a loopback HTTP server (a secure context, so WebCrypto works) and reaches the dev
SFU on the namespace's veth address. Audio needs no fake device: the page publishes a WebAudio
oscillator and measures what it decrypts with an AnalyserNode.

Runs inside the network namespace (scripts/netns-run.sh).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from livekit import rtc

from bot.app import CallBot
from bot.devsfu.server import DevSfu
from bot.plugin import Plugin
from bot.rtc.identity import livekit_room_alias
from bot.rtc.session import MatrixRTCSession
from tests import lkclient
from tests.browser import BrowserPeer, browser_peer, forward_keys
from tests.conftest import bot_config, running_bot
from tests.jspeer import JsPeer, js_peer
from tests.peer import wait_until
from tests.synapse import Synapse
from tests.test_media import Listener, heard, sine

TIMEOUT = 30.0
ALICE_HZ, BOT_HZ, MALLORY_HZ = 440, 660, 880


@dataclass
class BrowserScene:
    """The bot and alice (js-sdk for Matrix, livekit-client in Chromium for media) in a call;
    alice's key and the bot's are in the browser already."""

    bot: CallBot
    alice: JsPeer
    page: BrowserPeer
    room: str
    lk_room: str
    session: MatrixRTCSession
    bot_identity: str
    listener: Listener


@contextlib.asynccontextmanager
async def browser_scene(
    synapse: Synapse, sfu: DevSfu, tmp_path: Path, extra: tuple[Plugin, ...] = ()
) -> AsyncIterator[BrowserScene]:
    bot_account = synapse.register("bot")
    focus = {"type": "livekit", "livekit_service_url": sfu.http_url}
    config = bot_config(
        synapse, bot_account, tmp_path / "data", rtc={"livekit_service_url": sfu.http_url}
    )
    async with (
        running_bot(config) as bot,
        js_peer(synapse, tmp_path, "alice") as alice,
        browser_peer(tmp_path / "browser") as page,
    ):
        room = (await alice.call("create_room", invite=[bot_account.user_id]))["room_id"]
        keys = asyncio.create_task(forward_keys(alice, page, room))
        try:
            await wait_until(lambda: room in bot.matrix.joined_rooms(), TIMEOUT, "bot in room")
            await alice.call("rtc_join", room_id=room, foci=[focus])
            session = bot.rtc.get_room_session(room)
            await wait_until(lambda: session.memberships, TIMEOUT, "alice's membership")
            listener = Listener()
            for plugin in (listener, *extra):
                bot.media.add_plugin(lambda plugin=plugin: plugin)
            access = await session.join()
            await wait_until(lambda: listener.call is not None, TIMEOUT, "the plugin's call")
            lk_room = livekit_room_alias(room, "m.call#ROOM")
            await page.connect(sfu.url, lkclient.token(alice.identity, lk_room))
            wanted = {(alice.identity, 0), (access.identity, 0)}
            await wait_until(lambda: wanted <= set(page.keys), TIMEOUT, "keys in the browser")
            yield BrowserScene(bot, alice, page, room, lk_room, session, access.identity, listener)
        finally:
            keys.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keys
            await session.leave()


async def test_the_browser_and_the_bot_hear_each_other(
    synapse: Synapse, sfu: DevSfu, tmp_path: Path
) -> None:
    """Both ways, encrypted; the recorder's file for the browser holds its tone; someone
    without the keys hears nothing of the browser, and the browser nothing of them."""
    from plugins.recorder.plugin import Recorder, RecorderConfig
    from tests.test_recorder import decode, level

    recorder = Recorder(RecorderConfig(upload_mixed=False))
    async with browser_scene(synapse, sfu, tmp_path, (recorder,)) as s:
        alice, page, listener = s.alice, s.page, s.listener
        published = await page.publish_tone(ALICE_HZ)
        assert published["encrypted"] is True
        output = await listener.call.publish_audio("bot-tone")
        stop = asyncio.Event()
        feeder = asyncio.create_task(sine(output, BOT_HZ, stop))
        try:
            # The bot hears the browser's tone, attributed to alice's Matrix identity.
            await wait_until(lambda: heard(listener, alice.user_id, ALICE_HZ), TIMEOUT, "440")
            frame = next(f for f in listener.frames if f.participant.user_id == alice.user_id)
            assert frame.participant.identity == alice.identity
            assert s.bot.media.e2ee_state(s.room, alice.identity) == "decrypting"
            # The browser decrypts the bot's tone with the key the bot sent over Olm.
            got = await page.tone(s.bot_identity, BOT_HZ)
            assert abs(got.freq - BOT_HZ) < 15, got
            state = await page.state()
            assert state["remote"] == {s.bot_identity: True}  # the bot publishes encrypted

            await recorder.start()
            await asyncio.sleep(2.0)
            await recorder.stop()

            # mallory is in the LiveKit room but not in the Matrix call: no keys reach her.
            mallory_id = "@mallory:localhost:MALLORY"
            mallory = await lkclient.connect(sfu.url, mallory_id, s.lk_room, keys={})
            try:
                mallory.set_key(mallory_id, b"m" * 16, 0)
                loud = lkclient.Tone(MALLORY_HZ)
                await loud.publish(mallory)
                probe = lkclient.AudioProbe(
                    await mallory.track(alice.identity, rtc.TrackKind.KIND_AUDIO)
                )
                # Frames of alice's arrive and decode to silence (past the first half second,
                # where the SDK may start a new stream with noise: lkclient.AudioProbe.tone).
                await probe.loudest(0.5)
                assert await probe.loudest(1.0) < lkclient.SILENCE_RMS
                await probe.close()
                # livekit-client says it has no key for mallory, and plays nothing of hers.
                await wait_until_page(
                    page,
                    lambda st: any(
                        e["kind"] == "encryption_error" and e["identity"] == mallory_id
                        for e in st["events"]
                    ),
                    "the browser's missing-key error",
                )
                of_mallory = await page.hear(mallory_id)
                assert of_mallory is not None and of_mallory.rms < 0.01, of_mallory
                await loud.stop()
            finally:
                await mallory.close()
        finally:
            stop.set()
            await feeder

    (folder,) = [p for p in (tmp_path / "data" / "calls").glob("*/*") if p.is_dir()]
    localpart = alice.user_id.lstrip("@").split(":")[0]
    (alice_file,) = [p for p in folder.glob("*.ogg") if p.name.startswith(localpart)]
    samples = decode(alice_file)
    assert samples.size / 48_000 > 1.5
    loud = samples[samples.size // 4 :]
    assert level(loud, ALICE_HZ) > 10 * level(loud, BOT_HZ)


async def test_the_browser_and_the_bot_keep_hearing_each_other_across_a_key_rotation(
    synapse: Synapse, sfu: DevSfu, tmp_path: Path
) -> None:
    """bob joins and leaves: alice's js-sdk session and the bot rotate to key index 1; the
    browser gets both new keys, sends with its own new one, and still decrypts the bot."""
    async with (
        browser_scene(synapse, sfu, tmp_path) as s,
        js_peer(synapse, tmp_path, "bob") as bob,
    ):
        alice, page, listener = s.alice, s.page, s.listener
        await page.publish_tone(ALICE_HZ)
        output = await listener.call.publish_audio("bot-tone")
        stop = asyncio.Event()
        feeder = asyncio.create_task(sine(output, BOT_HZ, stop))
        try:
            await wait_until(lambda: heard(listener, alice.user_id, ALICE_HZ), TIMEOUT, "440")
            await page.tone(s.bot_identity, BOT_HZ)

            await alice.call("invite", room_id=s.room, user_id=bob.user_id)
            await bob.call("join_room", room_id=s.room)
            focus = [{"type": "livekit", "livekit_service_url": "http://unused.invalid"}]
            await bob.call("rtc_join", room_id=s.room, foci=focus)
            await wait_until(lambda: len(s.session.memberships) == 3, TIMEOUT, "bob in")
            await bob.call("rtc_leave", room_id=s.room)

            # Through alice's Matrix side, livekit-client gets her new key and the bot's.
            rotated = {(alice.identity, 1), (s.bot_identity, 1)}
            await wait_until(lambda: rotated <= set(page.keys), TIMEOUT, "index 1 keys")
            await wait_until(
                lambda: s.session.own_key is not None and s.session.own_key.index == 1, TIMEOUT
            )
            listener.frames.clear()
            await wait_until(lambda: heard(listener, alice.user_id, ALICE_HZ), TIMEOUT, "after")
            await asyncio.sleep(2.0)  # well past the bot's switch to index 1
            got = await page.tone(s.bot_identity, BOT_HZ)
            assert abs(got.freq - BOT_HZ) < 15, got

            # The browser's sender moved to index 1: a listener holding only alice's index 1
            # key (none at index 0) hears her.
            new_key = next(
                e
                for e in alice.events
                if e["event"] == "key" and e["own"] and e["index"] == 1 and e["room_id"] == s.room
            )
            eve_id = "@eve:localhost:EVE"
            eve = await lkclient.connect(sfu.url, eve_id, s.lk_room, keys={})
            try:
                eve.set_key(alice.identity, base64.b64decode(new_key["key"]), 1)
                probe = lkclient.AudioProbe(
                    await eve.track(alice.identity, rtc.TrackKind.KIND_AUDIO)
                )
                result = await probe.tone(near=ALICE_HZ, timeout=TIMEOUT)
                assert abs(result.freq - ALICE_HZ) < 15, result
                await probe.close()
            finally:
                await eve.close()
        finally:
            stop.set()
            await feeder


def process_group(pgid: int) -> list[int]:
    """The living processes of a process group (zombies have died: they wait to be reaped)."""
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError):
                # /proc/PID/stat: "pid (comm) state ppid pgrp ..."; comm may hold spaces.
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                if int(fields[2]) == pgid and fields[0] not in "ZX":
                    members.append(int(entry.name))
    return members


async def test_the_browser_and_its_helpers_are_gone_afterwards(tmp_path: Path) -> None:
    async with browser_peer(tmp_path / "browser") as page:
        pid = page.browser.pid
        assert pid is not None
        assert await page.state() is not None
        assert len(process_group(pid)) > 1  # the browser, its renderer, its helpers
    # SIGKILL is delivered to the whole group; dying takes the kernel a moment.
    await wait_until(lambda: process_group(pid) == [], TIMEOUT, "the group to die")


async def wait_until_page(page: BrowserPeer, pred, what: str) -> None:
    """Polls the page's state until ``pred(state)``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + TIMEOUT
    while not pred(await page.state()):
        if loop.time() > deadline:
            raise TimeoutError(f"timed out waiting for {what}; page log:\n{page.log_tail()}")
        await asyncio.sleep(0.1)
