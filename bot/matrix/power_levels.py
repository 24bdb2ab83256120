"""Room power levels, including room version 12's privileged creators.

Since room version 12 (MSC4289) the creators of a room (the sender of ``m.room.create``
and its ``additional_creators``) have a power level above every other, and they are not
listed in ``m.room.power_levels``; nio 0.26 does not know this and reports 0 for them.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

#: The level we report for privileged creators ("infinite" in the spec).
CREATOR_POWER_LEVEL = 2**53 - 1


def creators_are_privileged(room_version: str) -> bool:
    """Whether this room version gives creators infinite power (v12 and later)."""
    return room_version.isdigit() and int(room_version) >= 12


def creators_from_state(events: Iterable[dict[str, Any]]) -> frozenset[str]:
    """The creators named by the ``m.room.create`` event among raw state events."""
    for ev in events:
        if ev.get("type") == "m.room.create" and ev.get("state_key") == "":
            extra = ev.get("content", {}).get("additional_creators", [])
            names = [ev.get("sender"), *(extra if isinstance(extra, list) else [])]
            return frozenset(n for n in names if isinstance(n, str))
    return frozenset()
