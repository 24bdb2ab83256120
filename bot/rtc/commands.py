"""``!join`` and ``!leave``, and the call lines of ``!status``."""

from __future__ import annotations

from collections.abc import Callable

from bot.commands.registry import CommandContext, command
from bot.errors import CommandError
from bot.matrix.rest import MatrixHttpError
from bot.rtc.focus import RtcError
from bot.rtc.manager import MatrixRTCSessionManager
from bot.rtc.session import MatrixRTCSession

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

    @command(help="Join this room's call, or start one")
    async def join(self, ctx: CommandContext) -> None:
        session = self.rtc.get_room_session(ctx.room_id)
        if session.is_joined:
            raise CommandError("I am already in this room's call.")
        try:
            access = await session.join()
        except (RtcError, MatrixHttpError) as e:
            raise CommandError(str(e)) from None
        others = len([m for m in session.memberships if m.user_id != ctx.sender]) or 0
        started = "Started" if not session.memberships else "Joined"
        service = access.transport.get("livekit_service_url", "?")
        await ctx.reply(f"{started} the call (SFU via {service}; {others} other members).")

    @command(help="Leave this room's call")
    async def leave(self, ctx: CommandContext) -> None:
        session = self.rtc.get_room_session(ctx.room_id)
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
        """One block per call the bot is in or sees, for ``!status``."""
        lines = []
        for s in self.rtc.active_sessions() + self._joined_only():
            lines += describe(s, self.media_state)
            if self.extras is not None:
                lines += self.extras(s.room_id)
        return lines

    def _joined_only(self) -> list[MatrixRTCSession]:
        return [s for s in self.rtc.joined_sessions() if not s.memberships]


def describe(session: MatrixRTCSession, media_state: MediaState | None = None) -> list[str]:
    me = (session.client.user_id, session.client.device_id)
    if session.is_joined:
        key = session.own_key
        focus = (session.sfu.transport.get("livekit_service_url") if session.sfu else None) or "?"
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
    return lines
