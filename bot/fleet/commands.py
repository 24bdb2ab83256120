"""``!join`` in a fleet: the leader assigns the call to a worker, which joins and says so."""

from __future__ import annotations

from bot.commands.registry import CommandContext, command
from bot.errors import CommandError
from bot.fleet.worker import FleetWorker, NoFreeWorker
from bot.rtc.commands import CallCommands, CallExtras, MediaState
from bot.rtc.manager import MatrixRTCSessionManager


class FleetCallCommands(CallCommands):
    """``!leave`` and the call lines of ``!status`` as in one process (the worker holding the
    room's call answers them); ``!join`` goes through the leader's assignment."""

    def __init__(
        self,
        rtc: MatrixRTCSessionManager,
        fleet: FleetWorker,
        media_state: MediaState | None = None,
        extras: CallExtras | None = None,
    ) -> None:
        super().__init__(rtc, media_state, extras)
        self.fleet = fleet

    @command(help="Join this room's call, or start one")
    async def join(self, ctx: CommandContext) -> None:
        session = self.rtc.get_room_session(ctx.room_id)
        if session.is_joined or session.joining:
            raise CommandError("I am already in this room's call.")
        try:
            await self.fleet.assign(ctx.room_id)
        except NoFreeWorker as e:
            raise CommandError(str(e)) from None
        # The chosen worker says "Started/Joined the call" once it is in.

    def status_lines(self) -> list[str]:
        return [*super().status_lines(), *self.fleet.status_lines()]
