"""Units for a plugin's own threads and tasks (bot.media.worker) and for ActiveCall ending
them after each plugin's on_call_end."""

from __future__ import annotations

import asyncio
import logging
import threading
import time

import pytest

from bot.media.active_call import ActiveCall
from bot.media.router import FrameRouter
from bot.media.worker import PluginWorker
from bot.plugin import CallContext, Plugin
from bot.testing import FakeCall


async def test_blocking_work_runs_on_the_plugins_own_threads() -> None:
    worker = PluginWorker("slow")
    name = await worker.run_blocking(lambda: threading.current_thread().name)
    assert name.startswith("plugin-slow")
    with pytest.raises(ZeroDivisionError):
        await worker.run_blocking(lambda: 1 / 0)
    await worker.close()
    with pytest.raises(RuntimeError, match="has ended"):
        await worker.run_blocking(time.sleep, 0)


async def test_a_plugin_that_blocks_its_threads_does_not_hold_up_another() -> None:
    stuck, other = PluginWorker("stuck", threads=1), PluginWorker("other", threads=1)
    release = threading.Event()
    blocked = asyncio.ensure_future(stuck.run_blocking(release.wait, 5))
    # The stuck plugin's only thread is busy; the other plugin's work still runs at once.
    assert await asyncio.wait_for(other.run_blocking(lambda: 42), 2) == 42
    assert not blocked.done()
    release.set()
    assert await blocked is True
    await stuck.close()
    await other.close()


async def test_close_cancels_tasks_logs_failures_and_waits_for_running_jobs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    worker = PluginWorker("rec")
    forever = worker.spawn(asyncio.sleep(3600))

    async def fails() -> None:
        raise ValueError("boom")

    worker.spawn(fails())
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert any("a task of plugin rec failed" in r.getMessage() for r in caplog.records)
    finished: list[str] = []

    def write() -> None:
        time.sleep(0.2)
        finished.append("written")

    job = asyncio.ensure_future(worker.run_blocking(write))
    await asyncio.sleep(0.05)  # the job is running on the plugin's thread
    await worker.close()
    assert forever.cancelled() and worker.running == 0
    assert finished == ["written"]  # close waited for it: a file half written is not lost
    await job
    coro = asyncio.sleep(0)
    with pytest.raises(RuntimeError):
        worker.spawn(coro)


class Media:
    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass


class Spawner(Plugin):
    name = "spawner"

    def __init__(self) -> None:
        self.task: asyncio.Task[None] | None = None
        self.thread = ""
        self.ended_with_task_running = False

    async def on_call_start(self, call: CallContext) -> None:
        self.task = call.spawn(asyncio.sleep(3600))
        self.thread = await call.run_blocking(lambda: threading.current_thread().name)

    async def on_call_end(self) -> None:
        assert self.task is not None
        self.ended_with_task_running = not self.task.done()


class Other(Spawner):
    name = "other"


async def test_active_call_gives_each_plugin_its_own_worker_and_ends_it() -> None:
    spawner, other = Spawner(), Other()
    contexts: list[PluginWorker] = []

    def make_context(worker: PluginWorker) -> CallContext:
        contexts.append(worker)
        call = FakeCall()
        call.worker = worker
        return call

    async def notify(text: str) -> None:
        pass

    active = ActiveCall("!r:x", Media(), FrameRouter(), [spawner, other], make_context, notify)
    await active.start()
    assert spawner.thread.startswith("plugin-spawner") and other.thread.startswith("plugin-other")
    assert len({id(w) for w in contexts}) == 2
    await active.stop()
    # on_call_end saw its task still running (it may still need it); after it, it is gone.
    assert spawner.ended_with_task_running and spawner.task is not None
    assert spawner.task.cancelled() and other.task is not None and other.task.cancelled()
    logging.getLogger(__name__).info("ok")
