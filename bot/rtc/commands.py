"""``!join`` and ``!leave``, and the call lines of ``!status``."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from bot.commands.registry import CommandContext, command
from bot.errors import CommandError
from bot.log import context
from bot.matrix.rest import MatrixHttpError
from bot.outbound import display_origin
from bot.rtc import transport as lk_transport
from bot.rtc.capacity import JoinCancelled, OnQueued, calls
from bot.rtc.focus import RtcError
from bot.rtc.manager import MatrixRTCSessionManager
from bot.rtc.session import MatrixRTCSession

log = logging.getLogger(__name__)

LEAVE_TIMEOUT_S = 5.0


MediaState = Callable[[str, str], str | None]
#: Extra lines about a room's call (e.g. its plugins), for !status.
CallExtras = Callable[[str], list[str]]


class CallCommands:
    def __init__(
        self,
        rtc: MatrixRTCSessionManager,
        media_state: MediaState | None = None,
        extras: CallExtras | None = None,
    ):
        self.rtc = rtc
        self.media_state = media_state
        self.extras = extras
        #: joins waiting for a free call slot (rtc.when_full = "queue"): they wait in the
        #: background, holding no command slot, until a slot frees, !leave or the bot stops
        self._queued: set[asyncio.Task[Any]] = set()

    @command(help="Join this room's call, or start one")
    async def join(self, ctx: CommandContext) -> None:
        session = self.rtc.get_room_session(ctx.room_id)
        if session.is_joined:
            raise CommandError("I am already in this room's call.")
        queued = asyncio.Event()

        async def on_queued(position: int) -> None:
            slots = self.rtc.slots
            await ctx.reply(
                f"I am in {calls(slots.in_use)}, the most I take at once (rtc.max_calls = "
                f"{slots.max_calls}). I will join this one when one of them ends "
                f"({_ordinal(position)} in line); {ctx.prefix}leave withdraws it."
            )
            queued.set()

        task = asyncio.create_task(self._join(ctx, session, on_queued))
        waiting = asyncio.create_task(queued.wait())
        await asyncio.wait({task, waiting}, return_when=asyncio.FIRST_COMPLETED)
        waiting.cancel()
        if task.done():
            task.result()  # the reply, or the CommandError saying why not
            return
        self._queued.add(task)
        task.add_done_callback(self._queued_done(ctx))

    async def _join(
        self, ctx: CommandContext, session: MatrixRTCSession, on_queued: OnQueued
    ) -> None:
        me = session.client.user_id

        def others() -> int:
            return sum(m.user_id != me for m in session.memberships)

        # Counted before joining: our own membership may come back from the sync before we
        # reply, and must not make it look as if someone else had started the call.
        started = "Started" if not others() else "Joined"
        try:
            access = await session.join(on_queued=on_queued)
        except JoinCancelled:
            return  # withdrawn by !leave, which said so
        except (RtcError, MatrixHttpError) as e:
            raise CommandError(str(e)) from None
        # Scheme, host and port only: the URL is a member's choice and may carry anything.
        service = display_origin(lk_transport.service_url(access.transport) or "?")
        await ctx.reply(f"{started} the call (SFU via {service}; {others()} other members).")

    def _queued_done(self, ctx: CommandContext) -> Callable[[asyncio.Task[Any]], None]:
        """A queued join ended: say why, if it failed (the reply of success is sent)."""

        def done(task: asyncio.Task[Any]) -> None:
            self._queued.discard(task)
            if task.cancelled():
                return
            error = task.exception()
            if error is None:
                return  # joined, and said so
            text = str(error) if isinstance(error, CommandError) else "Joining the call failed."
            if not isinstance(error, CommandError):
                log.error("a queued join failed", exc_info=error, extra=context(room=ctx.room_id))
            reply = asyncio.create_task(ctx.reply(text))
            self._queued.add(reply)
            reply.add_done_callback(self._queued.discard)

        return done

    @command(help="Leave this room's call")
    async def leave(self, ctx: CommandContext) -> None:
        session = self.rtc.get_room_session(ctx.room_id)
        if not session.is_joined and self.rtc.slots.cancel(
            ctx.room_id, f"The join was withdrawn with {ctx.prefix}leave."
        ):
            await ctx.reply("I will not join this room's call after all (I was waiting).")
            return
        if not session.is_joined and await session.cancel_join():
            await ctx.reply("I stopped joining this room's call.")
            return
        if not session.is_joined:
            raise CommandError("I am not in this room's call.")
        if await session.leave(LEAVE_TIMEOUT_S):
            await ctx.reply("Left the call.")
        else:
            await ctx.reply(
                "Left the call; the homeserver did not confirm in time, so my "
                "membership may linger until it expires."
            )

    def status_lines(self) -> list[str]:
        """One block per call the bot is in or sees, for ``!status``; first how many calls
        the bot is in against its limit (when it is in any, or some wait or were refused)."""
        lines = []
        for s in self.rtc.active_sessions() + self._joined_only():
            lines += describe(s, self.media_state)
            if self.extras is not None:
                lines += self.extras(s.room_id)
        slots = self.rtc.slots
        if slots.in_use or slots.waiting or slots.refused:
            lines.insert(0, slots.summary())
        return lines

    def _joined_only(self) -> list[MatrixRTCSession]:
        return [s for s in self.rtc.joined_sessions() if not s.memberships]


def describe(session: MatrixRTCSession, media_state: MediaState | None = None) -> list[str]:
    me = (session.client.user_id, session.client.device_id)
    if session.is_joined:
        key = session.own_key
        url = lk_transport.service_url(session.sfu.transport) if session.sfu else None
        focus = display_origin(url) if isinstance(url, str) else "?"
        head = (
            f"Call in {session.room_id}: joined, focus {focus}, "
            f"my key index {key.index if key else 'none yet'}"
        )
    else:
        head = f"Call in {session.room_id}: not joined"
    lines = [head]
    for m in session.memberships:
        if m.device_key == me:
            state = "me"
        elif session.is_joined:
            state = "key received" if session.has_key_from(m) else "no key yet"
        else:
            state = "member"
        media = media_state(session.room_id, m.rtc_backend_identity) if media_state else None
        if media and m.device_key != me:
            state += f", media: {media}"
        lines.append(f"  {m.user_id} ({m.device_id}): {state}")
    declined = session.notifications.declines()  # MSC4310 declines of the latest ring
    if declined:
        lines.append("  declined: " + ", ".join(d.user_id for d in declined))
    return lines


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"
