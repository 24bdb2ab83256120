"""bot.fleet.db against a real PostgreSQL: liveness, the leader lock, assignments, opt-outs."""

from __future__ import annotations

import asyncio
from pathlib import Path

from bot.fleet.consent import FleetOptOuts
from bot.fleet.db import FleetDb
from tests.postgres import Postgres

ACCOUNT = "@bot:example.org"


async def _worker(pg: Postgres, device: str, account: str = ACCOUNT) -> FleetDb:
    db = FleetDb(pg.url, account)
    await db.connect()
    await db.register(device, 2, "")
    return db


async def test_the_lock_goes_to_another_worker_when_the_leaders_session_ends(
    pg: Postgres,
) -> None:
    a, b = await _worker(pg, "A"), await _worker(pg, "B")
    other = await _worker(pg, "X", "@other:example.org")
    try:
        assert await a.try_lead() and await a.try_lead()  # held: still ours
        assert not await b.try_lead()
        assert await other.try_lead()  # another account's fleet has its own leader
        assert await b.leader() == "A" and await other.leader() == "X"
        assert [w.device_id for w in await b.alive()] == ["A", "B"]
        await a.assign("!r:x", "A", "20260101T000000Z")
        assert await b.holder("!r:x") == "A"
        await a.close()  # as a SIGKILL does: the session ends, the server frees the lock
        for _ in range(100):  # the backend exits a moment after the connection closes
            if len(await b.alive()) == 1:
                break
            await asyncio.sleep(0.05)
        assert [w.device_id for w in await b.alive()] == ["B"]
        assert await b.holder("!r:x") is None  # held by a dead worker: nobody answers for it
        assert await b.try_lead() and await b.leader() == "B"
        await b.forget_dead()  # A still has a call: kept until it is taken over
        await b.assign("!r:x", "B", "20260101T000000Z", resumed=True)
        await b.forget_dead()
        (call,) = await b.assignments()
        assert (call.worker, call.resumed) == ("B", True)
        rows = await b.query(
            "SELECT device_id FROM callbot_fleet_workers WHERE account = %s", (ACCOUNT,)
        )
        assert rows == [{"device_id": "B"}]
        # a silent worker's session is ended by the server after 10 s (a partition)
        assert (await b.query("SHOW idle_session_timeout"))[0]["idle_session_timeout"] == "10s"
    finally:
        for db in (a, b, other):
            await db.close()


async def test_opt_outs_are_shared_by_the_workers(pg: Postgres, tmp_path: Path) -> None:
    earlier = tmp_path / "optouts.json"
    earlier.write_text('{"rooms": {"!r:x": ["@carol:x"]}}')
    a, b = await _worker(pg, "A"), await _worker(pg, "B")
    try:
        on_a, on_b = FleetOptOuts(a, earlier), FleetOptOuts(b, tmp_path / "none.json")
        await on_a.load()  # a single bot's opt-outs join the fleet's
        await on_b.load()
        assert on_b.opted_out("!r:x", "@carol:x")
        assert await on_a.set("!r:x", "@alice:x", True)
        assert on_a.opted_out("!r:x", "@alice:x")
        on_b.refresh(await b.optouts())  # what a tick does
        assert on_b.opted_out("!r:x", "@alice:x") and not on_b.opted_out("!s:x", "@alice:x")
        assert await on_b.set("!r:x", "@alice:x", False)
        on_a.refresh(await a.optouts())
        assert not on_a.opted_out("!r:x", "@alice:x")
    finally:
        await a.close()
        await b.close()


async def test_room_time_zones_are_the_fleets(pg: Postgres, tmp_path: Path) -> None:
    from bot.fleet.timezones import FleetRoomTimezones

    earlier = tmp_path / "room_timezones.json"
    earlier.write_text('{"rooms": {"!r:x": "Europe/Berlin", "!s:x": "Asia/Tokyo"}}')
    a, b = await _worker(pg, "A"), await _worker(pg, "B")
    try:
        await b.set_room_zone("!s:x", "America/Chicago")  # set in the fleet already: kept
        on_a = FleetRoomTimezones(a, earlier)
        await on_a.load()
        assert on_a.name("!r:x") == "Europe/Berlin" and on_a.name("!s:x") == "America/Chicago"
        on_a.set("!t:x", "Africa/Lagos")  # !timezone on the leader
        assert on_a.name("!t:x") == "Africa/Lagos"
        await asyncio.gather(*on_a._writes)
        await a.close()  # the leader dies; the next one reads the zones as it takes the lead
        on_b = FleetRoomTimezones(b, tmp_path / "none.json")
        await on_b.load()
        assert on_b.name("!t:x") == "Africa/Lagos" and on_b.name("!r:x") == "Europe/Berlin"
        assert on_b.name("!u:x") == "UTC"
    finally:
        await a.close()
        await b.close()
