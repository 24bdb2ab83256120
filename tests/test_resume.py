"""bot.rtc.resume: the calls the bot is in survive a crash on disk, and are re-joined."""

from __future__ import annotations

import json
import stat
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from bot.rtc.resume import FILE_NAME, JoinedCalls
from bot.rtc.session import JoinStateChanged
from bot.signals import Signal

BOT = "@bot:x"


@dataclass
class FakeSession:
    room_id: str
    members: list[str] = field(default_factory=list)
    fail: bool = False
    joins: int = 0
    client: Any = field(default_factory=lambda: SimpleNamespace(user_id=BOT))
    join_state_changed: Signal[JoinStateChanged] = field(
        default_factory=lambda: Signal("join_state_changed")
    )

    @property
    def memberships(self) -> list[Any]:
        return [SimpleNamespace(user_id=u) for u in self.members]

    async def join(self) -> None:
        self.joins += 1
        if self.fail:
            raise RuntimeError("no SFU")
        self.join_state_changed.emit(JoinStateChanged(True))

    def leave(self) -> None:
        self.join_state_changed.emit(JoinStateChanged(False))


class FakeRtc:
    def __init__(self, sessions: dict[str, FakeSession]) -> None:
        self.sessions = sessions
        self.session_created: Signal[Any] = Signal("session_created")

    def get_room_session(self, room_id: str) -> FakeSession:
        session = self.sessions[room_id]
        self.session_created.emit(session)
        return session


def saved(data_dir: Path) -> dict[str, str]:
    return json.loads((data_dir / FILE_NAME).read_text())["calls"]


async def test_a_joined_call_is_on_disk_until_the_bot_leaves(tmp_path: Path) -> None:
    rtc = FakeRtc({"!a:x": FakeSession("!a:x", [BOT, "@alice:x"])})
    calls = JoinedCalls(tmp_path, rtc)  # type: ignore[arg-type]
    session = rtc.get_room_session("!a:x")
    await session.join()
    folder = calls.folder_for("!a:x")
    assert not folder.resumed
    assert saved(tmp_path) == {"!a:x": folder.name}
    assert stat.S_IMODE((tmp_path / FILE_NAME).stat().st_mode) == 0o600
    session.leave()
    assert saved(tmp_path) == {}


async def test_after_a_crash_calls_still_going_on_are_rejoined_in_their_folder(
    tmp_path: Path,
) -> None:
    (tmp_path / FILE_NAME).write_text(
        json.dumps(
            {
                "calls": {
                    "!on:x": "20261203T100000Z",
                    "!over:x": "20261203T090000Z",  # only the bot's stale membership is left
                    "!broken:x": "20261203T080000Z",
                    "!evil:x": "../../etc",  # not a folder name the bot writes
                }
            }
        )
    )
    rtc = FakeRtc(
        {
            "!on:x": FakeSession("!on:x", [BOT, "@alice:x"]),
            "!over:x": FakeSession("!over:x", [BOT]),
            "!broken:x": FakeSession("!broken:x", ["@bob:x"], fail=True),
        }
    )
    calls = JoinedCalls(tmp_path, rtc)  # type: ignore[arg-type]
    assert "!evil:x" not in calls.before_restart
    assert await calls.rejoin() == ["!on:x"]
    folder = calls.folder_for("!on:x")
    assert folder.name == "20261203T100000Z" and folder.resumed
    assert rtc.sessions["!over:x"].joins == 0 and rtc.sessions["!broken:x"].joins == 1
    assert saved(tmp_path) == {"!on:x": "20261203T100000Z"}


async def test_rejoin_after_restart_off_forgets_the_earlier_calls(tmp_path: Path) -> None:
    (tmp_path / FILE_NAME).write_text(json.dumps({"calls": {"!on:x": "20261203T100000Z"}}))
    rtc = FakeRtc({"!on:x": FakeSession("!on:x", ["@alice:x"])})
    calls = JoinedCalls(tmp_path, rtc)  # type: ignore[arg-type]
    calls.forget_earlier()
    assert saved(tmp_path) == {}
    session = rtc.get_room_session("!on:x")
    await session.join()
    assert not calls.folder_for("!on:x").resumed


def test_an_unreadable_file_means_no_calls_to_rejoin(tmp_path: Path) -> None:
    (tmp_path / FILE_NAME).write_text("{not json")
    calls = JoinedCalls(tmp_path, FakeRtc({}))  # type: ignore[arg-type]
    assert calls.before_restart == {}
