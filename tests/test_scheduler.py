"""The job store: persistence across a scheduler restart (SQLite), misfires, duplicates."""

from __future__ import annotations

import asyncio
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from bot.errors import ConfigError
from bot.schedule.scheduler import (
    DuplicateSchedule,
    JobInfo,
    JobScheduler,
    default_store_url,
    make_store,
)
from bot.schedule.when import Cron, Schedule, parse_schedule
from tests.peer import wait_until

ROOM = "!room:example.org"
USER = "@alice:example.org"
OWNER = "@bot:example.org"
UTC_ZONE = ZoneInfo("UTC")


class Runs:
    """A runner that notes what fired."""

    def __init__(self) -> None:
        self.plans: list[dict[str, Any]] = []

    async def fire(self, plan: dict[str, Any]) -> None:
        self.plans.append(plan)


def sched(text: str) -> Schedule:
    return parse_schedule(text, UTC_ZONE, datetime.now(UTC))


@pytest.fixture
def url(tmp_path: Path) -> str:
    return default_store_url(tmp_path / "data")


async def stopped(s: JobScheduler) -> None:
    s.shutdown()
    await asyncio.sleep(0.05)  # AsyncIOScheduler shuts down on the loop's next turn
    assert not s.running


async def move_run_time(url: str, job_id: str, when: datetime) -> None:
    """Pretend the bot was down: the stored job's next run is ``when`` (in the past)."""
    bare = AsyncIOScheduler(jobstores={"default": SQLAlchemyJobStore(url=url)})
    bare.start(paused=True)
    bare.modify_job(job_id, next_run_time=when)
    bare.shutdown(wait=False)
    await asyncio.sleep(0.05)


async def test_a_job_survives_a_restart_and_fires_once(url: str, tmp_path: Path) -> None:
    first, runs1 = JobScheduler(url, owner=OWNER), Runs()
    first.start(runs1)
    info = first.add(ROOM, USER, sched("in 2s for 1h record"))
    await stopped(first)

    # The store is a file private to the bot's user.
    db = tmp_path / "data" / "schedule.sqlite"
    assert stat.S_IMODE(db.stat().st_mode) == 0o600

    second, runs2 = JobScheduler(url, owner=OWNER), Runs()
    second.start(runs2)
    try:
        assert [(j.id, j.room_id, j.user_id, j.next_run) for j in second.jobs(ROOM)] == [
            (info.id, ROOM, USER, info.next_run)
        ]
        await wait_until(lambda: runs2.plans, 10, "the job to fire after the restart")
        (plan,) = runs2.plans
        assert plan["id"] == info.id and plan["room"] == ROOM and plan["user"] == USER
        assert plan["commands"] == ["record start"] and plan["duration_s"] == 3600
        assert runs1.plans == []
        assert second.jobs() == []  # a one-off is gone once it ran
    finally:
        await stopped(second)


async def test_recurring_jobs_are_listed_per_room_and_removed(url: str) -> None:
    s = JobScheduler(url, owner=OWNER)
    s.start(Runs())
    daily = s.add(ROOM, USER, sched("daily 09:00"))
    other = s.add("!other:example.org", USER, sched("mon,wed 14:30"))
    await stopped(s)

    again = JobScheduler(url, owner=OWNER)
    again.start(Runs())
    try:
        assert [j.id for j in again.jobs(ROOM)] == [daily.id]
        assert [j.description for j in again.jobs("!other:example.org")] == [other.description]
        nxt = again.jobs(ROOM)[0].next_run
        assert nxt is not None and (nxt.hour, nxt.minute) == (9, 0)
        assert again.remove(ROOM, other.id) is None  # not this room's
        removed = again.remove(ROOM, daily.id)
        assert removed is not None and removed.id == daily.id
        assert again.jobs(ROOM) == []
        assert [j.id for j in again.jobs()] == [other.id]
    finally:
        await stopped(again)


async def test_the_same_schedule_is_never_duplicated(url: str) -> None:
    s = JobScheduler(url, owner=OWNER)
    s.start(Runs())
    info = s.add(ROOM, USER, sched("daily 09:00 record"))
    with pytest.raises(DuplicateSchedule) as e:
        s.add(ROOM, "@bob:example.org", sched("daily 9:00 transcribe"))
    assert e.value.job_id == info.id
    await stopped(s)

    again = JobScheduler(url, owner=OWNER)
    again.start(Runs())
    try:
        with pytest.raises(DuplicateSchedule):
            again.add(ROOM, USER, sched("daily 09:00"))
        again.add("!other:example.org", USER, sched("daily 09:00"))  # another room: fine
        assert len(again.jobs()) == 2
    finally:
        await stopped(again)


async def test_a_run_missed_while_down_within_the_grace_is_made_late(url: str) -> None:
    first = JobScheduler(url, owner=OWNER, misfire_grace_s=300)
    first.start(Runs())
    info = first.add(ROOM, USER, sched("in 1h"))
    await stopped(first)
    await move_run_time(url, info.id, datetime.now(UTC) - timedelta(minutes=4))

    runs, missed = Runs(), []
    second = JobScheduler(url, owner=OWNER, misfire_grace_s=300)
    second.start(runs, lambda i, when: missed.append((i, when)))
    try:
        await wait_until(lambda: runs.plans, 10, "the late run")
        assert [p["id"] for p in runs.plans] == [info.id]
        assert missed == []
    finally:
        await stopped(second)


async def test_a_run_missed_beyond_the_grace_is_skipped_and_reported(url: str) -> None:
    # The job was stored with a long grace; the configured (shorter) one applies on restart.
    first = JobScheduler(url, owner=OWNER, misfire_grace_s=3600)
    first.start(Runs())
    info = first.add(ROOM, USER, sched("in 1h"))
    await stopped(first)
    due = datetime.now(UTC) - timedelta(minutes=10)
    await move_run_time(url, info.id, due)

    runs, missed = Runs(), []
    second = JobScheduler(url, owner=OWNER, misfire_grace_s=300)
    second.start(runs, lambda i, when: missed.append((i, when)))
    try:
        await wait_until(lambda: missed, 10, "the missed run to be reported")
        ((what, when),) = missed
        assert isinstance(what, JobInfo) and what.id == info.id and what.room_id == ROOM
        assert abs((when - due).total_seconds()) < 1
        assert runs.plans == []
        assert second.jobs() == []
    finally:
        await stopped(second)


async def test_several_missed_runs_of_a_recurring_job_run_once(url: str) -> None:
    every_minute = Schedule(Cron("*", "*", "*", "*", "*"), UTC_ZONE)  # bypasses the parser
    first = JobScheduler(url, owner=OWNER)
    first.start(Runs())
    info = first.add(ROOM, USER, every_minute)
    await stopped(first)
    await move_run_time(url, info.id, datetime.now(UTC) - timedelta(minutes=3, seconds=30))

    runs = Runs()
    second = JobScheduler(url, owner=OWNER, misfire_grace_s=300)
    second.start(runs)
    try:
        await wait_until(lambda: runs.plans, 10, "the coalesced run")
        await asyncio.sleep(0.3)
        assert len(runs.plans) == 1  # four missed minutes, one run
        (job,) = second.jobs()
        assert job.next_run is not None and job.next_run > datetime.now(UTC)
    finally:
        await stopped(second)


def test_a_bad_database_url_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"schedule\.job_store: cannot use this database URL"):
        make_store("nosuchdialect://x/y")
    assert make_store(default_store_url(tmp_path)) is not None  # no connection yet
    assert not (tmp_path / "schedule.sqlite").exists()
