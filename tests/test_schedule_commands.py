"""!schedule, !schedules, !unschedule, !timezone (units: a real registry and job store, a
stand-in for the room)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from bot.commands.permissions import UserPatterns
from bot.commands.registry import Arg, CommandContext, CommandRegistry, command
from bot.errors import CommandError, PermissionDenied, UsageError
from bot.schedule import commands as commands_module
from bot.schedule.commands import ScheduleCommands
from bot.schedule.scheduler import JobScheduler, default_store_url
from bot.schedule.timezones import RoomTimezones

ROOM = "!room:example.org"
#: a day a month ahead, for one-off schedules (the job store runs on the real clock)
DAY = (datetime.now(UTC) + timedelta(days=30)).date()


def shown(tz: str) -> str:
    """How the bot shows 09:00 on DAY in a zone."""
    at = datetime(DAY.year, DAY.month, DAY.day, 9, tzinfo=ZoneInfo(tz))
    return f"{at:%a %Y-%m-%d %H:%M %Z}"


ALICE = "@alice:example.org"


class Calls:
    @command(help="Join")
    async def join(self, ctx: CommandContext) -> None: ...


class Recorder:
    @command(help="Record", args=[Arg("action")], power_level=50)
    async def record(self, ctx: CommandContext, action: str) -> None: ...


class Room:
    """Who has which power level, and what the bot replied."""

    def __init__(self) -> None:
        self.levels: dict[str, int] = {ALICE: 100}
        self.replies: list[str] = []

    async def power_level(self, room: str, user: str) -> int:
        return self.levels.get(user, 0)

    def ctx(self, sender: str = ALICE, room: str = ROOM) -> CommandContext:
        async def reply(text: str, html: str | None = None) -> str:
            self.replies.append(text)
            return "$reply"

        return CommandContext(room, sender, "$event", "!", reply, lambda c: True)


@pytest.fixture
async def setup(tmp_path: Path) -> AsyncIterator[tuple[ScheduleCommands, Room, CommandRegistry]]:
    registry = CommandRegistry()
    registry.register(Calls())
    registry.register(Recorder())
    room = Room()
    jobs = JobScheduler(default_store_url(tmp_path), owner="@bot:example.org")

    class Idle:
        async def fire(self, plan: dict) -> None: ...

    jobs.start(Idle())
    timezones = RoomTimezones(tmp_path / "room_timezones.json", "UTC", {ROOM: "Europe/Berlin"})
    cmds = ScheduleCommands(
        jobs,
        timezones,
        registry,
        UserPatterns(["@*:example.org"]),
        room.power_level,
    )
    registry.register(cmds)
    yield cmds, room, registry
    jobs.shutdown()


async def test_schedule_list_and_remove(setup) -> None:
    cmds, room, _ = setup
    await cmds.schedule(room.ctx(), f"{DAY}T09:00 for 1h record")
    (reply,) = room.replies
    (job,) = cmds.jobs.jobs(ROOM)
    assert reply == (
        f"Scheduled {job.id}: once at {DAY} 09:00:00 Europe/Berlin, for 1h, record. "
        f"Next: {shown('Europe/Berlin')}. Remove it with !unschedule {job.id}."
    )
    await cmds.schedule(room.ctx(), "mon,wed 14:30")
    await cmds.schedules(room.ctx(sender="@bob:elsewhere.org"))  # anyone in the room may look
    listing = room.replies[-1].splitlines()
    assert listing[0] == "Scheduled calls (Europe/Berlin time):"
    # soonest first
    assert ": mon,wed 14:30 Europe/Berlin — next " in listing[1] and " 14:30 CE" in listing[1]
    assert f"{job.id}: once at {DAY}" in listing[2] and listing[2].endswith(f"by {ALICE}")

    with pytest.raises(CommandError, match="This room has no schedule 'nope'"):
        await cmds.unschedule(room.ctx(), "nope")
    with pytest.raises(CommandError, match="has no schedule"):  # another room's job
        await cmds.unschedule(room.ctx(room="!other:example.org"), job.id)
    await cmds.unschedule(room.ctx(), job.id.upper())
    assert room.replies[-1].startswith(f"Removed {job.id} (once at {DAY}")
    assert [j.id for j in cmds.jobs.jobs(ROOM)] != [job.id] and len(cmds.jobs.jobs(ROOM)) == 1


async def test_nothing_scheduled_and_no_arguments(setup) -> None:
    cmds, room, _ = setup
    await cmds.schedules(room.ctx())
    assert room.replies[-1].startswith("No calls are scheduled in this room.")
    await cmds.schedule(room.ctx(), None)
    assert room.replies[-1].startswith("Accepted forms:")


async def test_duplicates_are_refused_with_the_existing_id(setup) -> None:
    cmds, room, _ = setup
    await cmds.schedule(room.ctx(), "daily 09:00")
    (job,) = cmds.jobs.jobs(ROOM)
    with pytest.raises(
        CommandError, match=f"already has a call scheduled at that time \\({job.id}"
    ):
        await cmds.schedule(room.ctx(), "daily 9:00 record")


async def test_bad_input_shows_the_forms(setup) -> None:
    cmds, room, _ = setup
    with pytest.raises(UsageError, match=r"(?s)I cannot read 'someday' as a time.*Accepted forms"):
        await cmds.schedule(room.ctx(), "someday")
    assert cmds.jobs.jobs() == []


async def test_a_plugin_that_is_not_enabled_is_refused(setup) -> None:
    cmds, room, _ = setup
    with pytest.raises(UsageError) as e:
        await cmds.schedule(room.ctx(), "in 1h transcribe")
    assert str(e.value) == (
        "I cannot schedule transcribe: !transcribe is not available here "
        "(the transcriber plugin is not enabled in my config)."
    )
    with pytest.raises(UsageError, match="the music plugin is not enabled"):
        await cmds.schedule(room.ctx(), "in 1h play song.ogg")
    assert cmds.jobs.jobs() == []


async def test_the_caller_must_be_allowed_what_the_job_runs_for_them(setup) -> None:
    cmds, room, _ = setup
    room.levels["@carol:example.org"] = 10
    with pytest.raises(PermissionDenied) as e:
        await cmds.schedule(room.ctx(sender="@carol:example.org"), "in 1h record")
    assert str(e.value) == (
        "You may not schedule !record: it needs power level 50 in this room (you have 10), "
        "and the scheduled call runs it as you."
    )
    await cmds.schedule(room.ctx(sender="@carol:example.org"), "in 1h")  # joining alone is fine
    assert len(cmds.jobs.jobs()) == 1


async def test_schedule_itself_is_for_allowed_users(setup) -> None:
    _, _, registry = setup
    for name in ("schedule", "unschedule", "timezone"):
        assert registry.get(name).allowed_users_only
    assert not registry.get("schedules").allowed_users_only


async def test_a_room_holds_a_bounded_number_of_schedules(setup, monkeypatch) -> None:
    cmds, room, _ = setup
    monkeypatch.setattr(commands_module, "MAX_JOBS_PER_ROOM", 2)
    await cmds.schedule(room.ctx(), "in 1h")
    await cmds.schedule(room.ctx(), "in 2h")
    with pytest.raises(CommandError, match="This room has 2 schedules already"):
        await cmds.schedule(room.ctx(), "in 3h")


async def test_timezone_of_a_room(setup, tmp_path: Path) -> None:
    cmds, room, _ = setup
    other = room.ctx(room="!other:example.org")
    await cmds.timezone(other, None)
    assert room.replies[-1].startswith("Times in this room are read in UTC.")
    with pytest.raises(UsageError, match="I do not know the time zone 'Mars/Olympus'"):
        await cmds.timezone(other, "Mars/Olympus")
    with pytest.raises(UsageError):
        await cmds.timezone(other, "../../etc/passwd")
    await cmds.timezone(other, "America/New_York")
    await cmds.schedule(other, f"{DAY} 09:00")
    assert f"once at {DAY} 09:00:00 America/New_York" in room.replies[-1]
    assert f"Next: {shown('America/New_York')}." in room.replies[-1]
    # Kept privately across restarts.
    path = tmp_path / "room_timezones.json"
    assert path.stat().st_mode & 0o777 == 0o600
    assert RoomTimezones(path).name("!other:example.org") == "America/New_York"
    assert RoomTimezones(path, "UTC", {ROOM: "Europe/Berlin"}).name(ROOM) == "Europe/Berlin"
