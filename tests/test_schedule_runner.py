"""What a job does when it fires (units: a real registry, a stand-in call session)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from bot.commands.permissions import UserPatterns
from bot.commands.registry import Arg, CommandContext, CommandRegistry, command
from bot.config import CommandConfig
from bot.errors import CommandError
from bot.rtc.capacity import CallSlots, OnQueued
from bot.rtc.focus import RtcError
from bot.rtc.session import JoinStateChanged
from bot.schedule.runner import ScheduledCalls
from bot.schedule.scheduler import JobInfo
from bot.signals import Signal
from tests.peer import wait_until

ROOM = "!room:example.org"
ALICE = "@alice:example.org"


class Session:
    """A stand-in call session; with ``slots`` its joins take a slot as the real one does."""

    def __init__(self, fail: str | None = None, slots: CallSlots | None = None) -> None:
        self.room_id = ROOM
        self.memberships: list[Any] = []
        self.is_joined = False
        self.joins = self.leaves = 0
        self.fail = fail
        self.slots = slots
        self.join_state_changed: Signal[JoinStateChanged] = Signal("join_state_changed")

    async def join(self, on_queued: OnQueued | None = None) -> None:
        if self.fail:
            raise RtcError(self.fail)
        if self.slots is not None:
            await self.slots.acquire(self.room_id, on_queued)
        self.joins += 1
        self.is_joined = True
        self.join_state_changed.emit(JoinStateChanged(True))

    async def leave(self, timeout_s: float = 1.0) -> bool:
        self.leaves += 1
        self.is_joined = False
        self.join_state_changed.emit(JoinStateChanged(False))
        return True


class Plugins:
    def __init__(self) -> None:
        self.ran: list[tuple[str, str, str]] = []

    @command(help="Join")
    async def join(self, ctx: CommandContext) -> None:
        raise AssertionError("a job joins through the session, not by typing !join")

    @command(help="Record", args=[Arg("action")], power_level=50)
    async def record(self, ctx: CommandContext, action: str) -> None:
        self.ran.append(("record", action, ctx.sender))
        await ctx.reply("🔴 recording")

    @command(help="Play", args=[Arg("source", rest=True)])
    async def play(self, ctx: CommandContext, source: str) -> None:
        if source == "missing.ogg":
            raise CommandError("There is no missing.ogg.")
        self.ran.append(("play", source, ctx.sender))


def make(
    session: Session,
    levels: dict[str, int] | None = None,
    rooms=(ROOM,),
    slots: CallSlots | None = None,
):
    registry = CommandRegistry()
    plugins = Plugins()
    registry.register(plugins)
    posted: list[str] = []
    ready: list[str] = []
    levels = {ALICE: 100} if levels is None else levels

    async def power_level(room: str, user: str) -> int:
        return levels.get(user, 0)

    async def post(room: str, text: str, html: str | None) -> str:
        posted.append(text)
        return "$e"

    async def media_ready(room: str, timeout: float) -> bool:
        ready.append(room)
        return True

    calls = ScheduledCalls(
        rtc=SimpleNamespace(  # type: ignore[arg-type]
            get_room_session=lambda room: session, slots=slots or CallSlots(20)
        ),
        registry=registry,
        allowed=UserPatterns(["@*:example.org"]),
        prefix="!",
        power_level_of=power_level,
        post=post,
        joined_rooms=lambda: list(rooms),
        media_ready=media_ready,
    )
    return calls, plugins, posted, ready, registry


def plan(commands: list[str], duration: float | None = None) -> dict[str, Any]:
    return {
        "v": 1,
        "id": "abc123",
        "room": ROOM,
        "user": ALICE,
        "description": "daily 09:00 UTC",
        "tz": "UTC",
        "duration_s": duration,
        "commands": commands,
    }


async def test_starts_the_call_and_runs_the_commands_as_the_scheduling_user() -> None:
    session = Session()
    calls, plugins, posted, ready, _ = make(session)
    await calls.fire(plan(["record start", "play it's  here.ogg"]))
    assert session.joins == 1
    assert ready == [ROOM]  # the commands waited for the call's plugins
    assert plugins.ran == [("record", "start", ALICE), ("play", "it's  here.ogg", ALICE)]
    assert posted == [
        "Scheduled call abc123 (daily 09:00 UTC; set by @alice:example.org): started the "
        "call. I will leave once everyone has left.",
        "🔴 recording",
    ]
    await calls.stop()


async def test_leaves_after_the_duration() -> None:
    session = Session()
    calls, _, posted, _, _ = make(session)
    await calls.fire(plan([], duration=0.1))
    assert "I will leave after 0s, or once everyone has left." in posted[0]
    await wait_until(lambda: session.leaves, 5, "the leave")
    await wait_until(lambda: len(posted) == 2, 5, "the notice")
    assert posted[1] == "Scheduled call abc123 ended after 0s; I left."
    await calls.stop()


async def test_a_leave_before_the_end_cancels_the_timer() -> None:
    session = Session()
    calls, _, posted, _, _ = make(session)
    await calls.fire(plan([], duration=0.2))
    await session.leave()  # !leave, or auto-leave
    assert calls._leaves == {}
    await calls.stop()
    assert session.leaves == 1 and len(posted) == 1


async def test_a_call_already_joined_is_kept() -> None:
    session = Session()
    session.is_joined = True
    calls, _, posted, _, _ = make(session)
    await calls.fire(plan([]))
    assert session.joins == 0
    assert "joined the call" in posted[0]


async def test_permissions_are_checked_again_when_it_fires() -> None:
    session = Session()
    calls, plugins, posted, _, registry = make(session, levels={ALICE: 10})
    await calls.fire(plan(["record start", "play x.ogg"]))
    assert session.joins == 1
    assert plugins.ran == [("play", "x.ogg", ALICE)]
    assert posted[1] == (
        "Scheduled call abc123: skipped !record start: @alice:example.org may no longer run "
        "it; it needs power level 50 in this room (you have 10)."
    )

    # Without the right to start calls any more, nothing happens but a notice.
    registry.apply_overrides({"join": CommandConfig(power_level=50)})
    posted.clear()
    session2 = Session()
    calls.rtc = SimpleNamespace(get_room_session=lambda room: session2)  # type: ignore[assignment]
    await calls.fire(plan(["play x.ogg"]))
    assert session2.joins == 0
    assert posted == [
        "Scheduled call abc123 skipped: @alice:example.org may no longer start calls "
        "here; it needs power level 50 in this room (you have 10)."
    ]


async def test_refusals_and_failures_are_said_in_the_room() -> None:
    calls, _, posted, _, _ = make(Session())
    await calls.fire(plan(["transcribe start", "play missing.ogg"]))
    assert posted[1:] == [
        "Scheduled call abc123: !transcribe start is not available here (skipped).",
        "Scheduled call abc123: !play missing.ogg: There is no missing.ogg.",
    ]

    failing = Session(fail="I cannot join the call: no SFU.")
    calls, _, posted, _, _ = make(failing)
    await calls.fire(plan(["play x.ogg"]))
    assert posted == [
        "Scheduled call abc123: I could not join the call. I cannot join the call: no SFU."
    ]


async def test_a_room_the_bot_left_is_skipped() -> None:
    session = Session()
    calls, _, posted, _, _ = make(session, rooms=())
    await calls.fire(plan(["play x.ogg"]))
    assert session.joins == 0 and posted == []


async def test_missed_runs_are_said_in_the_room() -> None:
    from datetime import UTC, datetime

    calls, _, posted, _, _ = make(Session())
    when = datetime(2026, 11, 23, 9, tzinfo=UTC)
    calls.missed(JobInfo("abc123", ROOM, ALICE, "daily 09:00 UTC", None), when)
    calls.missed(JobInfo("def456", ROOM, ALICE, "once at 2026-11-23 09:00:00 UTC", None), when)
    await wait_until(lambda: len(posted) == 2, 5, "the notices")
    assert posted[0] == (
        "I missed the scheduled call abc123 (daily 09:00 UTC) due at 2026-11-23 09:00 UTC: "
        "I was not running then. The schedule stays for the next runs."
    )
    assert posted[1].endswith("I was not running then.")


async def test_past_the_call_limit_a_job_is_refused_or_waits() -> None:
    refusing = CallSlots(1, "refuse")
    await refusing.acquire("!other:example.org")
    session = Session(slots=refusing)
    calls, plugins, posted, _, _ = make(session, slots=refusing)
    await calls.fire(plan(["play x.ogg"]))
    assert session.joins == 0 and plugins.ran == []
    assert posted == [
        "Scheduled call abc123: I could not join the call. I am in 1 call, the most I take "
        "at once (rtc.max_calls = 1), so I am not joining this one. Try again when one of "
        "them has ended."
    ]

    queueing = CallSlots(1, "queue")
    await queueing.acquire("!other:example.org")
    session = Session(slots=queueing)
    calls, plugins, posted, _, _ = make(session, slots=queueing)
    fired = asyncio.create_task(calls.fire(plan(["play x.ogg"])))
    await wait_until(lambda: posted, 5, "the notice")
    assert posted == [
        "Scheduled call abc123: I am in 1 call, the most I take at once (rtc.max_calls = 1); "
        "I will join this one when one of them ends (1 in line)."
    ]
    assert session.joins == 0
    queueing.release("!other:example.org")  # that call ended
    await fired
    assert session.joins == 1 and plugins.ran == [("play", "x.ogg", ALICE)]
    assert "started the call" in posted[1]
    await calls.stop()
