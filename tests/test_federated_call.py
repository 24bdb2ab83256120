"""The bot in a federated call (issue 21), all real parts: two Synapses federating over TLS
(tests/federation.py), each with its own dev SFU and JWT service; alice (matrix-js-sdk and a
livekit client) on homeserver A, bob on B, the bot on A. As Element Call 0.26 does, everyone
publishes on their own homeserver's SFU: the bot publishes on A's and subscribes to B's with a
subscribe-only token from B's JWT service (which checks the bot's OpenID token at A over
federation)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from livekit import rtc

from bot.app import CallBot
from bot.devsfu import DevSfu
from bot.plugin import Plugin
from bot.rtc.session import MatrixRTCSession
from plugins.recorder.plugin import Recorder, RecorderConfig
from tests import lkclient
from tests.conftest import bot_config, running_bot
from tests.federation import Homeserver, openid_token, sfu_get
from tests.jspeer import JsPeer
from tests.peer import wait_until
from tests.test_media import Listener, heard, sine
from tests.test_recorder import decode, level

TIMEOUT = 30.0


async def _key(peer: JsPeer, room: str, identity: str, own: bool = False) -> tuple[bytes, int]:
    e = await peer.wait_event(
        lambda e: (
            e["event"] == "key"
            and e["room_id"] == room
            and (e["own"] if own else e["identity"] == identity)
        ),
        TIMEOUT,
    )
    return base64.b64decode(e["key"]), e["index"]


async def _media(
    peer: JsPeer,
    home: Homeserver,
    room: str,
    publish: lkclient.Tone | None,
    hs: Homeserver | None = None,
) -> lkclient.Client:
    """``peer``'s livekit client on the SFU of ``hs`` (default: their ``home``), with a token
    from its JWT service, publishing ``publish`` with the peer's own key."""
    hs = hs or home
    token = await openid_token(home, peer.account)
    url, jwt = await sfu_get(hs.jwt_url, token, room, peer.device_id)
    client = await lkclient.connect(url, peer.identity, "", keys={}, jwt=jwt)
    if publish is not None:
        client.set_key(peer.identity, *await _key(peer, room, peer.identity, own=True))
        await publish.publish(client)
    return client


async def _told(peer: JsPeer, text: str, since: int) -> str:
    e = await peer.wait_event(
        lambda e: e["event"] == "message" and text in (e["body"] or ""), TIMEOUT, since=since
    )
    return str(e["body"])


@dataclass
class Federated:
    """The bot (on A) with its plugins, alice on A and bob on B, both in the room's call and
    publishing ``mics`` on their own SFUs; the bot not yet joined."""

    a: Homeserver
    b: Homeserver
    bot: CallBot
    alice: JsPeer
    bob: JsPeer
    room: str
    session: MatrixRTCSession
    clients: list[lkclient.Client]


@contextlib.asynccontextmanager
async def federated(
    two_homeservers: tuple[Homeserver, Homeserver],
    tmp_path: Path,
    plugins: tuple[Plugin, ...],
    mics: tuple[lkclient.Tone | lkclient.Speech, lkclient.Tone | lkclient.Speech],
) -> AsyncIterator[Federated]:
    a, b = two_homeservers
    account = a.register("bot")
    config = bot_config(
        a.synapse,
        account,
        tmp_path / "data",
        # The bot finds its own SFU in A's /rtc/transports; both SFUs are on the test's
        # private addresses, which the outbound policy refuses unless allowed.
        outbound={"allow": [a.address, b.address]},
    )
    clients: list[lkclient.Client] = []
    async with running_bot(config) as bot:
        alice = await JsPeer(a.url, a.register("alice"), tmp_path / "alice").start()
        bob = await JsPeer(b.url, b.register("bob"), tmp_path / "bob").start()
        try:
            for plugin in plugins:
                bot.media.add_plugin(lambda plugin=plugin: plugin)
            invite = [bob.user_id, account.user_id]
            room = (await alice.call("create_room", invite=invite, encrypted=True))["room_id"]
            await bob.call("join_room", room_id=room)
            await wait_until(lambda: room in bot.matrix.joined_rooms(), TIMEOUT, "bot in room")
            await alice.call("rtc_join", room_id=room, foci=[a.transport])
            await bob.call("rtc_join", room_id=room, foci=[b.transport])
            session = bot.rtc.get_room_session(room)
            await wait_until(lambda: len(session.memberships) == 2, TIMEOUT, "both members")
            # alice publishes on A's SFU, bob on B's, each with their own key.
            clients.append(await _media(alice, a, room, mics[0]))
            clients.append(await _media(bob, b, room, mics[1]))
            yield Federated(a, b, bot, alice, bob, room, session, clients)
        finally:
            for mic in mics:
                await mic.stop()
            for client in clients:
                await client.close()
            await bob.stop()
            await alice.stop()


async def test_the_bot_hears_both_homeservers_and_both_hear_it(
    two_homeservers: tuple[Homeserver, Homeserver],
    two_sfus: tuple[DevSfu, DevSfu],
    tmp_path: Path,
) -> None:
    sfu_a, sfu_b = two_sfus
    listener = Listener()
    recorder = Recorder(RecorderConfig(upload_mixed=False))
    tones: list[lkclient.Tone] = []
    probes: list[lkclient.AudioProbe] = []
    restarted: DevSfu | None = None
    stop_music = asyncio.Event()
    music: asyncio.Task[None] | None = None
    alice_tone, bob_tone = lkclient.Tone(440), lkclient.Tone(660)
    async with federated(
        two_homeservers, tmp_path, (listener, recorder), (alice_tone, bob_tone)
    ) as f:
        a, b, bot, alice, bob, room, session = f.a, f.b, f.bot, f.alice, f.bob, f.room, f.session
        account_user = bot.matrix.user_id
        alice_lk, bob_lk = f.clients
        clients = f.clients
        try:
            mark = alice.mark()
            started = time.monotonic()
            reply = await _ask(alice, room, "!join", bot)
            assert reply.startswith(("Joined the call", "Started the call")), reply
            # The bot publishes on its own homeserver's SFU and says so in its membership.
            state = (await alice.call("state_events", room_id=room))["events"]
            mine = next(e["content"] for e in state if e["sender"] == account_user)
            assert mine["foci_preferred"][0]["livekit_service_url"] == a.jwt_url
            assert mine["focus_active"]["focus_selection"] == "multi_sfu"
            await wait_until(lambda: listener.call is not None, TIMEOUT, "the plugins' start")
            await wait_until(lambda: heard(listener, alice.user_id, 440), TIMEOUT, "alice")
            await wait_until(lambda: heard(listener, bob.user_id, 660), TIMEOUT, "bob")
            join_to_both = time.monotonic() - started
            [on_b] = sfu_b.participants(session.own_identity)
            assert not on_b.can_publish  # B's service gave the bot a subscribe-only token
            assert [p.can_publish for p in sfu_a.participants(session.own_identity)] == [True]

            # The bot's own audio (what music plays through), heard by both: alice on A, and
            # bob through his subscribe-only connection to A.
            assert listener.call is not None
            output = await listener.call.publish_audio("bot-tone")
            music = asyncio.create_task(sine(output, 880, stop_music))
            bob_on_a = await _media(bob, b, room, None, hs=a)
            clients.append(bob_on_a)
            for peer, client in ((alice, alice_lk), (bob, bob_on_a)):
                client.set_key(session.own_identity, *await _key(peer, room, session.own_identity))
                track = await client.track(session.own_identity, rtc.TrackKind.KIND_AUDIO, TIMEOUT)
                probe = lkclient.AudioProbe(track)
                probes.append(probe)
                assert abs((await probe.tone(near=880, timeout=TIMEOUT)).freq - 880) < 15

            status = await _ask(alice, room, "!status", bot)
            assert f"SFU {b.address}:7880 (members of another homeserver): connected" in status
            assert f"SFU {a.address}:7880 (mine, I publish here): connected" in status

            # Recording; then B's SFU stops mid-call and comes back.
            await recorder.start()
            await asyncio.sleep(2.0)
            await bob_lk.close()
            await sfu_b.stop()
            told = await _told(alice, "I can't hear the members on", mark)
            assert f"{b.address}:7880" in told
            restarted = await b.start_sfu()
            bob_again = lkclient.Tone(660)
            tones.append(bob_again)
            bob_lk = await _media(bob, b, room, bob_again)
            clients.append(bob_lk)
            listener.frames.clear()
            await wait_until(lambda: heard(listener, bob.user_id, 660), 60, "bob again")
            await _told(alice, f"I can hear the members on {b.address}:7880 now.", mark)
            await asyncio.sleep(1.5)
            await recorder.stop()
        finally:
            stop_music.set()
            if music is not None:
                await music
            for probe in probes:
                await probe.close()
            for tone in tones:
                await tone.stop()
            if restarted is not None:
                await restarted.stop()
    print(f"federated join: !join to both participants' audio heard {join_to_both:.2f} s")
    (folder,) = [p for p in (tmp_path / "data" / "calls").glob("*/*") if p.is_dir()]
    by_user = {p.name.split("_")[0]: p for p in folder.glob("*.ogg") if p.name != "mixed.ogg"}
    alice_pcm = decode(by_user[alice.user_id.lstrip("@").split(":")[0]])
    bob_pcm = decode(by_user[bob.user_id.lstrip("@").split(":")[0]])
    tail = slice(-24_000, None)
    # Each file holds its own person's tone: attributed to the right Matrix user.
    assert level(alice_pcm[tail], 440) > 10 * level(alice_pcm[tail], 660)
    assert level(bob_pcm[tail], 660) > 10 * level(bob_pcm[tail], 440)
    meta: dict[str, Any] = json.loads((folder / "meta.json").read_text())
    [outage] = [o for o in meta["media_outages"] if o.get("sfu")]
    assert outage["sfu"] == f"{b.address}:7880" and outage["participants"] == [bob.user_id]
    assert outage["end"] is not None and outage["end"] > outage["start"]


async def _ask(peer: JsPeer, room: str, text: str, bot: Any) -> str:
    """Type ``text`` and return the body of the bot's reply to it."""
    sent = (await peer.call("send_text", room_id=room, body=text))["event_id"]

    def reply(e: dict[str, Any]) -> bool:
        relation = (e.get("relates_to") or {}).get("m.in_reply_to") or {}
        return (
            e["event"] == "message"
            and e["sender"] == bot.matrix.user_id
            and relation.get("event_id") == sent
        )

    return str((await peer.wait_event(reply, TIMEOUT))["body"])


async def test_captions_name_the_speakers_of_both_homeservers(
    two_homeservers: tuple[Homeserver, Homeserver],
    two_sfus: tuple[DevSfu, DevSfu],
    tmp_path: Path,
) -> None:
    """The transcriber hears alice on A's SFU and bob on B's and names each."""
    from plugins.transcriber.plugin import Transcriber, TranscriberConfig
    from plugins.transcriber.samples import samples, word_error_rate

    transcriber = Transcriber(TranscriberConfig(upload=("txt",)))
    alice_mic, bob_mic = lkclient.Speech(), lkclient.Speech()
    async with federated(two_homeservers, tmp_path, (transcriber,), (alice_mic, bob_mic)) as f:
        reply = await _ask(f.alice, f.room, "!join", f.bot)
        assert reply.startswith(("Joined the call", "Started the call")), reply
        uses = f.bot.media.media(f.room)
        assert uses is not None
        await wait_until(
            lambda: any(s.connected for s in uses.sfus.sfus.values()), TIMEOUT, "B's SFU"
        )
        mark = f.alice.mark()
        await transcriber.start()
        notice = await f.alice.wait_event(
            lambda e: e["event"] == "message" and "being transcribed" in (e["body"] or ""),
            TIMEOUT,
            since=mark,
        )
        await alice_mic.say(samples()["slt-2"].pcm()).wait()
        await bob_mic.say(samples()["rms-2"].pcm()).wait()

        def caption(e: dict[str, Any], seen: set[str]) -> bool:
            rel = e.get("relates_to") or {}
            return (
                e["event"] == "message"
                and rel.get("event_id") == notice["event_id"]
                and e["event_id"] not in seen
            )

        captions: list[dict[str, Any]] = []
        for _ in range(2):
            seen = {c["event_id"] for c in captions}
            captions.append(
                await f.alice.wait_event(lambda e, s=seen: caption(e, s), TIMEOUT, since=mark)
            )
        room = f.bot.matrix.nio.rooms[f.room]
        expected = [
            (room.user_name(f.alice.user_id), samples()["slt-2"].text),
            (room.user_name(f.bob.user_id), samples()["rms-2"].text),
        ]
        for c, (name, text) in zip(captions, expected, strict=True):
            assert c["body"].startswith(f"{name}: "), c["body"]
            assert word_error_rate(text, c["body"][len(name) + 2 :]) < 0.5, c["body"]
