"""Fleet mode with real parts: `callbot run` workers of one account on a real PostgreSQL and a
real Synapse, alice a matrix-js-sdk participant (bot.fleet, docs/deploy.md)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp

from bot.devsfu.server import DevSfu
from bot.rtc.identity import livekit_room_alias
from tests import lkclient
from tests.botproc import BotProcess
from tests.fleet import Fleet
from tests.jspeer import JsPeer, js_peer
from tests.peer import wait_until
from tests.postgres import Postgres
from tests.synapse import Synapse
from tests.test_media import _follow_own_keys

TIMEOUT = 30.0


def replies_to(alice: JsPeer, event_id: str, since: int = 0) -> list[dict]:
    return [
        e
        for e in alice.events[since:]
        if e["event"] == "message"
        and ((e.get("relates_to") or {}).get("m.in_reply_to") or {}).get("event_id") == event_id
    ]


async def room_with(fleet: Fleet, alice: JsPeer) -> str:
    """alice's encrypted room, which the fleet's account joined (on invite)."""
    room = (await alice.call("create_room", invite=[fleet.account.user_id]))["room_id"]
    await wait_until(
        lambda: any(w.logged("joined on invite") for w in fleet.workers), TIMEOUT, "the bot"
    )
    await asyncio.sleep(1.0)  # alice's client sees the bot's join before she types
    return room


async def test_one_worker_answers_each_command_and_the_leader_fails_over(
    synapse: Synapse, pg: Postgres, tmp_path: Path
) -> None:
    """Two workers: each command is answered once, by the leader; SIGKILL of the leader: the
    other takes the lock and answers commands again within 10 s."""
    fleet = Fleet(synapse, pg, tmp_path)
    try:
        first = await fleet.add(metrics=True)
        second = await fleet.add(metrics=True)
        assert fleet.leads(first) and not fleet.leads(second)
        # /metrics per worker: each says whether it leads, and the fleet it sees
        async with aiohttp.ClientSession() as http:
            for worker, leads in ((first, 1), (second, 0)):
                for _ in range(50):  # the first worker sees the second at its next tick
                    async with http.get(fleet.metrics[id(worker)]) as resp:
                        text = await resp.text()
                    if "callbot_fleet_workers 2.0" in text:
                        break
                    await asyncio.sleep(0.1)
                assert f"callbot_fleet_leader {leads}.0" in text
                assert "callbot_fleet_workers 2.0" in text
        async with js_peer(synapse, tmp_path, "alice") as alice:
            room = await room_with(fleet, alice)
            for _ in range(3):
                sent = (await alice.call("send_text", room_id=room, body="!status"))["event_id"]
                await wait_until(lambda s=sent: replies_to(alice, s), TIMEOUT, "the answer")
                await asyncio.sleep(2.0)  # time for a second answer, were there one
                (answer,) = replies_to(alice, sent)
                lines = answer["body"].splitlines()
                assert "Fleet: 2 workers, leader " + fleet.device(first) in answer["body"]
                assert (
                    f"  worker {fleet.device(first)} (leader, this one): 0/20 calls (0% load)"
                    in lines
                )
                assert f"  worker {fleet.device(second)}: 0/20 calls (0% load)" in lines

            await first.stop(signal.SIGKILL)
            killed = time.monotonic()
            answered = None
            while answered is None and time.monotonic() - killed < 30:
                mark = alice.mark()
                sent = (await alice.call("send_text", room_id=room, body="!status"))["event_id"]
                try:
                    await wait_until(
                        lambda s=sent, m=mark: replies_to(alice, s, m), 1.0, "an answer"
                    )
                    answered = time.monotonic() - killed
                except TimeoutError:
                    continue
            print(f"answered again {answered:.1f} s after the SIGKILL of the leader")
            assert answered is not None and answered < 10.0
            assert fleet.leads(second)
            await asyncio.sleep(2.0)
            (answer,) = replies_to(alice, sent, mark)
            assert f"leader {fleet.device(second)}" in answer["body"]
        # The database password never reaches a log line.
        assert pg.password not in fleet.logs()
    finally:
        await fleet.stop()


def notices(alice: JsPeer, room: str, start: str) -> list[dict]:
    return [
        e
        for e in alice.events
        if e["event"] == "message" and e["room_id"] == room and (e["body"] or "").startswith(start)
    ]


async def scheduled(alice: JsPeer, room: str, when: str) -> str:
    """alice schedules a call in ``room``; the job's ID, from the (one) answer."""
    sent = (await alice.call("send_text", room_id=room, body=f"!schedule {when}"))["event_id"]
    (answer,) = await wait_until(lambda: replies_to(alice, sent), TIMEOUT, "the schedule")
    assert answer["body"].startswith("Scheduled "), answer["body"]
    return answer["body"].split()[1].rstrip(":")


async def test_a_schedule_fires_once_across_the_fleet_and_across_a_failover(
    synapse: Synapse, pg: Postgres, tmp_path: Path, sfu: DevSfu
) -> None:
    """The job store is PostgreSQL and only the leader runs the scheduler: a job fires once
    (one worker joins); a job the killed leader stored fires once, from the new leader."""
    fleet = Fleet(synapse, pg, tmp_path, f'[rtc]\nlivekit_service_url = "{sfu.http_url}"\n')
    try:
        first = await fleet.add()
        second = await fleet.add()
        async with js_peer(synapse, tmp_path, "alice") as alice:
            room = await room_with(fleet, alice)
            jid = await scheduled(alice, room, "in 8s")
            fired = f"Scheduled call {jid} "
            await wait_until(lambda: notices(alice, room, fired), TIMEOUT, "the job to fire")
            await asyncio.sleep(3.0)
            assert len(notices(alice, room, fired)) == 1

            other = await room_with(fleet, alice)
            jid = await scheduled(alice, other, "in 10s")
            await first.stop(signal.SIGKILL)  # the leader, which stored the job
            fired = f"Scheduled call {jid} "
            await wait_until(lambda: notices(alice, other, fired), TIMEOUT, "the job to fire")
            await asyncio.sleep(3.0)
            (notice,) = notices(alice, other, fired)
            assert "the call" in notice["body"], notice["body"]
            assert fleet.leads(second)
            assert any(e["msg"] == "scheduler started with 1 stored jobs" for e in second.entries)
    finally:
        await fleet.stop()


async def test_join_in_two_rooms_lands_one_call_on_each_worker(
    synapse: Synapse, pg: Postgres, tmp_path: Path, sfu: DevSfu
) -> None:
    """The leader assigns each `!join` to the least loaded worker within its rtc.max_calls
    (1 here); that worker joins and says so; `!status` (answered by the call's worker) shows
    both; a third `!join` is refused while both are full, and lands once `!leave` freed one."""
    fleet = Fleet(
        synapse, pg, tmp_path, f'[rtc]\nlivekit_service_url = "{sfu.http_url}"\nmax_calls = 1\n'
    )
    try:
        first = await fleet.add()
        second = await fleet.add()
        one, two = fleet.device(first), fleet.device(second)
        async with js_peer(synapse, tmp_path, "alice") as alice:
            rooms = [await room_with(fleet, alice) for _ in range(3)]
            started: list[str] = []
            for room in rooms[:2]:
                await alice.call("send_text", room_id=room, body="!join")
                (notice,) = await wait_until(
                    lambda r=room: notices(alice, r, "Started the call (worker "), TIMEOUT, "join"
                )
                started.append(notice["body"].split()[4].rstrip(";"))
            assert sorted(started) == sorted([one, two])
            joined = "joined the call assigned to this worker"
            assert [sum(e["msg"] == joined for e in w.entries) for w in (first, second)] == [1, 1]
            # !status in the first room: answered once, by the worker in its call
            sent = (await alice.call("send_text", room_id=rooms[0], body="!status"))["event_id"]
            await wait_until(lambda: replies_to(alice, sent), TIMEOUT, "the status")
            await asyncio.sleep(2.0)
            (answer,) = replies_to(alice, sent)
            body = answer["body"]
            assert f"Call in {rooms[0]}: joined" in body
            assert f"worker {started[0]} (" in body and "this one" in body
            for device, room in zip(started, rooms[:2], strict=True):
                assert f"worker {device}" in body and f"1/1 calls (100% load): {room}" in body
            # both full: the third call is refused, by the leader, once
            sent = (await alice.call("send_text", room_id=rooms[2], body="!join"))["event_id"]
            (answer,) = await wait_until(lambda: replies_to(alice, sent), TIMEOUT, "a refusal")
            assert answer["body"].startswith("All 2 bot workers are in as many calls as they")
            sent = (await alice.call("send_text", room_id=rooms[0], body="!leave"))["event_id"]
            (answer,) = await wait_until(lambda: replies_to(alice, sent), TIMEOUT, "the leave")
            assert answer["body"] == "Left the call."
            await asyncio.sleep(1.0)  # the worker deletes its assignment as it leaves
            await alice.call("send_text", room_id=rooms[2], body="!join")
            (notice,) = await wait_until(
                lambda: notices(alice, rooms[2], "Started the call (worker "), TIMEOUT, "join"
            )
            assert notice["body"].split()[4].rstrip(";") == started[0]
            assert len(replies_to(alice, sent)) == 1
    finally:
        await fleet.stop()


@contextlib.asynccontextmanager
async def recorded_call(
    fleet: Fleet, alice: JsPeer, sfu: DevSfu, transcribe: bool = False
) -> AsyncIterator[tuple[str, lkclient.Tone]]:
    """alice in her room's call publishing a 440 Hz tone; `!join` and `!record start` typed
    (and `!transcribe start`); (the room, her tone) once a worker records (and transcribes)."""
    room = await room_with(fleet, alice)
    focus = [{"type": "livekit", "livekit_service_url": sfu.http_url}]
    await alice.call("rtc_join", room_id=room, foci=focus)
    lk = await lkclient.connect(
        sfu.url, alice.identity, livekit_room_alias(room, "m.call#ROOM"), keys={}
    )
    await alice.wait_event(lambda e: e["event"] == "key" and e["own"], TIMEOUT)
    keys = asyncio.create_task(_follow_own_keys(alice, lk))
    tone = lkclient.Tone(440)
    await tone.publish(lk)
    try:
        await alice.call("send_text", room_id=room, body="!join")
        await wait_until(
            lambda: any(logged_start(w, "connected to the SFU") for w in fleet.workers),
            TIMEOUT,
            "a worker's media",
        )
        await alice.call("send_text", room_id=room, body="!record start")
        await wait_until(
            lambda: any(logged_start(w, "recording to") for w in fleet.workers),
            TIMEOUT,
            "the recording",
        )
        if transcribe:
            await alice.call("send_text", room_id=room, body="!transcribe start")
            await wait_until(
                lambda: any(logged_start(w, "transcribing") for w in fleet.workers),
                TIMEOUT,
                "the transcription",
            )
        yield room, tone
    finally:
        keys.cancel()
        await tone.stop()
        await lk.close()


def logged_start(worker: BotProcess, start: str) -> bool:
    return any(e["msg"].startswith(start) for e in worker.entries)


async def test_a_killed_workers_recorded_call_is_taken_over_in_the_same_folder(
    synapse: Synapse, pg: Postgres, tmp_path: Path, sfu: DevSfu
) -> None:
    """SIGKILL of the worker holding a recorded and transcribed call (the leader, so the lock
    moves too): within 20 s another worker is in the call and recording, as part 2 in the same
    folder, and transcribing on; the files play and meta.json names the gap; the dead
    device's delayed leave removes it from the call."""
    from tests.test_recorder import decode, level

    fleet = Fleet(
        synapse,
        pg,
        tmp_path,
        f'[rtc]\nlivekit_service_url = "{sfu.http_url}"\n'
        '[plugins]\nenabled = ["recorder", "transcriber"]\n'
        "[plugins.recorder]\nupload_mixed = false\n",
    )
    try:
        first = await fleet.add()
        second = await fleet.add()
        async with (
            js_peer(synapse, tmp_path, "alice") as alice,
            recorded_call(fleet, alice, sfu, transcribe=True) as (room, _),
        ):
            (holder,) = [w for w in fleet.workers if logged_start(w, "recording to")]
            assert holder is first  # the least loaded, then the oldest: the leader
            await asyncio.sleep(3.0)
            await holder.stop(signal.SIGKILL)
            killed = time.monotonic()
            await wait_until(lambda: logged_start(second, "recording to"), 20.0, "the takeover")
            took = time.monotonic() - killed
            print(f"recording again {took:.1f} s after the SIGKILL of its worker")
            assert took < 20.0
            # the transcript goes on too, without anyone typing !transcribe start again
            await wait_until(lambda: logged_start(second, "transcribing"), TIMEOUT, "captions")
            dead = fleet.device(first)
            # the dead device's delayed leave (10 s) takes its membership out of the call
            await wait_until(
                lambda: any(
                    e["event"] == "memberships"
                    and e["room_id"] == room
                    and all(m["device_id"] != dead for m in e["members"])
                    and any(m["device_id"] == fleet.device(second) for m in e["members"])
                    for e in alice.events
                ),
                TIMEOUT,
                "the dead device to leave the call",
            )
            await asyncio.sleep(4.0)
        assert await second.stop() == 0  # SIGTERM: finishes the files
    finally:
        await fleet.stop()
    (folder,) = [p for p in fleet.calls_dir.glob("*/*") if p.is_dir()]
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["complete"] is True and meta["part"] == 2
    (interruption,) = meta["interruptions"]
    assert interruption["from_utc"] <= interruption["until_utc"]
    (earlier,) = meta["earlier_parts"]
    first_part = next(folder / f for f in earlier["files"] if f.startswith("alice"))
    second_part = folder / first_part.name.replace(".ogg", ".part2.ogg")
    for path in (first_part, second_part):
        samples = decode(path)
        assert samples.size / 48_000 > 1.5
        assert level(samples[-24_000:], 440) > 10 * level(samples[-24_000:], 660)
    assert (folder / "mixed.part2.ogg").exists()
    transcript = json.loads((folder / "transcript.json").read_text())
    assert transcript["origin_utc"] == folder.name and transcript["segments"] == []  # a tone
    assert not (folder / "transcript.partial.json").exists()


def joined_by(alice: JsPeer, room: str) -> str | None:
    """The worker that said it started or joined the room's call."""
    for e in notices(alice, room, "Started the call (worker ") + notices(
        alice, room, "Joined the call (worker "
    ):
        return e["body"].split()[4].rstrip(";")
    return None


async def test_a_killed_workers_call_is_taken_over_by_the_leader(
    synapse: Synapse, pg: Postgres, tmp_path: Path, sfu: DevSfu
) -> None:
    """SIGKILL of a worker that is not the leader: the leader gives its call that alice is
    still in to a live worker (here itself), which joins and says so; its call that nobody
    else is in has ended with it and is not taken over; the leader's own calls stay."""
    from bot.fleet.worker import TAKEN_OVER_NOTICE

    fleet = Fleet(synapse, pg, tmp_path, f'[rtc]\nlivekit_service_url = "{sfu.http_url}"\n')
    try:
        first = await fleet.add()
        second = await fleet.add()
        one, two = fleet.device(first), fleet.device(second)
        async with js_peer(synapse, tmp_path, "alice") as alice:
            focus = [{"type": "livekit", "livekit_service_url": sfu.http_url}]
            rooms = [await room_with(fleet, alice) for _ in range(4)]
            for room in rooms[:2]:  # alice is in the first two rooms' calls
                await alice.call("rtc_join", room_id=room, foci=focus)
            for room in rooms:
                await alice.call("send_text", room_id=room, body="!join")
                await wait_until(lambda r=room: joined_by(alice, r), TIMEOUT, "the join")
            # by load (then the oldest): 0-0, 1-0, 1-1, 2-1
            assert [joined_by(alice, r) for r in rooms] == [one, two, one, two]
            mark = alice.mark()
            await second.stop(signal.SIGKILL)
            killed = time.monotonic()
            await wait_until(
                lambda: any(
                    e["event"] == "message"
                    and e["room_id"] == rooms[1]
                    and e["body"] == TAKEN_OVER_NOTICE
                    for e in alice.events[mark:]
                ),
                20.0,
                "the takeover",
            )
            print(f"the leader took the call over {time.monotonic() - killed:.1f} s after")
            sent = (await alice.call("send_text", room_id=rooms[1], body="!status"))["event_id"]
            (answer,) = await wait_until(lambda: replies_to(alice, sent), TIMEOUT, "the status")
            body = answer["body"]
            assert f"Call in {rooms[1]}: joined" in body
            assert "Fleet: 1 workers, leader " + one in body
            (line,) = [ln for ln in body.splitlines() if ln.startswith(f"  worker {one} ")]
            assert line.startswith(f"  worker {one} (leader, this one): 3/20 calls")
            assert all(room in line for room in rooms[:3]) and rooms[3] not in line
            assert not any(
                e["event"] == "message"
                and e["room_id"] == rooms[3]
                and e["body"] == TAKEN_OVER_NOTICE
                for e in alice.events[mark:]
            )
    finally:
        await fleet.stop()
