"""Each room's time zone: set with ``!timezone``, else ``[schedule.room_timezones]``, else
``schedule.timezone``.

A zone set in the room is kept in ``<data_dir>/room_timezones.json``, readable only by the
bot's user, written atomically. Changing a room's zone does not move jobs already scheduled:
each keeps the zone it was scheduled in (``!schedules`` shows it).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from bot.files import write_private_json

log = logging.getLogger(__name__)


def find_zone(name: str) -> ZoneInfo | None:
    """The zone of an IANA name (``Europe/Berlin``, ``UTC``), or None if there is none."""
    if not name or len(name) > 64 or name.startswith(("/", ".")) or ".." in name:
        return None
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        return None


class RoomTimezones:
    def __init__(
        self, path: Path, default: str = "UTC", rooms: Mapping[str, str] | None = None
    ) -> None:
        self.path = path
        self.default = default
        self.configured = dict(rooms or {})
        self._set: dict[str, str] | None = None  # read on first use

    def _load(self) -> dict[str, str]:
        if self._set is None:
            self._set = self._read()
        return self._set

    def _read(self) -> dict[str, str]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as e:
            log.error("cannot read %s (%s); using the configured time zones", self.path, e)
            return {}
        rooms = data.get("rooms", {}) if isinstance(data, dict) else {}
        return {
            r: z
            for r, z in rooms.items()
            if isinstance(r, str) and isinstance(z, str) and find_zone(z)
        }

    def name(self, room_id: str) -> str:
        return self._load().get(room_id) or self.configured.get(room_id) or self.default

    def get(self, room_id: str) -> ZoneInfo:
        return find_zone(self.name(room_id)) or ZoneInfo("UTC")

    def set(self, room_id: str, name: str) -> None:
        self._load()[room_id] = name
        self._save()

    def _save(self) -> None:
        write_private_json(self.path, {"rooms": self._load()})
