"""Our own membership of a call: join, stay (delayed leave, expiry refresh, watchdog), leave.

The sequence is matrix-js-sdk's ``MembershipManager`` (``src/matrixrtc/MembershipManager.ts``):
schedule a delayed ``{}`` (MSC4140) before sending the join, restart it immediately (some
homeservers cancel it when the state is overwritten) and then every few seconds, so the
homeserver sends the leave by itself if the bot dies. Without MSC4140 the membership's
``expires`` is the only clean-up (warned once). The membership is refreshed before it
expires, and re-sent if it disappears while we think we are in the call.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

import nio

from bot.config import RtcConfig
from bot.log import context
from bot.matrix import rest, sticky
from bot.matrix.rest import DelayIgnored, MatrixHttpError
from bot.rtc import delegation
from bot.rtc import transport as lk_transport
from bot.rtc.membership import (
    DEFAULT_EXPIRE_MS,
    DEFAULT_SLOT_ID,
    LEGACY_TYPE,
    STICKY_KEY,
    STICKY_TYPE,
    CallMembership,
)

log = logging.getLogger(__name__)

DELAYED_EVENTS_FEATURE = "org.matrix.msc4140"
RESTART_EVERY_S = 5.0
#: js: refresh min(expiry, 1 h) after the join, 5 s early.
REFRESH_CAP_S = 3600.0
REFRESH_HEADROOM_S = 5.0
#: Consecutive failures of the keep-alive before an error is reported (js default 10).
MAX_FAILURES = 10
#: re-joining after our membership vanished is retried, waiting up to this long between tries
REJOIN_RETRY_MAX_S = 30.0

_warned_no_delayed_events = False
_warned_no_sticky_events = False


def membership_state_key(user_id: str, device_id: str, room_version: str) -> str:
    """js makeMembershipStateKey for the default slot; "_" unless MSC3757/3779 rooms."""
    base = f"{user_id}_{device_id}_m.call"
    if room_version.startswith(("org.matrix.msc3757", "org.matrix.msc3779")):
        return base
    return f"_{base}"


class MembershipManager:
    def __init__(
        self,
        client: nio.AsyncClient,
        room_id: str,
        cfg: RtcConfig,
        on_error: Callable[[Exception], None],
        clock: Callable[[], float] = time.time,
        on_rejoined: Callable[[], None] | None = None,
    ) -> None:
        self.client = client
        self.room_id = room_id
        self.cfg = cfg
        self.on_error = on_error
        self.on_rejoined = on_rejoined
        self._clock = clock
        self.transport: dict[str, Any] | None = None
        self.joined = False
        #: whether our membership is a sticky rtc.member event (decided by prepare())
        self.sticky = False
        #: legacy: "{user}:{device}"; sticky: a fresh UUID per join, as Element Call does
        self.member_id = f"{client.user_id}:{client.device_id}"
        self.delayed_leave_supported: bool | None = None
        self._delay_id: str | None = None
        self._delay_ms = cfg.delayed_leave_ms
        self._created_ts: int | None = None
        self._started = 0.0
        self._iteration = 1
        self._seen_own = False
        self._keepalive: asyncio.Task[None] | None = None
        self._rejoin: asyncio.Task[None] | None = None
        self._delegating: asyncio.Task[bool] | None = None
        #: whether the JWT service took our delayed leave (bot.rtc.delegation)
        self.delegated = False
        self._failures = 0
        self._ctx = context(room=room_id)

    @property
    def state_key(self) -> str:
        room = self.client.rooms.get(self.room_id)
        version = room.room_version if room is not None else "1"
        return membership_state_key(self.client.user_id, self.client.device_id, version)

    async def prepare(self) -> str | None:
        """Decide the membership format for the next join; the sticky member ID, if sticky."""
        global _warned_no_sticky_events
        features = await rest.unstable_features(self.client)
        self.delayed_leave_supported = bool(features.get(DELAYED_EVENTS_FEATURE))
        wanted = self.cfg.membership_format == "sticky"
        # js refuses sticky memberships without both features (Unsupported…EndpointError).
        self.sticky = wanted and self.delayed_leave_supported and bool(features.get(sticky.FEATURE))
        if wanted and not self.sticky and not _warned_no_sticky_events:
            log.warning(
                "the homeserver lacks sticky or delayed events (MSC4354, MSC4140): "
                "sending the legacy membership instead",
                extra=self._ctx,
            )
            _warned_no_sticky_events = True
        if self.sticky:
            self.member_id = str(uuid.uuid4())
            return self.member_id
        self.member_id = f"{self.client.user_id}:{self.client.device_id}"
        return None

    def content(self, iteration: int = 1) -> dict[str, Any]:
        assert self.transport is not None
        if self.sticky:
            # As matrix-js-sdk 43 (the reference) sends it: no livekit_alias, versions [].
            # rtc_transports is the same list in the shape js's later develop branch reads.
            transport = {k: v for k, v in self.transport.items() if k != "livekit_alias"}
            return {
                "slot_id": DEFAULT_SLOT_ID,
                "application": {"type": "m.call", "m.call.intent": "audio"},
                # membership: MSC4143's latest text reads it; js 43 ignores it.
                "member": {
                    "user_id": self.client.user_id,
                    "device_id": self.client.device_id,
                    "id": self.member_id,
                    "membership": "join",
                },
                "transports": {"published": [transport], "can_subscribe": ["livekit"]},
                "rtc_transports": [transport],
                "versions": [],
                STICKY_KEY: self.member_id,
            }
        focus = {**self.transport, "livekit_alias": self.room_id}
        content: dict[str, Any] = {
            "application": "m.call",
            "call_id": "",
            "scope": "m.room",
            "device_id": self.client.device_id,
            "membershipID": f"{self.client.user_id}:{self.client.device_id}",
            "expires": DEFAULT_EXPIRE_MS * iteration,
            "m.call.intent": "audio",
            "focus_active": {"type": "livekit", "focus_selection": "multi_sfu"},
            "foci_preferred": [focus],
        }
        if self._created_ts is not None:
            content["created_ts"] = self._created_ts
        return content

    # ------------------------------------------------------------------ join

    async def join(self, transport: dict[str, Any]) -> str:
        """Schedule the delayed leave, send the membership, start the keep-alive."""
        self.transport = transport
        await self._stop_tasks()
        if self._delay_id is not None:
            await self._delayed_action("cancel")
        # A join says when it happened. matrix-js-sdk leaves created_ts out of a first join
        # (the event's own time serves), but then a join whose content equals the current
        # state (the bot restarted before its delayed leave fired) is deduplicated by Synapse:
        # no new event, so the other members neither see us re-join nor send us their keys.
        self._created_ts = int(self._clock() * 1000)
        self._seen_own = False
        await self._schedule_delayed_leave()
        event_id = await self._send(self.content())
        self.joined = True
        self._started, self._iteration, self._failures = self._clock(), 1, 0
        if self._delay_id is not None:
            await self._restart_delayed_leave()
            self._delegate_leave()
        self._keepalive = asyncio.create_task(
            self._keep_alive(), name=f"rtc-keepalive-{self.room_id}"
        )
        log.info("sent our call membership", extra=self._ctx)
        return event_id

    def _delegate_leave(self) -> None:
        """Hand the delayed leave to the JWT service too, as Element Call does (sticky
        memberships on a JWT service only: see bot.rtc.delegation). In the background: a
        slow service must not hold up the join."""
        self.delegated = False
        service = lk_transport.service_url(self.transport or {})
        if not self.sticky or self.cfg.mints_tokens or service is None or not self._delay_id:
            return
        leave = delegation.DelayedLeave(
            self.room_id, DEFAULT_SLOT_ID, self.member_id, self._delay_id, self._delay_ms
        )

        async def run() -> bool:
            self.delegated = await delegation.delegate(self.client, service, leave)
            return self.delegated

        self._delegating = asyncio.create_task(run(), name=f"rtc-delegate-{self.room_id}")

    def leave_content(self) -> dict[str, Any]:
        # js 43 StickyEventMembershipManager: the slot and the sticky key, nothing else.
        return {"slot_id": DEFAULT_SLOT_ID, STICKY_KEY: self.member_id} if self.sticky else {}

    async def _send(self, content: dict[str, Any], delay_ms: int | None = None) -> str:
        """Send our membership (or its leave); an event ID, or a delay ID if delayed."""
        if self.sticky:
            return await sticky.send(
                self.client, self.room_id, STICKY_TYPE, content, delay_ms=delay_ms
            )
        if delay_ms is not None:
            return await rest.put_delayed_state(
                self.client, self.room_id, LEGACY_TYPE, self.state_key, content, delay_ms
            )
        return await rest.put_state(self.client, self.room_id, LEGACY_TYPE, self.state_key, content)

    async def _schedule_delayed_leave(self) -> None:
        global _warned_no_delayed_events
        if self.delayed_leave_supported is None:
            await self.prepare()
        if not self.delayed_leave_supported:
            if not _warned_no_delayed_events:
                log.warning(
                    "the homeserver lacks delayed events (MSC4140): if the bot dies, "
                    "its call membership stays until it expires (4 h)",
                    extra=self._ctx,
                )
                _warned_no_delayed_events = True
            return
        for _ in range(2):
            try:
                self._delay_id = await self._send(self.leave_content(), self._delay_ms)
                return
            except DelayIgnored:
                # The leave went out at once (the join that follows replaces it); without
                # delayed events, expiry is the only clean-up, as when MSC4140 is missing.
                log.warning(
                    "the homeserver ignored the delay of our delayed leave (no delay_id): "
                    "if the bot dies, its membership stays until it expires",
                    extra=self._ctx,
                )
                self.delayed_leave_supported = False
                return
            except MatrixHttpError as e:
                max_delay = e.body.get("org.matrix.msc4140.max_delay")
                if isinstance(max_delay, int) and 0 < max_delay < self._delay_ms:
                    self._delay_ms = max_delay  # js: lower the delay to the server's maximum
                    continue
                # js sends the join anyway; expiry is then the only clean-up.
                log.warning("could not schedule the delayed leave: %s", e, extra=self._ctx)
                return

    async def _restart_delayed_leave(self) -> None:
        try:
            await rest.delayed_event_action(self.client, self._delay_id or "", "restart")
        except MatrixHttpError as e:
            if e.errcode != "M_NOT_FOUND":
                raise
            # Sent already (or cancelled by our own state change): schedule a new one.
            self._delay_id = None
            await self._schedule_delayed_leave()
            if self.joined:
                self._delegate_leave()  # the service's job ended with the old delay ID

    # ------------------------------------------------------------------ staying

    async def _keep_alive(self) -> None:
        expiry_s = DEFAULT_EXPIRE_MS / 1000
        while self.joined:
            next_refresh = (
                self._started + min(expiry_s, REFRESH_CAP_S) * self._iteration - REFRESH_HEADROOM_S
            )
            wait = RESTART_EVERY_S if self._delay_id is not None else 60.0
            await asyncio.sleep(max(0.0, min(wait, next_refresh - self._clock())))
            try:
                if self._delay_id is not None:
                    await self._restart_delayed_leave()
                if self._clock() >= next_refresh:
                    self._iteration += 1
                    await self._send(self.content(self._iteration))
                    log.info("refreshed our call membership", extra=self._ctx)
                self._failures = 0
            except Exception as e:  # network, 5xx, 429: keep trying, report when it persists
                self._failures += 1
                log.warning(
                    "keeping the call membership alive failed (%d): %s",
                    self._failures,
                    e,
                    extra=self._ctx,
                )
                if self._failures == MAX_FAILURES:
                    self.on_error(e)

    def own_membership(self, mine: CallMembership | None) -> None:
        """Called after every member recalculation: learn created_ts, re-join if it vanished."""
        if mine is not None:
            self._seen_own = True
            return
        if self.joined and self._seen_own and (self._rejoin is None or self._rejoin.done()):
            log.warning("our call membership disappeared; sending it again", extra=self._ctx)
            self._rejoin = asyncio.create_task(self._rejoin_now())

    async def _rejoin_now(self) -> None:
        # Retried until it works or we leave: after an outage the homeserver may still be
        # coming back (it sent our overdue delayed leave, then a request failed).
        delay = 1.0
        while self.joined:
            try:
                assert self.transport is not None
                await self.join(self.transport)
            except Exception as e:
                log.warning("re-joining the call failed (%s); retrying", e, extra=self._ctx)
                if delay >= REJOIN_RETRY_MAX_S:
                    self.on_error(e)
                await asyncio.sleep(delay)
                delay = min(delay * 2, REJOIN_RETRY_MAX_S)
                continue
            if self.on_rejoined is not None:
                self.on_rejoined()
            return

    # ------------------------------------------------------------------ leaving

    async def leave(self, timeout_s: float = 1.0) -> bool:
        """Leave through the delayed event (or send ``{}``); False if it did not finish in time."""
        was_joined, self.joined = self.joined, False
        await self._stop_tasks()
        if not was_joined:
            return True
        try:
            await asyncio.wait_for(self._send_leave(), timeout_s)
            return True
        except Exception as e:
            log.warning("leaving the call did not complete: %s", e, extra=self._ctx)
            return False

    async def abandon(self, timeout_s: float = 1.0) -> bool:
        """A join cut short (a leave came while it was under way): take back whatever of it
        may have reached the homeserver. A leave is harmless if the join never arrived."""
        self.joined = True
        return await self.leave(timeout_s)

    async def _send_leave(self) -> None:
        if self._delay_id is not None and await self._delayed_action("send"):
            return
        await self._send(self.leave_content())

    async def _delayed_action(self, action: str) -> bool:
        delay_id, self._delay_id = self._delay_id, None
        try:
            await rest.delayed_event_action(self.client, delay_id or "", action)
            return True
        except MatrixHttpError as e:
            if e.errcode == "M_NOT_FOUND":
                return False
            raise

    async def _stop_tasks(self) -> None:
        current = asyncio.current_task()
        for task in (self._keepalive, self._rejoin, self._delegating):
            if task is not None and task is not current and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        self._keepalive = None
