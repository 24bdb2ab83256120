"""What a plugin runs besides its hooks, owned by the framework: its own worker threads and its
own background tasks, both ended when the plugin's call ends.

Each plugin instance of a call gets one ``PluginWorker``, so a plugin that blocks its threads
(a slow disk, a long decode) holds up only itself, never the other plugins or the default
executor that the bot's own code uses; tasks it spawns are cancelled and awaited after its
``on_call_end``, so none outlives the call.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
#: threads per plugin instance: enough for a writer and a reader, few enough to stay light
THREADS = 2


class PluginWorker:
    def __init__(self, name: str, threads: int = THREADS) -> None:
        self.name = name
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix=f"plugin-{name}")
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closed = False

    async def run_blocking(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` on one of the plugin's threads; its result (or its exception)."""
        if self._closed:
            raise RuntimeError(f"the call of plugin {self.name} has ended")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, functools.partial(fn, *args))

    def spawn(self, coro: Coroutine[Any, Any, T], name: str | None = None) -> asyncio.Task[T]:
        """Run ``coro`` as a task that ends with the call at the latest; its exception, if
        any, is logged (one failing task never ends the call)."""
        if self._closed:
            coro.close()
            raise RuntimeError(f"the call of plugin {self.name} has ended")
        task = asyncio.create_task(coro, name=name or f"plugin-{self.name}")
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (e := task.exception()) is not None:
            log.error("a task of plugin %s failed", self.name, exc_info=e)

    @property
    def running(self) -> int:
        """Tasks still running (for tests and !status)."""
        return len(self._tasks)

    async def close(self) -> None:
        """Cancel the plugin's tasks, then wait for jobs already on its threads to finish
        (they may be writing files); queued jobs that have not started are dropped."""
        self._closed = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.to_thread(self._pool.shutdown, True, cancel_futures=True)
