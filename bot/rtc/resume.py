"""The calls the bot is in, kept on disk so that after a crash it can go back into them.

``<data_dir>/joined_calls.json`` (0600) holds, per room, the name of the call's folder (the UTC
time the bot first joined). It is written when the bot joins and when it leaves; a crash leaves
it behind. At the next start the bot re-joins those calls that still have other members
(``rtc.rejoin_after_restart``), and a re-joined call keeps its folder, so the recorder and the
transcriber carry on where they were. Calls that ended meanwhile are forgotten.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bot.files import write_private_json
from bot.log import context
from bot.rtc.manager import MatrixRTCSessionManager
from bot.rtc.session import JoinStateChanged, MatrixRTCSession

log = logging.getLogger(__name__)

FILE_NAME = "joined_calls.json"
#: the folder name's form (bot.media.calls.Call): sortable, safe on every file system
FOLDER_TIME = "%Y%m%dT%H%M%SZ"


@dataclass(frozen=True)
class CallFolder:
    """Which folder a joined call writes to, and whether it is one from before a restart."""

    name: str
    resumed: bool = False


class JoinedCalls:
    """Remembers the rooms whose call the bot is in, and the folder each call writes to."""

    def __init__(self, data_dir: Path, rtc: MatrixRTCSessionManager) -> None:
        self.path = data_dir / FILE_NAME
        self.rtc = rtc
        #: calls the bot was in when it last stopped without leaving them: room -> folder
        self.before_restart: dict[str, str] = _read(self.path)
        self._resuming: dict[str, str] = {}
        self._now: dict[str, CallFolder] = {}
        rtc.session_created.connect(self.watch)

    def watch(self, session: MatrixRTCSession) -> None:
        def on_join_state(change: JoinStateChanged) -> None:
            if change.joined:
                self.folder_for(session.room_id)
            elif self._now.pop(session.room_id, None) is not None:
                self._save()

        session.join_state_changed.connect(on_join_state)

    def folder_for(self, room_id: str) -> CallFolder:
        """The folder of the call the bot is in (or has just joined) in ``room_id``."""
        folder = self._now.get(room_id)
        if folder is None:
            earlier = self._resuming.pop(room_id, None)
            if earlier is not None:
                folder = CallFolder(earlier, resumed=True)
            else:
                folder = CallFolder(time.strftime(FOLDER_TIME, time.gmtime()))
            self._now[room_id] = folder
            self._save()
        return folder

    async def rejoin(self) -> list[str]:
        """Re-join the calls of before the restart that are still going on; the rooms."""
        calls, self.before_restart = self.before_restart, {}
        rejoined = []
        for room_id, folder in calls.items():
            ctx = context(room=room_id)
            session = self.rtc.get_room_session(room_id)
            me = session.client.user_id
            others = sorted({m.user_id for m in session.memberships if m.user_id != me})
            if not others:
                log.info("the call the bot was in before the restart has ended", extra=ctx)
                continue
            self._resuming[room_id] = folder
            try:
                await session.join()
            except Exception as e:
                self._resuming.pop(room_id, None)
                log.warning("could not re-join the call after the restart: %s", e, extra=ctx)
                continue
            log.info("re-joined the call the bot was in before the restart", extra=ctx)
            rejoined.append(room_id)
        self._save()
        return rejoined

    def forget_earlier(self) -> None:
        """Do not re-join the calls of before the restart (``rtc.rejoin_after_restart`` off)."""
        self.before_restart = {}
        self._save()

    def _save(self) -> None:
        calls: dict[str, Any] = {room: f.name for room, f in self._now.items()}
        # Not yet re-joined (or re-join still under way): keep them for the next start.
        calls.update({r: f for r, f in self.before_restart.items() if r not in calls})
        calls.update({r: f for r, f in self._resuming.items() if r not in calls})
        write_private_json(self.path, {"calls": calls})


def _read(path: Path) -> dict[str, str]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        log.warning("cannot read %s (%s); not re-joining earlier calls", path, e)
        return {}
    calls = data.get("calls") if isinstance(data, dict) else None
    if not isinstance(calls, dict):
        return {}
    # Only names of the form the bot writes: the file is ours, but a folder name goes into a
    # path, so nothing else is trusted.
    return {
        room: name
        for room, name in calls.items()
        if isinstance(room, str) and isinstance(name, str) and _is_folder_name(name)
    }


def _is_folder_name(name: str) -> bool:
    try:
        time.strptime(name, FOLDER_TIME)
    except ValueError:
        return False
    return True
