"""Delayed leaves handed to the dev JWT service (``POST /delegate_delayed_leave``).

What lk-jwt-service does with one (``delayedEventManager.go``, one job per LiveKit room and
identity): wait until the identity is on the SFU (at most ``min(1 h, delay_timeout)``;
never seen: send the leave), then restart the delayed event at once and every 80 % of
``delay_timeout``, and send it as soon as the identity is gone from the SFU. A restart
answered 404 means the event is gone (sent or cancelled): the job ends. A new job for the
same room and identity replaces the old one. The homeserver is called without
authentication at the MSC4140 management endpoint, as the Go service does (Synapse
accepts that).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import quote

import aiohttp

log = logging.getLogger(__name__)

DELAYED_EVENTS = "/_matrix/client/unstable/org.matrix.msc4140/delayed_events"
#: how often presence on the SFU is looked at (the Go service has webhooks for joins and
#: leaves and looks itself now and then; here joins are told and presence is polled)
POLL_S = 0.2
#: absent this long after it connected: gone (a connection shorter than a poll is not missed)
ABSENT_S = 1.0
MAX_WAIT_S = 3600.0
HTTP_TIMEOUT = aiohttp.ClientTimeout(total=10)

#: (LiveKit room, identity) -> whether that identity is connected to the SFU now
Presence = Callable[[str, str], bool]


@dataclass(frozen=True)
class Job:
    cs_api_url: str
    delay_id: str
    timeout_s: float
    room: str
    identity: str


class DelayedLeaves:
    """The running jobs, one per (room, identity)."""

    def __init__(self, present: Presence) -> None:
        self._present = present
        self._tasks: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._joined: dict[tuple[str, str], asyncio.Event] = {}
        #: what each finished job did last, for tests and logs: "sent", "gone", "replaced"
        self.outcomes: dict[str, str] = {}

    def add(self, job: Job) -> None:
        key = (job.room, job.identity)
        old = self._tasks.pop(key, None)
        if old is not None and not old.done():
            old.cancel()  # JobReplaced
        self._joined[key] = asyncio.Event()
        task = asyncio.create_task(self._run(job), name=f"delayed-leave-{job.delay_id}")
        self._tasks[key] = task
        task.add_done_callback(functools.partial(self._forget, key))

    def participant_joined(self, room: str, identity: str) -> None:
        """The SFU's "participant joined" (lk-jwt-service gets it as a webhook)."""
        joined = self._joined.get((room, identity))
        if joined is not None:
            joined.set()

    def _forget(self, key: tuple[str, str], task: asyncio.Task[None]) -> None:
        if self._tasks.get(key) is task:
            del self._tasks[key]
            self._joined.pop(key, None)

    async def close(self) -> None:
        for task in list(self._tasks.values()):
            task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)
        self._tasks.clear()

    async def _run(self, job: Job) -> None:
        try:
            await self._watch(job)
        except Exception:  # a dev-service bug must show, not end the job in silence
            log.exception("watching the delayed leave %s failed", job.delay_id)
            self.outcomes[job.delay_id] = "failed"

    async def _watch(self, job: Job) -> None:
        loop = asyncio.get_running_loop()
        joined = self._joined[(job.room, job.identity)]
        give_up = loop.time() + min(MAX_WAIT_S, job.timeout_s)
        while not (joined.is_set() or self._present(job.room, job.identity)):
            if loop.time() >= give_up:
                await self._finish(job, "send")
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(joined.wait(), POLL_S)
        next_restart = loop.time()
        last_seen = loop.time()
        while loop.time() - last_seen < ABSENT_S:
            if self._present(job.room, job.identity):
                last_seen = loop.time()
            if loop.time() >= next_restart:
                status = await _action(job, "restart")
                if status == 404:
                    self.outcomes[job.delay_id] = "gone"
                    return
                next_restart = loop.time() + job.timeout_s * 0.8
            await asyncio.sleep(POLL_S)
        log.info("%s left the SFU: sending its delayed leave", job.identity)
        await self._finish(job, "send")

    async def _finish(self, job: Job, action: str) -> None:
        status = await _action(job, action)
        self.outcomes[job.delay_id] = "sent" if status == 200 else "gone"


async def _action(job: Job, action: str) -> int:
    """One management call; its HTTP status (0 if the homeserver could not be reached)."""
    url = f"{job.cs_api_url.rstrip('/')}{DELAYED_EVENTS}/{quote(job.delay_id, safe='')}"
    try:
        async with (
            aiohttp.ClientSession(timeout=HTTP_TIMEOUT) as http,
            http.post(url, json={"action": action}) as resp,
        ):
            return resp.status
    except (aiohttp.ClientError, TimeoutError) as e:
        log.warning("delayed event %s failed: %s", action, e)
        return 0
