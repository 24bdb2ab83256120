"""One worker of a fleet: leadership, and the calls the database assigns to it.

Every second (and at once on a ``NOTIFY``) a worker

1. tries the leader lock, unless it holds it; on winning it starts the schedule (the
   APScheduler job store in PostgreSQL is only ever run by the leader's scheduler);
2. reports the calls it is in (for ``!status``);
3. as leader: gives the calls of dead workers to live ones (the same folder, ``resumed``, so
   the recorder and transcriber continue it as a new part) or drops them if nobody else is
   left in the call, and forgets dead workers;
4. joins the calls assigned to it, leaves those no longer assigned to it, and runs the
   scheduled plans handed to it.

When one of its calls ends for it (auto-leave, ``!leave``, a failed join), the worker deletes
its assignment.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from bot.fleet import FleetLost, assignments
from bot.fleet.consent import FleetOptOuts
from bot.fleet.db import Assignment, FleetDb, Worker
from bot.fleet.timezones import FleetRoomTimezones
from bot.log import context
from bot.matrix.rest import MatrixHttpError
from bot.rtc.focus import RtcError
from bot.rtc.manager import MatrixRTCSessionManager
from bot.rtc.resume import FOLDER_TIME, CallFolder
from bot.rtc.session import JoinStateChanged

log = logging.getLogger(__name__)

TICK_S = 1.0
TAKEN_OVER_NOTICE = "The bot worker in this call stopped; another one took over the call."

PostFn = Callable[[str, str], Awaitable[Any]]
FireFn = Callable[[dict[str, Any]], Awaitable[None]]


@dataclass
class Snapshot:
    """What the last tick read, for ``!status`` and /metrics (no query when asked)."""

    workers: list[Worker] = field(default_factory=list)
    assignments: list[Assignment] = field(default_factory=list)
    leader: str | None = None


class NoFreeWorker(Exception):
    """Every live worker is in as many calls as its rtc.max_calls allows."""


class FleetWorker:
    def __init__(
        self,
        db: FleetDb,
        rtc: MatrixRTCSessionManager,
        *,
        max_calls: int,
        metrics_address: str,
        post: PostFn,
    ) -> None:
        self.db = db
        self.rtc = rtc
        self.max_calls = max_calls
        self.metrics_address = metrics_address
        self._post = post
        self.device_id = ""
        self.is_leader = False
        self.snapshot = Snapshot()
        #: called once this worker becomes the leader (starts the schedule)
        self.on_lead: Callable[[], None] | None = None
        #: runs a scheduled plan here (ScheduledCalls.fire)
        self.fire_here: FireFn | None = None
        #: the opt-outs kept in the database (bot.fleet.consent), refreshed every tick
        self.optouts: FleetOptOuts | None = None
        #: the rooms' time zones there (bot.fleet.timezones), read on taking the lead
        self.timezones: FleetRoomTimezones | None = None
        #: rooms whose assignment this worker is working on (joining, joined), and how
        self._held: dict[str, Assignment] = {}
        self._fired: set[str] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._watched: set[str] = set()
        self._loop: asyncio.Task[None] | None = None
        self._stopping = False
        #: the leader's choices (joins, takeovers) one at a time: each reads the loads that
        #: the one before it wrote, so two joins at once never both pick one worker
        self._choosing = asyncio.Lock()

    @property
    def task(self) -> asyncio.Task[None] | None:
        """The worker's loop: it ends (with FleetLost) when the database session does."""
        return self._loop

    async def connect(self) -> None:
        """Before logging in: a worker that cannot reach the database makes no device."""
        await self.db.connect()

    async def start(self, device_id: str) -> None:
        self.device_id = device_id
        await self.db.register(device_id, self.max_calls, self.metrics_address)
        if self.optouts is not None:
            await self.optouts.load()
        await self.tick()
        self._loop = asyncio.create_task(self._run(), name="fleet")
        log.info(
            "fleet worker %s started (%s)", device_id, "leader" if self.is_leader else "not leader"
        )

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.db.changed.wait(), TICK_S)
            self.db.changed.clear()
            await self.tick()

    def wake(self) -> None:
        self.db.changed.set()

    async def stop(self) -> None:
        """Leaving: the calls held here end for the fleet (SIGTERM leaves calls)."""
        self._stopping = True
        if self._loop is not None:
            self._loop.cancel()
            await asyncio.gather(self._loop, return_exceptions=True)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        with contextlib.suppress(FleetLost):
            for room in list(self._held):
                await self.db.unassign(room, self.device_id)
        await self.db.close()

    # ------------------------------------------------------------------ the tick

    async def tick(self) -> None:
        if not self.is_leader and await self.db.try_lead():
            self.is_leader = True
            log.info("this worker (%s) is now the fleet's leader", self.device_id)
            if self.timezones is not None:
                await self.timezones.load()
            if self.on_lead is not None:
                self.on_lead()
        joined = [s.room_id for s in self.rtc.joined_sessions()]
        await self.db.report(self.device_id, joined)
        workers = await self.db.alive()
        current = await self.db.assignments()
        if self.is_leader:
            async with self._choosing:
                current = await self._take_over(workers, await self.db.assignments())
            await self.db.forget_dead()
        self.snapshot = Snapshot(workers, current, await self.db.leader())
        if self.optouts is not None:
            self.optouts.refresh(await self.db.optouts())
        self._apply([a for a in current if a.worker == self.device_id])

    async def _take_over(
        self, workers: list[Worker], current: list[Assignment]
    ) -> list[Assignment]:
        """The leader gives each dead worker's call to a live one, in the same folder."""
        for orphan in assignments.orphaned(workers, current):
            ctx = context(room=orphan.room_id)
            if not self._others_in_call(orphan.room_id):
                log.info("a dead worker's call has ended; dropping it", extra=ctx)
                await self.db.unassign(orphan.room_id, orphan.worker)
                continue
            target = assignments.choose(workers, [a for a in current if a is not orphan])
            if target is None:
                log.warning("no worker is free to take over a dead worker's call", extra=ctx)
                continue
            log.info(
                "worker %s is gone: its call goes to %s", orphan.worker, target.device_id, extra=ctx
            )
            await self.db.assign(orphan.room_id, target.device_id, orphan.folder, resumed=True)
        return await self.db.assignments()

    def _others_in_call(self, room_id: str) -> bool:
        session = self.rtc.existing_session(room_id)
        me = self.rtc.matrix.user_id
        return session is not None and any(m.user_id != me for m in session.memberships)

    def _apply(self, mine: list[Assignment]) -> None:
        assigned = {a.room_id: a for a in mine}
        for room in list(self._held):
            if room not in assigned:  # taken away (or dropped): leave
                del self._held[room]
                session = self.rtc.existing_session(room)
                if session is not None and (session.is_joined or session.joining):
                    log.info(
                        "this call is no longer assigned to me; leaving", extra=context(room=room)
                    )
                    self._spawn(session.leave(5.0))
        for room, a in assigned.items():
            fire_id = (a.plan or {}).get("fire_id")
            if isinstance(fire_id, str) and fire_id not in self._fired and self.fire_here:
                self._fired.add(fire_id)
                self._held[room] = a
                self._watch(room)
                self._spawn(self._fire(a))
            elif room not in self._held:
                self._held[room] = a
                self._watch(room)
                self._spawn(self._join(a))

    # ------------------------------------------------------------------ joining

    def folder_for(self, room_id: str) -> CallFolder:
        """The folder of a call this worker holds: the assignment's (resumed after a
        takeover, so the plugins continue it)."""
        a = self._held.get(room_id)
        if a is None:
            return CallFolder(time.strftime(FOLDER_TIME, time.gmtime()))
        return CallFolder(a.folder, resumed=a.resumed)

    async def _join(self, a: Assignment) -> None:
        session = self.rtc.get_room_session(a.room_id)
        ctx = context(room=a.room_id)
        if session.is_joined or session.joining:
            return
        me = self.rtc.matrix.user_id
        others = sum(m.user_id != me for m in session.memberships)
        try:
            await session.join()
        except (RtcError, MatrixHttpError) as e:
            log.warning("could not join an assigned call: %s", e, extra=ctx)
            await self._say(a.room_id, f"I could not join the call. {e}")
            await self._give_up(a.room_id)
            return
        log.info("joined the call assigned to this worker", extra=ctx)
        if a.resumed:
            await self._say(a.room_id, TAKEN_OVER_NOTICE)
        else:
            started = "Joined" if others else "Started"
            await self._say(
                a.room_id, f"{started} the call (worker {self.device_id}; {others} other members)."
            )

    async def _fire(self, a: Assignment) -> None:
        assert self.fire_here is not None and a.plan is not None
        await self.fire_here(a.plan)
        session = self.rtc.existing_session(a.room_id)
        if session is None or not (session.is_joined or session.joining):
            await self._give_up(a.room_id)

    async def _give_up(self, room_id: str) -> None:
        if self._held.pop(room_id, None) is not None and not self._stopping:
            await self.db.unassign(room_id, self.device_id)

    def _watch(self, room_id: str) -> None:
        if room_id in self._watched:
            return
        self._watched.add(room_id)
        session = self.rtc.get_room_session(room_id)

        def on_join_state(change: JoinStateChanged) -> None:
            if not change.joined and room_id in self._held and not self._stopping:
                # the call ended for this worker (auto-leave, !leave): not to be taken over
                self._spawn(self._give_up(room_id))

        session.join_state_changed.connect(on_join_state)

    # ------------------------------------------------------------------ the leader's side

    async def assign(self, room_id: str, plan: dict[str, Any] | None = None) -> Worker:
        """(Leader) the room's call goes to the least loaded worker, or to the one already
        holding it; NoFreeWorker if all are full."""
        async with self._choosing:
            return await self._assign(room_id, plan)

    async def _assign(self, room_id: str, plan: dict[str, Any] | None) -> Worker:
        workers = await self.db.alive()
        current = await self.db.assignments()
        held = next((a for a in current if a.room_id == room_id), None)
        alive = {w.device_id: w for w in workers}
        if held is not None and held.worker in alive:
            target: Worker | None = alive[held.worker]
            folder = held.folder
        else:
            target = assignments.choose(workers, current)
            folder = time.strftime(FOLDER_TIME, time.gmtime())
        if target is None:
            raise NoFreeWorker(
                f"All {len(workers)} bot workers are in as many calls as they take "
                "(rtc.max_calls). Try again when a call has ended."
            )
        if plan is not None:
            plan = {**plan, "fire_id": uuid.uuid4().hex}
        await self.db.assign(room_id, target.device_id, folder, plan)
        self.wake()
        return target

    async def fire(self, plan: dict[str, Any]) -> None:
        """(Leader) what a scheduled job does in a fleet: hand it to a worker."""
        try:
            worker = await self.assign(plan["room"], plan)
        except NoFreeWorker as e:
            await self._say(plan["room"], f"Scheduled call {plan.get('id')}: {e}")
            return
        log.info("scheduled call %s goes to worker %s", plan.get("id"), worker.device_id)

    async def answers(self, room_id: str, command: str, leader_only: frozenset[str]) -> bool:
        """Whether this worker answers a command: the room's call holder does, for calls
        it holds; the leader answers the rest (and the schedule's commands)."""
        if command in leader_only:
            return self.is_leader
        holder = await self.db.holder(room_id)
        if holder is not None:
            return holder == self.device_id
        return self.is_leader

    # ------------------------------------------------------------------ status

    def status_lines(self) -> list[str]:
        snap = self.snapshot
        per_worker: dict[str, list[str]] = {}
        for a in snap.assignments:
            per_worker.setdefault(a.worker, []).append(a.room_id)
        lines = [f"Fleet: {len(snap.workers)} workers, leader {snap.leader or 'none'}"]
        for w in snap.workers:
            rooms = per_worker.get(w.device_id, [])
            marks = [
                m
                for m, on in (
                    ("leader", w.device_id == snap.leader),
                    ("this one", w.device_id == self.device_id),
                )
                if on
            ]
            head = f"  worker {w.device_id}{' (' + ', '.join(marks) + ')' if marks else ''}"
            lines.append(
                f"{head}: {len(rooms)}/{w.max_calls} calls ({len(rooms) / w.max_calls:.0%} load)"
                + (f": {', '.join(rooms)}" if rooms else "")
            )
        return lines

    # ------------------------------------------------------------------ helpers

    async def _say(self, room_id: str, text: str) -> None:
        try:
            await self._post(room_id, text)
        except Exception:
            log.exception("could not post to the room", extra=context(room=room_id))

    def _spawn(self, coro: Awaitable[Any]) -> None:
        async def run() -> None:
            try:
                await coro
            except FleetLost:
                raise
            except Exception:
                log.exception("a fleet task failed")

        task = asyncio.create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
