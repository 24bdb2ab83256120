"""Typed in-process events: ``signal.connect(handler)``, ``signal.emit(payload)``.

A handler that raises is logged and the others still run; async handlers are run as tasks
the signal keeps track of, so an emitter never waits on a slow listener.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
Handler = Callable[[T], None] | Callable[[T], Awaitable[None]]


class Signal(Generic[T]):
    def __init__(self, name: str) -> None:
        self.name = name
        self._handlers: list[Handler[T]] = []
        self._tasks: set[asyncio.Task[None]] = set()

    def connect(self, handler: Handler[T]) -> None:
        self._handlers.append(handler)

    def disconnect(self, handler: Handler[T]) -> None:
        self._handlers.remove(handler)

    def emit(self, payload: T) -> None:
        for handler in list(self._handlers):
            try:
                result = handler(payload)
                if inspect.isawaitable(result):
                    task = asyncio.ensure_future(self._guard(result))
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
            except Exception:
                log.exception("a %s handler failed", self.name)

    async def _guard(self, awaitable: Awaitable[None]) -> None:
        try:
            await awaitable
        except Exception:
            log.exception("a %s handler failed", self.name)
