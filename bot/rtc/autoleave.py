"""Auto-leave: the bot leaves a call once no human is left in it.

"Human" here means any member whose user is not the bot's own account (so another bot in
the call counts as a participant). Two waits, both from config (``[rtc]``):

* ``auto_leave_grace``: after the last participant leaves, wait this long before leaving, so
  someone whose connection drops and comes back does not end the bot's part in the call.
* ``wait_for_participants``: a call nobody else has been in since the bot joined (the bot
  started it on a schedule, or someone typed ``!join`` and has not joined yet) is left this
  long after joining, if still empty.

It applies to every call the bot is in, however it joined. Someone rejoining during a wait
cancels it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from bot.log import context
from bot.rtc.manager import MatrixRTCSessionManager
from bot.rtc.session import JoinStateChanged, MatrixRTCSession, MembershipsChanged

log = logging.getLogger(__name__)

LEAVE_TIMEOUT_S = 5.0

PostFn = Callable[[str, str], Awaitable[Any]]


@dataclass(frozen=True)
class AutoLeavePolicy:
    grace_s: float = 30.0
    wait_for_participants_s: float = 600.0


@dataclass
class _Room:
    joined_at: float
    seen_someone: bool = False
    timer: asyncio.TimerHandle | None = None


class AutoLeave:
    def __init__(
        self,
        rtc: MatrixRTCSessionManager,
        policy: AutoLeavePolicy,
        post: PostFn,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.policy = policy
        self._post = post
        self._clock = clock
        self._rooms: dict[str, _Room] = {}
        #: rooms where someone else was in the call while the bot was still joining it
        self._seen_while_joining: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        rtc.session_created.connect(self.watch)

    def watch(self, session: MatrixRTCSession) -> None:
        def on_join_state(change: JoinStateChanged) -> None:
            if change.joined:
                seen = session.room_id in self._seen_while_joining
                self._seen_while_joining.discard(session.room_id)
                self._rooms[session.room_id] = _Room(joined_at=self._clock(), seen_someone=seen)
                self.check(session)
            else:
                self._forget(session.room_id)

        def on_memberships(change: MembershipsChanged) -> None:
            # The join signal comes only after the membership is sent and its delayed leave
            # restarted; someone who was in the call then and left before it must still count
            # as "came and left" (else the bot waits wait_for_participants, not the grace).
            room_id = session.room_id
            if room_id not in self._rooms:
                me = session.client.user_id
                if not (session.joining or session.is_joined):
                    self._seen_while_joining.discard(room_id)  # a join that failed
                elif any(m.user_id != me for m in (*change.old, *change.new)):
                    self._seen_while_joining.add(room_id)
            self.check(session)

        session.join_state_changed.connect(on_join_state)
        session.memberships_changed.connect(on_memberships)

    def others(self, session: MatrixRTCSession) -> list[str]:
        """Users other than the bot in the call."""
        me = session.client.user_id
        return sorted({m.user_id for m in session.memberships if m.user_id != me})

    def check(self, session: MatrixRTCSession) -> None:
        """Start, keep or cancel the wait, from the current member list."""
        room = self._rooms.get(session.room_id)
        if room is None or not session.is_joined:
            return
        if self.others(session):
            room.seen_someone = True
            if room.timer is not None:
                room.timer.cancel()
                room.timer = None
            return
        if room.timer is not None:
            return  # already counting down
        if room.seen_someone:
            delay = self.policy.grace_s
        else:
            waited = self._clock() - room.joined_at
            delay = max(0.0, self.policy.wait_for_participants_s - waited)
        room.timer = asyncio.get_running_loop().call_later(delay, self._spawn_leave, session)

    def _spawn_leave(self, session: MatrixRTCSession) -> None:
        task = asyncio.create_task(self._leave(session))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _leave(self, session: MatrixRTCSession) -> None:
        room = self._rooms.get(session.room_id)
        if room is None or not session.is_joined or self.others(session):
            return
        room.timer = None
        ctx = context(room=session.room_id)
        if room.seen_someone:
            why = "Everyone has left the call, so I left too."
            log.info("leaving the call: everyone else left", extra=ctx)
        else:
            wait = _minutes(self.policy.wait_for_participants_s)
            why = f"Nobody joined the call within {wait}, so I left."
            log.info("leaving the call: nobody joined", extra=ctx)
        try:
            await session.leave(LEAVE_TIMEOUT_S)
            await self._post(session.room_id, why)
        except Exception:
            log.exception("auto-leave failed", extra=ctx)

    def _forget(self, room_id: str) -> None:
        self._seen_while_joining.discard(room_id)
        room = self._rooms.pop(room_id, None)
        if room is not None and room.timer is not None:
            room.timer.cancel()

    async def stop(self) -> None:
        for room_id in list(self._rooms):
            self._forget(room_id)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


def _minutes(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:g} s"
    return f"{seconds / 60:g} min"
