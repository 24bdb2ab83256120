"""What a scheduled job does when it fires.

It joins the room's call (or starts it: the session sends the call notification when the bot
is the first member), then runs the requested commands (``record start``, ``transcribe
start``, ``play <source>``) through the command registry *as the user who scheduled them*,
with that user's permissions checked again now (they may have lost them since), and leaves
after the duration. Auto-leave (``bot.rtc.autoleave``) may end it earlier. Every outcome is
said in the room, since nobody typed a command to get a reply.
"""

from __future__ import annotations

import asyncio
import logging
import shlex
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

from bot.commands.executor import Invocation, Refused, execute
from bot.commands.permissions import UserPatterns, refusal
from bot.commands.registry import CommandRegistry
from bot.errors import CommandError
from bot.log import context
from bot.matrix.rest import MatrixHttpError
from bot.rtc.capacity import calls
from bot.rtc.focus import RtcError
from bot.rtc.manager import MatrixRTCSessionManager
from bot.rtc.session import JoinStateChanged, MatrixRTCSession
from bot.schedule.scheduler import JobInfo
from bot.schedule.when import format_duration

log = logging.getLogger(__name__)

LEAVE_TIMEOUT_S = 5.0
#: How long to wait for the call's media (and so its plugins) before running the commands.
MEDIA_READY_TIMEOUT_S = 30.0

PostFn = Callable[[str, str, str | None], Awaitable[Any]]
PowerLevelFn = Callable[[str, str], Awaitable[int]]
ReadyFn = Callable[[str, float], Awaitable[bool]]


class ScheduledCalls:
    def __init__(
        self,
        *,
        rtc: MatrixRTCSessionManager,
        registry: CommandRegistry,
        allowed: UserPatterns,
        prefix: str,
        power_level_of: PowerLevelFn,
        post: PostFn,
        joined_rooms: Callable[[], list[str]],
        media_ready: ReadyFn,
    ) -> None:
        self.rtc = rtc
        self.registry = registry
        self.allowed = allowed
        self.prefix = prefix
        self._power_level_of = power_level_of
        self._post = post
        self._joined_rooms = joined_rooms
        self._media_ready = media_ready
        #: the pending "leave after the duration" per room
        self._leaves: dict[str, asyncio.Task[None]] = {}
        self._watched: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def fire(self, plan: dict[str, Any]) -> None:
        room, user, jid = plan["room"], plan["user"], plan["id"]
        ctx = context(room=room, user=user)
        if room not in self._joined_rooms():
            log.warning("scheduled call %s: I am no longer in the room", jid, extra=ctx)
            return
        log.info("scheduled call %s fired", jid, extra=ctx)
        level = await self._power_level_of(room, user)
        join = self.registry.get("join")
        why = refusal(join, user, level, self.allowed) if join is not None else None
        if why:
            await self._say(
                room, f"Scheduled call {jid} skipped: {user} may no longer start calls here; {why}."
            )
            return
        session = self.rtc.get_room_session(room)
        started = False
        if not session.is_joined:
            started = not session.memberships

            async def queued(position: int) -> None:
                slots = self.rtc.slots
                await self._say(
                    room,
                    f"Scheduled call {jid}: I am in {calls(slots.in_use)}, the most I take at "
                    f"once (rtc.max_calls = {slots.max_calls}); I will join this one when one "
                    f"of them ends ({position} in line).",
                )

            try:
                await session.join(on_queued=queued)
            except (RtcError, MatrixHttpError) as e:
                await self._say(room, f"Scheduled call {jid}: I could not join the call. {e}")
                return
        duration = plan.get("duration_s")
        until = (
            f"I will leave after {format_duration(duration)}, or once everyone has left."
            if duration
            else "I will leave once everyone has left."
        )
        await self._say(
            room,
            f"Scheduled call {jid} ({plan['description']}; set by {user}): "
            f"{'started' if started else 'joined'} the call. {until}",
        )
        if duration:
            self._leave_after(session, float(duration), jid)
        commands: list[str] = plan.get("commands", [])
        if commands and not await self._media_ready(room, MEDIA_READY_TIMEOUT_S):
            log.warning("scheduled call %s: the call's media is not ready", jid, extra=ctx)
        for line in commands:
            await self.run_as(room, user, level, line, jid)

    async def run_as(self, room: str, user: str, level: int, line: str, jid: str) -> None:
        """Run one command line in ``room`` as ``user`` (who has ``level`` there)."""
        name, _, argtext = line.partition(" ")
        shown = f"{self.prefix}{line}"
        cmd = self.registry.get(name)
        if cmd is None:
            await self._say(room, f"Scheduled call {jid}: {shown} is not available here (skipped).")
            return

        async def reply(text: str, html: str | None = None) -> str:
            return await self._post(room, text, html)

        if len(cmd.args) == 1 and cmd.args[0].rest:  # one free-text argument: keep it as is
            argtext = shlex.quote(argtext)
        try:
            await execute(
                cmd, argtext, Invocation(room, user, level, self.prefix, reply), self.allowed
            )
        except Refused as e:
            await self._say(
                room,
                f"Scheduled call {jid}: skipped {shown}: {user} may no longer run it; {e.why}.",
            )
        except CommandError as e:
            await self._say(room, f"Scheduled call {jid}: {shown}: {e}")
        except Exception:
            log.exception("scheduled %s failed", shown, extra=context(room=room, user=user))
            await self._say(room, f"Scheduled call {jid}: {shown} failed with an internal error.")

    def _leave_after(self, session: MatrixRTCSession, duration_s: float, jid: str) -> None:
        room = session.room_id
        old = self._leaves.pop(room, None)
        if old is not None:
            old.cancel()
        if room not in self._watched:  # leaving by any other way cancels the timer
            self._watched.add(room)

            def on_join_state(change: JoinStateChanged) -> None:
                task = self._leaves.get(room)
                if not change.joined and task is not None and task is not asyncio.current_task():
                    self._leaves.pop(room, None)
                    task.cancel()

            session.join_state_changed.connect(on_join_state)

        async def leave_later() -> None:
            await asyncio.sleep(duration_s)
            if not session.is_joined:
                return
            log.info("scheduled call %s: the duration is over", jid, extra=context(room=room))
            await session.leave(LEAVE_TIMEOUT_S)
            self._leaves.pop(room, None)
            await self._say(
                room, f"Scheduled call {jid} ended after {format_duration(duration_s)}; I left."
            )

        task = asyncio.create_task(leave_later())
        self._leaves[room] = task
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def missed(self, info: JobInfo, when: datetime) -> None:
        """A run missed while the bot was down, beyond the misfire grace: tell the room."""
        text = (
            f"I missed the scheduled call {info.id} ({info.description}) due at "
            f"{when:%Y-%m-%d %H:%M %Z}: I was not running then."
        )
        if not info.description.startswith("once "):
            text += " The schedule stays for the next runs."
        task = asyncio.create_task(self._say(info.room_id, text))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _say(self, room: str, text: str) -> None:
        try:
            await self._post(room, text, None)
        except Exception:
            log.exception("could not post to the room", extra=context(room=room))

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._leaves.clear()
