"""How many calls the bot is in at once: ``rtc.max_calls``, and what happens past it.

Every way into a call (``!join``, a scheduled job, a plugin) goes through
``MatrixRTCSession.join``, which takes a slot here first and gives it back when it leaves (or
when joining fails). When all slots are taken, ``rtc.when_full`` decides:

* ``"refuse"``: the join fails at once with ``CallLimitReached``, whose text names the limit,
  rather than every call the bot is in getting worse;
* ``"queue"``: the join waits, first come first served, until a call ends. At most
  ``max_calls`` joins wait (a bounded queue: past it, joins are refused too); ``cancel``
  withdraws a waiting one (``!leave`` before the bot got in).
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Awaitable, Callable
from typing import Literal

from bot.rtc.focus import RtcError

WhenFull = Literal["refuse", "queue"]
#: Told the position (1: next) once a join has to wait.
OnQueued = Callable[[int], Awaitable[object]]


def calls(n: int) -> str:
    """``1 call``, ``2 calls``."""
    return f"{n} call{'' if n == 1 else 's'}"


class CallLimitReached(RtcError):
    """The bot is in as many calls as it may be; the message says so, naming the limit."""


class JoinCancelled(RtcError):
    """A join that was waiting for a free slot was withdrawn."""


class CallSlots:
    def __init__(
        self, max_calls: int, when_full: WhenFull = "refuse", max_waiting: int | None = None
    ) -> None:
        if max_calls < 1:
            raise ValueError("max_calls must be at least 1")
        self.max_calls = max_calls
        self.when_full = when_full
        #: joins that may wait at once ("queue"); by default as many as calls
        self.max_waiting = max_calls if max_waiting is None else max_waiting
        self._held: set[str] = set()
        self._waiting: collections.OrderedDict[str, asyncio.Future[None]] = (
            collections.OrderedDict()
        )
        #: joins refused since start (shown in !status)
        self.refused = 0

    @property
    def in_use(self) -> int:
        return len(self._held)

    @property
    def waiting(self) -> list[str]:
        """Rooms whose join waits for a slot, next first."""
        return list(self._waiting)

    def holds(self, room_id: str) -> bool:
        return room_id in self._held

    def position(self, room_id: str) -> int | None:
        """1 for the next join to get a slot; None if the room is not waiting."""
        for i, room in enumerate(self._waiting, 1):
            if room == room_id:
                return i
        return None

    def summary(self) -> str:
        """One line for !status."""
        line = f"In {calls(self.in_use)}, at most {self.max_calls} (rtc.max_calls)"
        if self._waiting:
            line += f"; waiting to join: {', '.join(self._waiting)}"
        if self.refused:
            line += f"; {self.refused} joins refused for the limit"
        return line

    async def acquire(self, room_id: str, on_queued: OnQueued | None = None) -> None:
        """Take a slot for ``room_id`` (a no-op if it holds one); wait or refuse when full."""
        if room_id in self._held:
            return
        if room_id in self._waiting:
            raise CallLimitReached(
                f"I am already waiting to join this room's call "
                f"({self.position(room_id)} in line for a free slot)."
            )
        if len(self._held) < self.max_calls and not self._waiting:
            self._held.add(room_id)
            return
        if self.when_full == "refuse" or len(self._waiting) >= self.max_waiting:
            self.refused += 1
            raise CallLimitReached(self._full_text())
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting[room_id] = future
        try:
            if on_queued is not None:
                await on_queued(len(self._waiting))
            await future
        except BaseException:
            if self._waiting.get(room_id) is future:
                del self._waiting[room_id]
            elif future.done() and not future.cancelled() and future.exception() is None:
                self.release(room_id)  # the slot came just as we gave up: pass it on
            raise

    def release(self, room_id: str) -> None:
        """The room's call is over for the bot: its slot goes to the next waiting join."""
        if room_id not in self._held:
            return
        self._held.discard(room_id)
        while self._waiting and len(self._held) < self.max_calls:
            room, future = self._waiting.popitem(last=False)
            if future.done():  # withdrawn meanwhile
                continue
            self._held.add(room)
            future.set_result(None)

    def cancel(self, room_id: str, why: str = "The join was withdrawn.") -> bool:
        """Withdraw a waiting join (it raises ``JoinCancelled``); False if none waits."""
        future = self._waiting.pop(room_id, None)
        if future is None or future.done():
            return False
        future.set_exception(JoinCancelled(why))
        return True

    def cancel_all(self, why: str = "The bot is stopping.") -> None:
        for room in list(self._waiting):
            self.cancel(room, why)

    def _full_text(self) -> str:
        text = (
            f"I am in {calls(len(self._held))}, the most I take at once "
            f"(rtc.max_calls = {self.max_calls}), so I am not joining this one"
        )
        if self.when_full == "queue":
            return f"{text}: {len(self._waiting)} more are already waiting. Try again later."
        return f"{text}. Try again when one of them has ended."
