"""The job store: APScheduler's asyncio scheduler over a persistent SQLAlchemy job store.

Jobs survive restarts (SQLite under ``bot.data_dir`` by default, any SQLAlchemy URL by
config). What is stored per job is plain data only, so it unpickles in any later version of
the bot: the callable is the text reference ``bot.schedule.scheduler:fire``, and its
arguments are the bot's user ID and a ``dict`` plan (room, scheduling user, commands,
duration). ``fire`` hands the plan to the runner registered for that bot user.

Misfires: a run missed (the bot was down) by at most ``misfire_grace`` seconds runs at
start-up; several missed runs of one job run once (coalesced); older misses are dropped and
reported to ``on_missed`` (the bot tells the room).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from apscheduler.events import EVENT_JOB_MISSED, JobExecutionEvent
from apscheduler.jobstores.base import ConflictingIdError, JobLookupError
from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from bot.errors import ConfigError
from bot.files import private_file
from bot.schedule.when import Schedule, job_id

log = logging.getLogger(__name__)

JOB_FUNC = "bot.schedule.scheduler:fire"
PLAN_VERSION = 1


class Runner(Protocol):
    async def fire(self, plan: dict[str, Any]) -> None: ...


#: The runner of each bot (by user ID) in this process; jobs find theirs through it.
_runners: dict[str, Runner] = {}


async def fire(owner: str, plan: dict[str, Any]) -> None:
    """What every stored job calls (referenced by text, so it must stay at this path)."""
    runner = _runners.get(owner)
    if runner is None:
        log.warning("scheduled job %s fired with no runner for %s", plan.get("id"), owner)
        return
    await runner.fire(plan)


class DuplicateSchedule(Exception):
    def __init__(self, job_id: str) -> None:
        super().__init__(job_id)
        self.job_id = job_id


@dataclass(frozen=True)
class JobInfo:
    id: str
    room_id: str
    user_id: str
    description: str
    next_run: datetime | None


MissedFn = Callable[[JobInfo, datetime], None]


def default_store_url(data_dir: Path) -> str:
    return f"sqlite:///{data_dir / 'schedule.sqlite'}"


def make_store(url: str) -> SQLAlchemyJobStore:
    """The job store for a URL (no connection yet); ConfigError if the URL or its driver is
    unusable, so ``callbot check-config`` reports it."""
    try:
        return SQLAlchemyJobStore(url=url)
    except Exception as e:  # sqlalchemy ArgumentError, NoSuchModuleError, a missing driver
        raise ConfigError([f"schedule.job_store: cannot use this database URL: {e}"]) from None


class JobScheduler:
    def __init__(
        self, url: str, *, owner: str, timezone: str = "UTC", misfire_grace_s: float = 300.0
    ) -> None:
        self.url = url
        self.owner = owner
        self.misfire_grace_s = misfire_grace_s
        self._store = make_store(url)
        self._scheduler = AsyncIOScheduler(
            jobstores={"default": self._store},
            job_defaults={
                "coalesce": True,
                "misfire_grace_time": self._grace(),
                "max_instances": 1,
            },
            timezone=timezone,
        )
        #: what each job is, kept in memory: a missed one-off job is gone from the store by
        #: the time its "missed" event arrives
        self._known: dict[str, JobInfo] = {}
        self._on_missed: MissedFn | None = None

    def _grace(self) -> int:
        return max(1, round(self.misfire_grace_s))

    @property
    def running(self) -> bool:
        return bool(self._scheduler.running)

    def start(self, runner: Runner, on_missed: MissedFn | None = None) -> None:
        """Load the stored jobs and start running them (on the running event loop)."""
        _private_sqlite(self.url)
        _runners[self.owner] = runner
        self._on_missed = on_missed
        self._scheduler.add_listener(self._missed, EVENT_JOB_MISSED)
        self._scheduler.start(paused=True)  # learn the jobs before any misfire is reported
        grace = self._grace()
        for job in self._scheduler.get_jobs():
            if job.misfire_grace_time != grace:  # each job stores its own: apply the config
                job.modify(misfire_grace_time=grace)
        for info in self.jobs():
            self._known[info.id] = info
        self._scheduler.resume()
        log.info("scheduler started with %d stored jobs", len(self._known))

    def shutdown(self) -> None:
        if self._scheduler.running:
            self._scheduler.shutdown(wait=False)
        if _runners.get(self.owner) is not None:
            _runners.pop(self.owner, None)

    def add(self, room_id: str, user_id: str, schedule: Schedule) -> JobInfo:
        """Store a job; DuplicateSchedule if the room already has this schedule."""
        jid = job_id(room_id, schedule)
        plan = {
            "v": PLAN_VERSION,
            "id": jid,
            "room": room_id,
            "user": user_id,
            "description": schedule.describe(),
            "tz": schedule.tz.key,
            "duration_s": schedule.duration_s,
            "commands": schedule.commands(),
        }
        try:
            job = self._scheduler.add_job(
                JOB_FUNC,
                trigger=schedule.trigger(),
                args=(self.owner, plan),
                id=jid,
                name=plan["description"],
                replace_existing=False,
            )
        except ConflictingIdError:
            raise DuplicateSchedule(jid) from None
        info = _info(job)
        self._known[jid] = info
        return info

    def jobs(self, room_id: str | None = None) -> list[JobInfo]:
        infos = [i for job in self._scheduler.get_jobs() if (i := _info(job)) is not None]
        infos = [i for i in infos if room_id is None or i.room_id == room_id]
        far = datetime.max.replace(tzinfo=None)
        return sorted(
            infos, key=lambda i: (i.next_run.replace(tzinfo=None) if i.next_run else far, i.id)
        )

    def remove(self, room_id: str, jid: str) -> JobInfo | None:
        """Remove a room's job; None if the room has no job with that ID."""
        job = self._scheduler.get_job(jid)
        info = _info(job) if job is not None else None
        if info is None or info.room_id != room_id:
            return None
        try:
            self._scheduler.remove_job(jid)
        except JobLookupError:  # it fired (a one-off) in between
            return None
        self._known.pop(jid, None)
        return info

    def _missed(self, event: JobExecutionEvent) -> None:
        info = self._known.get(event.job_id)
        log.warning("scheduled job %s missed its run at %s", event.job_id, event.scheduled_run_time)
        if info is not None and self._on_missed is not None:
            self._on_missed(info, event.scheduled_run_time)


def _info(job: Any) -> Any:
    args: tuple[Any, ...] = getattr(job, "args", ())
    plan = args[1] if len(args) == 2 and isinstance(args[1], dict) else None
    if plan is None or plan.get("v") != PLAN_VERSION:
        return None
    return JobInfo(
        id=job.id,
        room_id=plan["room"],
        user_id=plan["user"],
        description=plan["description"],
        next_run=getattr(job, "next_run_time", None),
    )


def _private_sqlite(url: str) -> None:
    """Create a SQLite file private to the bot's user before SQLAlchemy creates it."""
    prefix = "sqlite:///"
    if not url.startswith(prefix) or url == prefix or ":memory:" in url:
        return
    # SQLite gives its journal and WAL files the database file's mode.
    private_file(Path(url[len(prefix) :].split("?", 1)[0]))
