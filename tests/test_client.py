"""bot.matrix.client units: the to-device queue."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace

from bot.config import MatrixConfig
from bot.matrix import client as client_module
from bot.matrix.client import MatrixClient


async def test_to_device_events_are_handled_in_order_by_one_worker_and_bounded(
    tmp_path: Path, monkeypatch
) -> None:
    """Issue 19: a task per to-device event let a flood spawn unbounded tasks; now one worker
    handles them in arrival order and the oldest are dropped (and counted) past the bound."""
    monkeypatch.setattr(client_module, "TO_DEVICE_QUEUE", 10)
    matrix = MatrixClient(
        MatrixConfig(homeserver="http://127.0.0.1:1", user_id="@b:x", password="p"), tmp_path
    )
    seen: list[int] = []
    running = 0
    gate = asyncio.Event()

    async def handler(event: SimpleNamespace) -> None:
        nonlocal running
        running += 1
        assert running == 1  # never two at once
        await gate.wait()
        seen.append(event.n)
        running -= 1

    async def broken(event: SimpleNamespace) -> None:
        raise RuntimeError("a handler that fails does not stop the others")

    matrix.on_to_device(broken)
    matrix.on_to_device(handler)
    for n in range(25):
        await matrix._to_device_cb(SimpleNamespace(n=n, sender="@m:x"))  # type: ignore[arg-type]
        if n == 0:
            await asyncio.sleep(0.01)  # the worker takes the first and waits in the handler
    gate.set()
    for _ in range(100):
        if len(seen) == 11:
            break
        await asyncio.sleep(0.01)
    # The first was being handled; of the 24 waiting, the 10 newest were kept.
    assert seen == [0, *range(15, 25)]
    assert matrix.to_device_dropped == 14
    assert len([t for t in asyncio.all_tasks() if t.get_name() == "matrix-to-device"]) == 1
    await matrix.stop()
