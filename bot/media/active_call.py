"""One joined call's media side, started and stopped in order by one owner.

``start()``: connect to the SFU (retried with backoff until it works or the call is left; the
room is told once if the first try fails), then each plugin's ``on_call_start``. ``stop()``:
the reverse, whatever ``start()`` had got to: a leave while the connection is still being made
waits for that attempt and closes it, and plugins that never started are never ended.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from bot.log import context
from bot.media.router import FrameRouter
from bot.media.worker import PluginWorker
from bot.plugin import CallContext, Plugin

log = logging.getLogger(__name__)

#: waits between connection attempts: doubling from the first to the last
RETRY_FIRST_S = 1.0
RETRY_MAX_S = 30.0
#: how long a leave waits for a connection attempt under way before giving up on it
STOP_WAIT_S = 30.0


class Media(Protocol):
    """What ActiveCall needs of the media engine (bot.media.engine.CallMedia)."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


@dataclass
class ConnectState:
    """How the call's media connection stands, for !status."""

    connected: bool = False
    attempts: int = 0
    last_error: str | None = None

    def line(self) -> str | None:
        if self.connected or self.attempts == 0:
            return None
        return (
            f"  media: not connected to the SFU yet ({self.attempts} attempts; last: "
            f"{self.last_error}); retrying"
        )


class ActiveCall:
    def __init__(
        self,
        room_id: str,
        media: Media,
        router: FrameRouter,
        plugins: list[Plugin],
        make_context: Callable[[PluginWorker], CallContext],
        notify: Callable[[str], Awaitable[object]],
        describe_error: Callable[[Exception], str] = lambda e: f"{type(e).__name__}",
    ) -> None:
        self.room_id = room_id
        self.media = media
        self.router = router
        self.plugins = plugins
        self.state = ConnectState()
        self._make_context = make_context
        self._notify = notify
        self._describe = describe_error
        self._started: list[Plugin] = []
        #: each plugin's own threads and tasks (bot.media.worker), ended after its on_call_end
        self.workers = {id(p): PluginWorker(p.name) for p in plugins}
        self._stopping = False
        self._connecting = False
        self._task: asyncio.Task[None] | None = None
        self._ctx = context(room=room_id)
        for plugin in plugins:
            router.add(plugin)

    async def start(self) -> None:
        """Connect and start the plugins; returns once they run (or the call was left)."""
        self._task = asyncio.create_task(self._start(), name=f"call-start-{self.room_id}")
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.shield(self._task)

    async def _start(self) -> None:
        delay = RETRY_FIRST_S
        while not self._stopping:
            self._connecting = True
            try:
                await self.media.start()
            except Exception as e:
                self._connecting = False
                self.state.attempts += 1
                self.state.last_error = self._describe(e)
                log.warning(
                    "could not connect to the call's SFU (%s); again in %.0f s",
                    self.state.last_error,
                    delay,
                    extra=self._ctx,
                )
                if self.state.attempts == 1:
                    await self._tell(
                        "I joined the call but cannot reach its media server "
                        f"({self.state.last_error}); I keep trying, and hear nothing until then."
                    )
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_S)
                continue
            self._connecting = False
            break
        if self._stopping:
            return  # stop() closes what the last attempt opened
        self.state.connected = True
        if self.state.attempts:
            await self._tell("I can hear the call now.")
        for plugin in self.plugins:
            if self._stopping:
                return
            self._started.append(plugin)  # ended by stop() even if its start fails halfway
            try:
                await plugin.on_call_start(self._make_context(self.workers[id(plugin)]))
            except Exception:
                log.exception("plugin %s failed to start", plugin.name, extra=self._ctx)

    async def stop(self) -> None:
        """Undo what start() did, in reverse: plugins, router, media connection."""
        self._stopping = True
        task = self._task
        if task is not None and not task.done():
            if not self._connecting:
                task.cancel()  # waiting between attempts, or starting plugins
            # A connection attempt under way is let finish, so that it can be closed.
            done, _ = await asyncio.wait({task}, timeout=STOP_WAIT_S)
            if not done:
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self.router.stop()
        for plugin in self._started:
            try:
                await plugin.on_call_end()
            except Exception:
                log.exception("plugin %s failed to stop", plugin.name, extra=self._ctx)
        for worker in self.workers.values():
            await worker.close()
        await self.media.stop()

    async def _tell(self, text: str) -> None:
        try:
            await self._notify(text)
        except Exception as e:
            log.warning("could not tell the room about its media: %s", e, extra=self._ctx)
