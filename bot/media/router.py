"""Routing frames and events to plugins: one bounded queue and one task per plugin.

The media path calls ``push_*`` synchronously; it never waits on a plugin. Each plugin's
overflow policy decides what a full queue means (see ``bot.plugin.Overflow``). Participant
events are kept apart from that bound: joins, leaves and mutes are never dropped (people do
them at human speed), but a plugin stuck for long would pile up speaking/silent events, so
past ``MAX_QUEUED_EVENTS`` those are dropped (newest first) and counted. A plugin that keeps
raising is disabled for the call.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from bot.plugin import (
    AudioFrame,
    AudioWants,
    ConnectionChange,
    Gap,
    Overflow,
    ParticipantChange,
    ParticipantEvent,
    Plugin,
    PluginStats,
    VideoFrame,
    VideoWants,
)

log = logging.getLogger(__name__)

#: A plugin raising this many times within ERROR_WINDOW_S is disabled for the call.
MAX_ERRORS = 5
ERROR_WINDOW_S = 60.0
#: How long a plugin may take to finish its queue when the call ends (LOSSLESS ones: longer).
STOP_S = 5.0
LOSSLESS_STOP_S = 30.0
#: Participant events queued for one plugin past which speaking/silent ones are dropped.
MAX_QUEUED_EVENTS = 1000
_DROPPABLE_EVENTS = (ParticipantChange.SPEAKING, ParticipantChange.SILENT)

Item = AudioFrame | VideoFrame | ParticipantEvent | Gap | ConnectionChange


@dataclass
class _PendingGap:
    frames: int
    start: float
    end: float


class PluginRunner:
    """One plugin in one call: its queue, its task, its counters."""

    def __init__(
        self,
        plugin: Plugin,
        on_disabled: Callable[[PluginRunner, BaseException], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.plugin = plugin
        self.stats = PluginStats()
        self._queue: collections.deque[Item] = collections.deque()
        self._frames_queued = 0
        self._events_queued = 0
        #: speaking/silent events dropped because too many events were queued
        self.events_dropped = 0
        self._gaps: dict[tuple[str, str], _PendingGap] = {}
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()  # set while the queue is empty and nothing is running
        self._idle.set()
        self._errors: collections.deque[float] = collections.deque()
        self._on_disabled = on_disabled
        self._clock = clock
        self._task: asyncio.Task[None] | None = None

    @property
    def name(self) -> str:
        return self.plugin.name

    @property
    def queued(self) -> int:
        """Frames waiting for the plugin now (at most ``plugin.queue_size``)."""
        return self._frames_queued

    @property
    def events_queued(self) -> int:
        return self._events_queued

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"plugin-{self.name}")

    async def stop(self, timeout_s: float | None = None) -> None:
        """Deliver what is queued, then stop; a plugin stuck longer than that is cancelled.
        By default a LOSSLESS plugin gets longer: a busy machine must not cut a recording."""
        if self._task is None:
            return
        if timeout_s is None:
            lossless = self.plugin.overflow is Overflow.LOSSLESS
            timeout_s = LOSSLESS_STOP_S if lossless else STOP_S
        self._queue.append(_STOP)  # type: ignore[arg-type]
        self._wake.set()
        done, _ = await asyncio.wait({self._task}, timeout=timeout_s)
        if not done:
            log.warning(
                "plugin %s did not finish within %.0f s; cancelling it", self.name, timeout_s
            )
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self._task = None

    # ------------------------------------------------------------------ producer side

    def push_frame(self, frame: AudioFrame | VideoFrame) -> None:
        if self.stats.disabled:
            return
        if self._frames_queued >= self.plugin.queue_size:
            if self.plugin.overflow is Overflow.DROP_OLDEST:
                self._drop_oldest_frame()
            else:
                self._note_gap(frame)
                return
        self._flush_gap(frame)
        self._queue.append(frame)
        self._frames_queued += 1
        self._idle.clear()
        self._wake.set()

    def push_event(self, event: ParticipantEvent | ConnectionChange) -> None:
        if self.stats.disabled:
            return
        droppable = isinstance(event, ParticipantEvent) and event.change in _DROPPABLE_EVENTS
        if self._events_queued >= MAX_QUEUED_EVENTS and droppable:
            self.events_dropped += 1
            return
        self._queue.append(event)
        self._events_queued += 1
        self._idle.clear()
        self._wake.set()

    def _drop_oldest_frame(self) -> None:
        for i, item in enumerate(self._queue):
            if isinstance(item, (AudioFrame, VideoFrame)):
                del self._queue[i]
                self._frames_queued -= 1
                self.stats.dropped += 1
                return

    def _note_gap(self, frame: AudioFrame | VideoFrame) -> None:
        self.stats.dropped += 1
        kind = "audio" if isinstance(frame, AudioFrame) else "video"
        end = frame.timestamp + (frame.duration if isinstance(frame, AudioFrame) else 0.0)
        key = (kind, frame.participant.identity)
        gap = self._gaps.get(key)
        if gap is None:
            self._gaps[key] = _PendingGap(1, frame.timestamp, end)
        else:
            gap.frames += 1
            gap.end = max(gap.end, end)

    def _flush_gap(self, frame: AudioFrame | VideoFrame) -> None:
        """Before the next frame of someone whose frames were lost, say what was lost."""
        if not self._gaps:
            return
        kind = "audio" if isinstance(frame, AudioFrame) else "video"
        gap = self._gaps.pop((kind, frame.participant.identity), None)
        if gap is not None:
            self._queue.append(Gap(kind, frame.participant, gap.frames, gap.start, gap.end))

    # ------------------------------------------------------------------ consumer side

    async def drained(self) -> None:
        """Wait until the plugin has handled everything queued (tests, shutdown)."""
        await self._idle.wait()

    async def _run(self) -> None:
        while True:
            while not self._queue:
                self._idle.set()
                self._wake.clear()
                await self._wake.wait()
            item = self._queue.popleft()
            if item is _STOP:
                return
            if isinstance(item, (AudioFrame, VideoFrame)):
                self._frames_queued -= 1
            elif isinstance(item, (ParticipantEvent, ConnectionChange)):
                self._events_queued -= 1
            if self.stats.disabled:
                continue
            try:
                await self._deliver(item)
                self.stats.delivered += 1
            except Exception as e:
                self._failed(e)

    async def _deliver(self, item: Item) -> None:
        if isinstance(item, AudioFrame):
            await self.plugin.on_audio(item)
        elif isinstance(item, VideoFrame):
            await self.plugin.on_video(item)
        elif isinstance(item, Gap):
            await self.plugin.on_gap(item)
        elif isinstance(item, ConnectionChange):
            await self.plugin.on_connection(item)
        else:
            await self.plugin.on_participant(item)

    def _failed(self, error: Exception) -> None:
        self.stats.errors += 1
        self.stats.last_error = f"{type(error).__name__}: {error}"
        log.exception("plugin %s failed", self.name, exc_info=error)
        now = self._clock()
        self._errors.append(now)
        while self._errors and self._errors[0] < now - ERROR_WINDOW_S:
            self._errors.popleft()
        if len(self._errors) >= MAX_ERRORS:
            self.stats.disabled = True
            self._queue.clear()
            self._frames_queued = self._events_queued = 0
            log.error(
                "plugin %s disabled for this call after %d errors", self.name, len(self._errors)
            )
            if self._on_disabled is not None:
                self._on_disabled(self, error)


_STOP = object()


class FrameRouter:
    """All plugins of one call; the media engine asks what to produce and pushes it here."""

    def __init__(self, on_disabled: Callable[[PluginRunner, BaseException], None] | None = None):
        self.runners: list[PluginRunner] = []
        self._on_disabled = on_disabled

    def add(self, plugin: Plugin) -> PluginRunner:
        runner = PluginRunner(plugin, self._on_disabled)
        self.runners.append(runner)
        runner.start()
        return runner

    async def stop(self, timeout_s: float | None = None) -> None:
        await asyncio.gather(*(r.stop(timeout_s) for r in self.runners))

    def audio_wants(self) -> set[AudioWants]:
        """The distinct audio formats someone wants (the engine converts once per format)."""
        return {r.plugin.audio for r in self.runners if r.plugin.audio and not r.stats.disabled}

    def video_wants(self) -> set[VideoWants]:
        return {r.plugin.video for r in self.runners if r.plugin.video and not r.stats.disabled}

    def push_audio(self, wants: AudioWants, frame: AudioFrame) -> None:
        for r in self.runners:
            if r.plugin.audio == wants:
                r.push_frame(frame)

    def push_video(self, wants: VideoWants, frame: VideoFrame) -> None:
        for r in self.runners:
            if r.plugin.video == wants:
                r.push_frame(frame)

    def push_event(self, event: ParticipantEvent | ConnectionChange) -> None:
        for r in self.runners:
            r.push_event(event)
