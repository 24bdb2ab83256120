"""Auto-leave: the bot leaves once no other user is in the call (units, a stand-in session)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from bot.rtc.autoleave import AutoLeave, AutoLeavePolicy
from bot.rtc.session import JoinStateChanged, MembershipsChanged
from bot.signals import Signal
from tests.peer import wait_until

BOT = "@bot:example.org"
ROOM = "!room:example.org"


class FakeSession:
    def __init__(self) -> None:
        self.room_id = ROOM
        self.client = SimpleNamespace(user_id=BOT)
        self.memberships: list[SimpleNamespace] = []
        self.is_joined = False
        self.joining = False
        self.left = 0
        self.memberships_changed: Signal[MembershipsChanged] = Signal("memberships_changed")
        self.join_state_changed: Signal[JoinStateChanged] = Signal("join_state_changed")

    def set_members(self, *users: str) -> None:
        old = self.memberships
        self.memberships = [SimpleNamespace(user_id=u) for u in users]
        self.memberships_changed.emit(MembershipsChanged(old, self.memberships))  # type: ignore[arg-type]

    def join(self) -> None:
        self.is_joined = True
        self.join_state_changed.emit(JoinStateChanged(True))

    async def leave(self, timeout_s: float = 1.0) -> bool:
        self.is_joined = False
        self.left += 1
        self.join_state_changed.emit(JoinStateChanged(False))
        return True


def make(grace: float, wait: float) -> tuple[AutoLeave, FakeSession, list[str]]:
    posted: list[str] = []

    async def post(room: str, text: str) -> None:
        posted.append(text)

    rtc = SimpleNamespace(session_created=Signal("session_created"))
    auto = AutoLeave(rtc, AutoLeavePolicy(grace, wait), post)  # type: ignore[arg-type]
    session = FakeSession()
    rtc.session_created.emit(session)
    return auto, session, posted


async def test_leaves_a_call_nobody_joined_after_the_wait() -> None:
    auto, session, posted = make(grace=60, wait=0.1)
    session.join()
    session.set_members(BOT, BOT)  # the bot's own devices are not participants
    await wait_until(lambda: posted, 5, "the auto-leave")
    assert session.left == 1
    assert posted == ["Nobody joined the call within 0.1 s, so I left."]
    await auto.stop()


async def test_leaves_after_the_grace_once_everyone_left() -> None:
    auto, session, posted = make(grace=0.1, wait=3600)
    session.set_members("@alice:example.org")
    session.join()  # joining a call going on: alice counts as seen
    session.set_members("@alice:example.org", BOT)
    session.set_members(BOT)
    await wait_until(lambda: posted, 5, "the auto-leave")
    assert session.left == 1
    assert posted == ["Everyone has left the call, so I left too."]
    await auto.stop()


async def test_someone_coming_back_during_the_grace_keeps_the_bot() -> None:
    auto, session, posted = make(grace=0.2, wait=3600)
    session.join()
    session.set_members("@alice:example.org", BOT)
    session.set_members(BOT)
    session.set_members("@alice:example.org", BOT)  # reconnected
    await asyncio.sleep(0.5)
    assert session.left == 0 and posted == []
    # Another participant is enough too.
    session.set_members("@bob:example.org", BOT)
    session.set_members(BOT)
    await wait_until(lambda: session.left, 5, "the auto-leave")
    await auto.stop()


async def test_a_bot_that_left_is_not_made_to_leave_again() -> None:
    auto, session, posted = make(grace=0.1, wait=0.1)
    session.join()
    await session.leave()
    await asyncio.sleep(0.3)
    assert session.left == 1 and posted == []
    await auto.stop()


async def test_someone_who_left_while_the_bot_was_joining_counts_as_seen() -> None:
    # The race of issue 16: alice is in the call when the bot starts joining, and her leave
    # is synced before the bot's join is announced. The bot must leave after the grace,
    # not wait for participants.
    auto, session, posted = make(grace=0.1, wait=3600)
    session.joining = True
    session.set_members("@alice:example.org", BOT)
    session.set_members(BOT)
    session.joining = False
    session.join()
    await wait_until(lambda: posted, 5, "the auto-leave")
    assert posted == ["Everyone has left the call, so I left too."]
    await auto.stop()


async def test_a_failed_join_forgets_who_was_seen() -> None:
    auto, session, posted = make(grace=0.1, wait=0.3)
    session.joining = True
    session.set_members("@alice:example.org")
    session.joining = False  # the join failed
    session.set_members()
    session.join()  # a later join into an empty call waits for participants
    await wait_until(lambda: posted, 5, "the auto-leave")
    assert posted == ["Nobody joined the call within 0.3 s, so I left."]
    await auto.stop()
