from __future__ import annotations

import asyncio

import numpy as np
import pytest

from bot.media.router import MAX_ERRORS, FrameRouter
from bot.plugin import (
    AudioFrame,
    AudioWants,
    Gap,
    Overflow,
    Participant,
    ParticipantChange,
    ParticipantEvent,
    Plugin,
)

ALICE = Participant("@alice:x", "A", "@alice:x:A")
WANTS = AudioWants(sample_rate=16_000)


def frame(i: int, who: Participant = ALICE) -> AudioFrame:
    pcm = np.full((320, 1), i, dtype=np.int16)
    return AudioFrame(who, pcm, 16_000, i * 0.02)


class Recorder(Plugin):
    name = "rec"
    audio = WANTS
    overflow = Overflow.LOSSLESS
    queue_size = 2

    def __init__(self) -> None:
        self.got: list = []
        self.gate = asyncio.Event()
        self.gate.set()

    async def on_audio(self, f: AudioFrame) -> None:
        await self.gate.wait()
        self.got.append(int(f.pcm[0, 0]))

    async def on_gap(self, gap: Gap) -> None:
        self.got.append(gap)

    async def on_participant(self, event: ParticipantEvent) -> None:
        self.got.append(event.change)


class Captions(Recorder):
    name = "captions"
    overflow = Overflow.DROP_OLDEST
    queue_size = 3


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


async def test_frames_arrive_in_order() -> None:
    router = FrameRouter()
    plugin = Recorder()
    router.add(plugin)
    assert router.audio_wants() == {WANTS}
    for i in range(5):
        router.push_audio(WANTS, frame(i))
        await settle()
    await router.stop()
    assert plugin.got == [0, 1, 2, 3, 4]


async def test_drop_oldest_counts_drops() -> None:
    router = FrameRouter()
    plugin = Captions()
    plugin.gate.clear()
    runner = router.add(plugin)
    router.push_audio(WANTS, frame(0))
    await settle()  # frame 0 is being handled (blocked on the gate)
    for i in range(1, 7):
        router.push_audio(WANTS, frame(i))
    plugin.gate.set()
    await router.stop()
    assert plugin.got == [0, 4, 5, 6]  # 1, 2, 3 were the oldest and were dropped
    assert runner.stats.dropped == 3


async def test_lossless_plugins_get_exact_gaps() -> None:
    router = FrameRouter()
    plugin = Recorder()
    plugin.gate.clear()
    runner = router.add(plugin)
    router.push_audio(WANTS, frame(0))
    await settle()
    for i in range(1, 6):  # 1 and 2 fit, 3..5 do not
        router.push_audio(WANTS, frame(i))
    plugin.gate.set()
    await settle()
    router.push_audio(WANTS, frame(6))
    await router.stop()
    gap = plugin.got[3]
    assert plugin.got[:3] == [0, 1, 2] and plugin.got[4:] == [6]
    assert isinstance(gap, Gap)
    assert (gap.kind, gap.participant, gap.frames) == ("audio", ALICE, 3)
    assert gap.start == pytest.approx(0.06) and gap.end == pytest.approx(0.12)
    assert runner.stats.dropped == 3


async def test_participant_events_are_never_dropped() -> None:
    router = FrameRouter()
    plugin = Captions()
    plugin.gate.clear()
    router.add(plugin)
    router.push_audio(WANTS, frame(0))
    await settle()
    for i in range(1, 10):
        router.push_audio(WANTS, frame(i))
        router.push_event(ParticipantEvent(ParticipantChange.SPEAKING, ALICE, i * 0.02))
    plugin.gate.set()
    await router.stop()
    assert plugin.got.count(ParticipantChange.SPEAKING) == 9


async def test_a_slow_or_failing_plugin_does_not_disturb_another() -> None:
    disabled = []
    router = FrameRouter(on_disabled=lambda runner, error: disabled.append(runner.name))

    class Broken(Plugin):
        name = "broken"
        audio = WANTS

        async def on_audio(self, f: AudioFrame) -> None:
            raise RuntimeError("boom")

    class Sleepy(Plugin):
        name = "sleepy"
        audio = WANTS
        queue_size = 5

        async def on_audio(self, f: AudioFrame) -> None:
            await asyncio.sleep(3600)

    good = Recorder()
    good.queue_size = 1000  # type: ignore[misc]
    broken = router.add(Broken())
    router.add(Sleepy())
    router.add(good)
    for i in range(50):
        router.push_audio(WANTS, frame(i))
        await asyncio.sleep(0)
    await settle()
    assert good.got == list(range(50))
    assert broken.stats.disabled and broken.stats.errors == MAX_ERRORS
    assert disabled == ["broken"]
    assert "RuntimeError: boom" in broken.stats.last_error
    await router.stop(timeout_s=0.2)  # the sleeper is cancelled, the others finish
    assert all(r._task is None for r in router.runners)


def test_declarations_are_checked() -> None:
    with pytest.raises(TypeError, match="set name"):

        class Nameless(Plugin):
            pass

    with pytest.raises(ValueError, match="unsupported sample rate"):
        AudioWants(sample_rate=12_345)


async def test_queue_lengths_are_visible() -> None:
    router = FrameRouter()
    plugin = Recorder()
    plugin.gate.clear()
    runner = router.add(plugin)
    for i in range(3):
        router.push_audio(WANTS, frame(i))
    router.push_event(ParticipantEvent(ParticipantChange.JOINED, ALICE, 0.0))
    await settle()  # frame 0 is being handled; 1 and 2 wait, then the event
    assert (runner.queued, runner.events_queued) == (1, 1)
    plugin.gate.set()
    await runner.drained()
    assert (runner.queued, runner.events_queued) == (0, 0)
    await router.stop()


async def test_a_stuck_plugin_piles_up_no_more_than_so_many_speaking_events(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from bot.media import router as router_module

    monkeypatch.setattr(router_module, "MAX_QUEUED_EVENTS", 3)
    router = FrameRouter()
    plugin = Recorder()
    plugin.gate.clear()
    runner = router.add(plugin)
    router.push_audio(WANTS, frame(0))
    await settle()  # stuck in on_audio
    changes = [ParticipantChange.SPEAKING, ParticipantChange.SILENT] * 3
    changes += [ParticipantChange.LEFT, ParticipantChange.JOINED]
    for change in changes:
        router.push_event(ParticipantEvent(change, ALICE, 0.0))
    assert runner.events_queued == 5 and runner.events_dropped == 3
    plugin.gate.set()
    await router.stop()
    # joins and leaves always get through; speaking/silent only up to the bound
    assert plugin.got == [
        0,
        ParticipantChange.SPEAKING,
        ParticipantChange.SILENT,
        ParticipantChange.SPEAKING,
        ParticipantChange.LEFT,
        ParticipantChange.JOINED,
    ]
