"""Rooms' time zones (``!timezone``) in a fleet: kept in the shared database, so that the
leader after a failover reads ``!schedule`` times in the zone the room chose."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from pathlib import Path

from bot.fleet.db import FleetDb
from bot.schedule.timezones import RoomTimezones, find_zone

log = logging.getLogger(__name__)


class FleetRoomTimezones(RoomTimezones):
    """Only the leader answers ``!timezone`` and ``!schedule``: it reads the zones when it
    takes the lead, and writes each one set."""

    def __init__(
        self, db: FleetDb, path: Path, default: str = "UTC", rooms: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(path, default, rooms)
        self.db = db
        self._writes: set[asyncio.Task[None]] = set()

    async def load(self) -> None:
        """This worker's own earlier zones (a single bot turned worker) join the database's;
        then the database's are the ones in force."""
        for room, zone in self._read().items():
            await self.db.set_room_zone(room, zone, replace=False)
        self._set = {r: z for r, z in (await self.db.room_zones()).items() if find_zone(z)}

    def set(self, room_id: str, name: str) -> None:
        self._load()[room_id] = name
        task = asyncio.get_running_loop().create_task(self._write(room_id, name))
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    async def _write(self, room_id: str, name: str) -> None:
        try:
            await self.db.set_room_zone(room_id, name)
        except Exception:
            log.exception("could not keep the room's time zone in the fleet database")
