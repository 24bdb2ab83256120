"""The call limit (rtc.max_calls): refusing or queueing joins past it (units)."""

from __future__ import annotations

import asyncio

import pytest

from bot.rtc.capacity import CallLimitReached, CallSlots, JoinCancelled


async def settle() -> None:
    """Let the waiting tasks run up to their next wait."""
    for _ in range(5):
        await asyncio.sleep(0)


async def test_refuses_past_the_limit_naming_it() -> None:
    slots = CallSlots(2, "refuse")
    await slots.acquire("!a")
    await slots.acquire("!b")
    await slots.acquire("!a")  # a room that holds a slot takes no second one
    with pytest.raises(CallLimitReached) as e:
        await slots.acquire("!c")
    assert str(e.value) == (
        "I am in 2 calls, the most I take at once (rtc.max_calls = 2), so I am not joining "
        "this one. Try again when one of them has ended."
    )
    assert slots.refused == 1 and slots.in_use == 2
    slots.release("!a")
    await slots.acquire("!c")
    assert slots.holds("!c") and not slots.holds("!a")
    assert slots.summary() == "In 2 calls, at most 2 (rtc.max_calls); 1 joins refused for the limit"


async def test_release_of_a_room_without_a_slot_changes_nothing() -> None:
    slots = CallSlots(1)
    await slots.acquire("!a")
    slots.release("!other")
    assert slots.holds("!a") and slots.in_use == 1


async def test_queue_first_come_first_served() -> None:
    slots = CallSlots(1, "queue", max_waiting=2)
    await slots.acquire("!a")
    told: list[tuple[str, int]] = []

    async def join(room: str) -> str:
        async def queued(position: int) -> None:
            told.append((room, position))

        await slots.acquire(room, queued)
        return room

    b = asyncio.create_task(join("!b"))
    await settle()
    c = asyncio.create_task(join("!c"))
    await settle()
    assert told == [("!b", 1), ("!c", 2)]
    assert slots.waiting == ["!b", "!c"] and slots.position("!c") == 2
    assert "waiting to join: !b, !c" in slots.summary()
    slots.release("!a")
    assert await b == "!b"
    assert not c.done() and slots.holds("!b") and slots.waiting == ["!c"]
    slots.release("!b")
    assert await c == "!c"
    assert slots.in_use == 1 and slots.waiting == []


async def test_queue_is_bounded_and_a_room_waits_once() -> None:
    slots = CallSlots(1, "queue")
    await slots.acquire("!a")
    waiter = asyncio.create_task(slots.acquire("!b"))
    await settle()
    with pytest.raises(CallLimitReached, match=r"already waiting .* \(1 in line"):
        await slots.acquire("!b")
    with pytest.raises(CallLimitReached, match=r"rtc.max_calls = 1.*1 more are already waiting"):
        await slots.acquire("!c")  # at most max_calls joins wait
    assert slots.refused == 1
    waiter.cancel()
    await asyncio.gather(waiter, return_exceptions=True)


async def test_cancel_withdraws_a_waiting_join() -> None:
    slots = CallSlots(1, "queue")
    await slots.acquire("!a")
    waiter = asyncio.create_task(slots.acquire("!b"))
    await settle()
    assert slots.cancel("!b", "withdrawn with !leave")
    with pytest.raises(JoinCancelled, match="withdrawn with !leave"):
        await waiter
    assert not slots.cancel("!b")
    slots.release("!a")
    assert slots.in_use == 0  # nobody was handed the slot


async def test_a_cancelled_waiter_leaves_the_line_and_passes_a_late_slot_on() -> None:
    slots = CallSlots(1, "queue", max_waiting=2)
    await slots.acquire("!a")
    b = asyncio.create_task(slots.acquire("!b"))
    c = asyncio.create_task(slots.acquire("!c"))
    await settle()
    b.cancel()  # e.g. the bot stopping, or the command's task cancelled
    await asyncio.gather(b, return_exceptions=True)
    assert slots.waiting == ["!c"]
    d = asyncio.create_task(slots.acquire("!d"))
    await settle()
    slots.release("!a")  # the slot goes to !c ...
    c.cancel()  # ... which gives up before it runs: the slot must not be lost
    await asyncio.gather(c, return_exceptions=True)
    await d
    assert slots.holds("!d") and not slots.holds("!c") and slots.in_use == 1


async def test_cancel_all() -> None:
    slots = CallSlots(1, "queue")
    await slots.acquire("!a")
    waiters = [asyncio.create_task(slots.acquire(r)) for r in ("!b",)]
    await settle()
    slots.cancel_all()
    results = await asyncio.gather(*waiters, return_exceptions=True)
    assert [type(r) for r in results] == [JoinCancelled]


def test_limit_must_be_positive() -> None:
    with pytest.raises(ValueError):
        CallSlots(0)
