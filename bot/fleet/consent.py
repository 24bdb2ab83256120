"""Opt-outs in a fleet: kept in the shared database, so that whichever worker records a call
(also one that took it over) leaves out everyone who opted out on any worker."""

from __future__ import annotations

from pathlib import Path

from bot.consent import OptOuts
from bot.fleet.db import FleetDb


class FleetOptOuts(OptOuts):
    """``opted_out`` is asked per frame, so it reads memory: the database's rows, read at
    start-up and again at every tick of the worker (at once after a NOTIFY)."""

    def __init__(self, db: FleetDb, local: Path) -> None:
        super().__init__(local)
        self.db = db
        self._rooms = {}

    async def load(self) -> None:
        """At start-up: first this worker's own earlier opt-outs (a single bot turned
        worker: nobody's choice is lost), then everyone's."""
        local = self._read()
        for room, users in local.items():
            for user in users:
                await self.db.set_optout(room, user, True)
        self.refresh(await self.db.optouts())

    def refresh(self, rows: list[tuple[str, str]]) -> None:
        rooms: dict[str, set[str]] = {}
        for room, user in rows:
            rooms.setdefault(room, set()).add(user)
        self._rooms = rooms

    async def set(self, room_id: str, user_id: str, out: bool) -> bool:
        users = self._load().setdefault(room_id, set())
        changed = (user_id in users) != out
        if out:
            users.add(user_id)  # in force here at once, before the database has it
        else:
            users.discard(user_id)
        await self.db.set_optout(room_id, user_id, out)
        return changed
