"""bot.media.active_call: a joined call's media side starts and stops in order, and a media
connection that fails is retried, told once and shown in !status."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from bot.media import active_call, calls
from bot.media.active_call import ActiveCall
from bot.media.router import FrameRouter
from bot.plugin import CallContext, Plugin
from bot.signals import Signal
from tests.peer import wait_until


class FakeMedia:
    """Connects when ``release`` is set; fails the first ``failures`` attempts."""

    def __init__(self, failures: int = 0, blocked: bool = False) -> None:
        self.failures = failures
        self.release = asyncio.Event()
        if not blocked:
            self.release.set()
        self.attempts = 0
        self.connected = False
        self.stopped = False

    async def start(self) -> None:
        self.attempts += 1
        await self.release.wait()
        if self.attempts <= self.failures:
            raise ConnectionError("sfu.example.org refused")
        self.connected = True

    async def stop(self) -> None:
        self.stopped = True
        self.connected = False


class Probe(Plugin):
    name = "probe"

    def __init__(self, fail_start: bool = False) -> None:
        self.fail_start = fail_start
        self.log: list[str] = []

    async def on_call_start(self, call: CallContext) -> None:
        self.log.append("start")
        if self.fail_start:
            raise RuntimeError("broken plugin")

    async def on_call_end(self) -> None:
        self.log.append("end")


def make(media: FakeMedia, *plugins: Plugin) -> tuple[ActiveCall, list[str]]:
    told: list[str] = []

    async def notify(text: str) -> None:
        told.append(text)

    call = ActiveCall(
        "!r:x",
        media,
        FrameRouter(),
        list(plugins),
        lambda worker: SimpleNamespace(room_id="!r:x"),  # type: ignore[arg-type, return-value]
        notify,
        str,
    )
    return call, told


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(active_call, "RETRY_FIRST_S", 0.01)
    monkeypatch.setattr(active_call, "RETRY_MAX_S", 0.02)


async def test_a_leave_during_the_connection_closes_it_and_starts_no_plugin() -> None:
    media, probe = FakeMedia(blocked=True), Probe()
    call, _ = make(media, probe)
    starting = asyncio.create_task(call.start())
    await asyncio.sleep(0.01)
    stopping = asyncio.create_task(call.stop())
    await asyncio.sleep(0.01)
    assert not stopping.done()  # waits for the attempt under way, so it can close it
    media.release.set()
    await asyncio.wait_for(asyncio.gather(starting, stopping), 2)
    assert media.stopped and not media.connected
    assert probe.log == []


async def test_a_failing_connection_is_retried_told_once_and_shown() -> None:
    media, probe = FakeMedia(failures=3, blocked=True), Probe()
    call, told = make(media, probe)
    starting = asyncio.create_task(call.start())
    await asyncio.sleep(0.01)
    assert call.state.line() is None  # the first attempt is still under way
    media.release.set()
    await asyncio.wait_for(starting, 2)
    assert media.attempts == 4 and media.connected
    assert told == [
        "I joined the call but cannot reach its media server (sfu.example.org refused); "
        "I keep trying, and hear nothing until then.",
        "I can hear the call now.",
    ]
    assert probe.log == ["start"]
    assert call.state.line() is None
    await call.stop()
    assert probe.log == ["start", "end"]


async def test_status_says_the_media_is_not_connected_while_retrying() -> None:
    media = FakeMedia(failures=10**6)
    call, told = make(media, Probe())
    starting = asyncio.create_task(call.start())
    await wait_until(lambda: media.attempts >= 3, 2, "three attempts")
    line = call.state.line()
    assert line is not None and "not connected to the SFU" in line and "refused" in line
    assert len(told) == 1
    await asyncio.wait_for(call.stop(), 2)  # a leave between attempts ends the retries
    await asyncio.wait_for(starting, 2)
    assert media.stopped


async def test_a_plugin_that_fails_to_start_is_ended_and_others_run() -> None:
    broken, fine = Probe(fail_start=True), Probe()
    call, _ = make(FakeMedia(), broken, fine)
    await call.start()
    await call.stop()
    assert broken.log == ["start", "end"] and fine.log == ["start", "end"]


async def test_the_manager_never_starts_plugins_of_a_call_left_while_connecting(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Found by reading (issue 19): a !leave while media.start() was connecting stopped the
    plugins, then the start went on: the connection stayed open and on_call_start ran on
    stopped plugins."""
    made: list[FakeMedia] = []

    def fake_media(*args: Any, **kwargs: Any) -> FakeMedia:
        made.append(FakeMedia(blocked=True))
        return made[-1]

    monkeypatch.setattr(calls, "CallMedia", fake_media)
    rtc = SimpleNamespace(session_created=Signal("session_created"))
    matrix = SimpleNamespace(data_dir=tmp_path, nio=SimpleNamespace(rooms={}))
    manager = calls.CallMediaManager(matrix, rtc, optouts=None)  # type: ignore[arg-type]
    probe = Probe()
    manager.add_plugin(lambda: probe)
    session = SimpleNamespace(room_id="!r:x", sfu=None, memberships=[])
    starting = asyncio.create_task(manager._start(session))  # type: ignore[arg-type]
    await asyncio.sleep(0.01)
    stopping = asyncio.create_task(manager._stop("!r:x"))
    await asyncio.sleep(0.01)
    made[0].release.set()
    await asyncio.wait_for(asyncio.gather(starting, stopping), 2)
    assert probe.log == []
    assert made[0].stopped and not made[0].connected
