"""MatrixRTC slots (``org.matrix.msc4143.rtc.slot`` state events, state key = slot id).

matrix-js-sdk 43 reads them (js ``utils.ts`` ``isSlotClosed``, ``types.ts``
``RtcSlotEventContent``): ``{status: "open"|"closed", application: {type, ...},
encryption: {type: "org.matrix.msc4143.per_member"}}``. A slot is closed when its status
is not "open" or its application is not the slot's; js joins a slot that has no event at
all (Element Web opens slots only behind a labs flag), and so does the bot. Element's Rust
crate treats a missing slot as closed: the bot does not follow that, or it could join no
call that js clients start today.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from bot.rtc.focus import RtcError

SLOT_TYPE = "org.matrix.msc4143.rtc.slot"
SLOT_TYPE_STABLE = "m.rtc.slot"
SLOT_TYPES = (SLOT_TYPE, SLOT_TYPE_STABLE)


@dataclass(frozen=True)
class RtcSlot:
    slot_id: str
    open: bool
    application: str | None
    encryption: str | None


def parse_slot(event: Mapping[str, Any]) -> RtcSlot | None:
    """A slot state event; None if it is not one (never raises on network input)."""
    slot_id, content = event.get("state_key"), event.get("content")
    if event.get("type") not in SLOT_TYPES or not isinstance(slot_id, str):
        return None
    if not isinstance(content, dict):
        content = {}
    app = content.get("application")
    app_type = app.get("type") if isinstance(app, dict) else None
    enc = content.get("encryption")
    enc_type = enc.get("type") if isinstance(enc, dict) else None
    expected = slot_id.split("#", 1)[0]
    # js isSlotClosed: not "open", or no application object of the slot's type
    is_open = content.get("status") == "open" and app_type == expected
    return RtcSlot(
        slot_id=slot_id,
        open=is_open,
        application=app_type if isinstance(app_type, str) else None,
        encryption=enc_type if isinstance(enc_type, str) else None,
    )


def check_joinable(slot: RtcSlot | None, slot_id: str) -> None:
    """RtcError (fit for the room) if the slot is closed; a missing slot may be joined."""
    if slot is not None and slot.slot_id == slot_id and not slot.open:
        raise RtcError(
            "This room's call is closed (its MatrixRTC slot is marked closed), so I will "
            "not join it. Someone allowed to change the room's settings can open it again."
        )
