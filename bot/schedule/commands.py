"""``!schedule``, ``!schedules``, ``!unschedule`` and ``!timezone``.

Permissions sit beside each handler. Scheduling also needs the caller to be allowed to run,
in this room, every command the job will run for them (``!join``, and ``!record``,
``!transcribe`` or ``!play`` when asked): the job runs them as the caller, and checks again
when it fires.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from bot.commands.permissions import UserPatterns, refusal
from bot.commands.registry import Arg, CommandContext, CommandRegistry, command
from bot.errors import CommandError, PermissionDenied, UsageError
from bot.log import context
from bot.schedule.scheduler import DuplicateSchedule, JobInfo, JobScheduler
from bot.schedule.timezones import RoomTimezones, find_zone
from bot.schedule.when import accepted_forms, parse_schedule

log = logging.getLogger(__name__)

#: A room holds at most this many schedules (the store stays small; a loop cannot fill it).
MAX_JOBS_PER_ROOM = 20
#: Which plugin brings each command a schedule may run.
_PLUGIN_OF = {"record": "recorder", "transcribe": "transcriber", "play": "music"}

PowerLevelFn = Callable[[str, str], Awaitable[int]]


def _now() -> datetime:
    return datetime.fromtimestamp(time.time(), UTC)


class ScheduleCommands:
    def __init__(
        self,
        jobs: JobScheduler,
        timezones: RoomTimezones,
        registry: CommandRegistry,
        allowed: UserPatterns,
        power_level_of: PowerLevelFn,
        clock: Callable[[], datetime] = _now,
    ) -> None:
        self.jobs = jobs
        self.timezones = timezones
        self.registry = registry
        self.allowed = allowed
        self._power_level_of = power_level_of
        self._clock = clock

    @command(
        help="Schedule the bot into this room's call: <when> [for <duration>] [record] "
        "[transcribe] [play <source>] (type it alone for the forms)",
        args=[Arg("when", required=False, rest=True)],
    )
    async def schedule(self, ctx: CommandContext, when: str | None = None) -> None:
        if not when:
            await ctx.reply(accepted_forms(ctx.prefix))
            return
        tz = self.timezones.get(ctx.room_id)
        sched = parse_schedule(when, tz, self._clock(), ctx.prefix)
        level = await self._power_level_of(ctx.room_id, ctx.sender)
        for line in ["join", *sched.commands()]:
            name = line.split(" ", 1)[0]
            cmd = self.registry.get(name)
            if cmd is None:
                raise UsageError(
                    f"I cannot schedule {name}: {ctx.prefix}{name} is not available here "
                    f"(the {_PLUGIN_OF.get(name, name)} plugin is not enabled in my config)."
                )
            why = refusal(cmd, ctx.sender, level, self.allowed)
            if why:
                raise PermissionDenied(
                    f"You may not schedule {ctx.prefix}{name}: {why}, and the scheduled call "
                    "runs it as you."
                )
        if len(self.jobs.jobs(ctx.room_id)) >= MAX_JOBS_PER_ROOM:
            raise CommandError(
                f"This room has {MAX_JOBS_PER_ROOM} schedules already; remove one with "
                f"{ctx.prefix}unschedule <id> first."
            )
        try:
            info = self.jobs.add(ctx.room_id, ctx.sender, sched)
        except DuplicateSchedule as e:
            raise CommandError(
                f"This room already has a call scheduled at that time ({e.job_id}). "
                f"To change it: {ctx.prefix}unschedule {e.job_id}, then schedule again."
            ) from None
        log.info(
            "scheduled a call: %s (%s)",
            info.id,
            info.description,
            extra=context(room=ctx.room_id, user=ctx.sender),
        )
        await ctx.reply(
            f"Scheduled {info.id}: {info.description}. Next: {_when(info, tz)}. "
            f"Remove it with {ctx.prefix}unschedule {info.id}."
        )

    @command(help="List the calls scheduled in this room", allowed_users_only=False)
    async def schedules(self, ctx: CommandContext) -> None:
        infos = self.jobs.jobs(ctx.room_id)
        tz = self.timezones.get(ctx.room_id)
        if not infos:
            await ctx.reply(
                f"No calls are scheduled in this room. Type {ctx.prefix}schedule for how to "
                "schedule one."
            )
            return
        lines = [
            f"{i.id}: {i.description} — next {_when(i, tz)} — set by {i.user_id}" for i in infos
        ]
        await ctx.reply(f"Scheduled calls ({tz.key} time):\n" + "\n".join(lines))

    @command(help="Remove a scheduled call of this room", args=[Arg("id")])
    async def unschedule(self, ctx: CommandContext, id: str) -> None:
        info = self.jobs.remove(ctx.room_id, id.strip().lower())
        if info is None:
            raise CommandError(
                f"This room has no schedule {id[:16]!r}; {ctx.prefix}schedules lists them."
            )
        await ctx.reply(f"Removed {info.id} ({info.description}).")

    @command(
        help="Show this room's time zone for schedules, or set it (an IANA name: Europe/Berlin)",
        args=[Arg("zone", required=False)],
    )
    async def timezone(self, ctx: CommandContext, zone: str | None = None) -> None:
        if zone is None:
            await ctx.reply(
                f"Times in this room are read in {self.timezones.name(ctx.room_id)}. "
                f"Change it with {ctx.prefix}timezone <Area/City>, like Europe/Berlin."
            )
            return
        if find_zone(zone) is None:
            raise UsageError(
                f"I do not know the time zone {zone[:40]!r}; use an IANA name like "
                "Europe/Berlin, America/New_York or UTC."
            )
        self.timezones.set(ctx.room_id, zone)
        await ctx.reply(
            f"Times in this room are now read in {zone}. Calls scheduled before keep their "
            "own time zone."
        )


def _when(info: JobInfo, tz: ZoneInfo) -> str:
    if info.next_run is None:
        return "never (paused)"
    return f"{info.next_run.astimezone(tz):%a %Y-%m-%d %H:%M %Z}"
