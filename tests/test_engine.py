"""Who a LiveKit participant is (bot.media.engine.CallMedia.participant): from the call's
current memberships, never from the LiveKit identity (units, a stand-in session)."""

from __future__ import annotations

from types import SimpleNamespace

from bot.media.engine import CallMedia
from bot.media.router import FrameRouter
from bot.rtc.identity import hashed_identity
from bot.rtc.membership import CallMembership
from bot.rtc.session import MembershipsChanged
from bot.signals import Signal

ROOM = "!room:example.org"


def _member(user: str, device: str, member_id: str) -> CallMembership:
    return CallMembership(
        kind="rtc",
        event_id=f"$ev-{device}",
        user_id=user,
        device_id=device,
        application="m.call",
        slot_id="m.call#ROOM",
        member_id=member_id,
        transports=(),
        created_ts=1,
        origin_server_ts=1,
    )


def _media() -> tuple[CallMedia, SimpleNamespace]:
    session = SimpleNamespace(
        room_id=ROOM,
        memberships=[],
        encryption_key_changed=Signal("encryption_key_changed"),
        memberships_changed=Signal("memberships_changed"),
    )

    async def no_access():  # never connected in these tests
        raise AssertionError

    media = CallMedia(session, FrameRouter(), no_access)  # type: ignore[arg-type]
    return media, session


async def test_a_hashed_identity_before_its_membership_is_nobody_then_the_member() -> None:
    media, session = _media()
    alice = _member("@alice:example.org", "ALICEDEV", "uuid-1")
    identity = hashed_identity(alice.user_id, alice.device_id, alice.member_id)
    # The track came first: no membership synced yet, so no participant (and no frames).
    assert media.participant(identity, "Alice") is None
    assert media.unresolved == 1
    session.memberships = [alice]
    session.memberships_changed.emit(MembershipsChanged([], [alice]))
    who = media.participant(identity, "Alice")
    assert who is not None and (who.user_id, who.device_id) == (alice.user_id, "ALICEDEV")
    assert media.unresolved == 0
    # She leaves the call: her frames stop being hers.
    session.memberships_changed.emit(MembershipsChanged([alice], []))
    assert media.participant(identity) is None


async def test_a_membership_that_ends_while_connected_is_a_leave_and_its_return_a_join() -> None:
    """A homeserver that sends a member's delayed leave during an outage ends her membership
    while her LiveKit connection stays: the plugins hear LEFT (her media reaches them no
    more), then JOINED when her client sends the membership again; before, they heard
    nothing, then a second JOINED without a LEFT between."""
    from bot.media.engine import OWN
    from bot.plugin import ParticipantChange

    media, session = _media()
    events: list = []
    media.router.push_event = events.append  # type: ignore[method-assign]
    alice = _member("@alice:example.org", "ALICEDEV", "uuid-1")
    identity = hashed_identity(alice.user_id, alice.device_id, alice.member_id)
    remote = SimpleNamespace(identity=identity, name="Alice")
    room = SimpleNamespace(remote_participants={identity: remote})
    media.rooms = lambda: [(OWN, room)]  # type: ignore[method-assign]
    session.memberships_changed.emit(MembershipsChanged([], [alice]))
    media._on_participant(OWN, ParticipantChange.JOINED)(remote)  # type: ignore[arg-type]
    assert [(e.change, e.participant.user_id) for e in events] == [
        (ParticipantChange.JOINED, alice.user_id)
    ]
    session.memberships_changed.emit(MembershipsChanged([alice], []))
    assert media.participant(identity) is None
    assert (events[-1].change, events[-1].participant.user_id) == (
        ParticipantChange.LEFT,
        alice.user_id,
    )
    session.memberships_changed.emit(MembershipsChanged([], [alice]))
    assert [e.change for e in events] == [
        ParticipantChange.JOINED,
        ParticipantChange.LEFT,
        ParticipantChange.JOINED,
    ]
    # Her LiveKit connection closes while she has no membership: no second LEFT.
    session.memberships_changed.emit(MembershipsChanged([alice], []))
    media._on_participant(OWN, ParticipantChange.LEFT)(remote)  # type: ignore[arg-type]
    assert [e.change for e in events][-2:] == [ParticipantChange.JOINED, ParticipantChange.LEFT]
    assert len(events) == 4


async def test_a_livekit_participant_without_membership_is_nobody() -> None:
    media, _ = _media()
    # The legacy identity form "@user:server:DEVICE" used to be split into a Matrix user.
    assert media.participant("@mallory:example.org:EVIL", "Mallory") is None


async def test_a_failing_audio_pump_is_started_again(monkeypatch) -> None:
    """Issue 19: a pump that raised ended silently (its task's error was never looked at),
    and that person's audio stopped for the rest of the call."""
    import asyncio

    import numpy as np

    from bot.media import engine
    from bot.plugin import AudioFrame, AudioWants, Plugin

    monkeypatch.setattr(engine, "PUMP_RESTART_DELAY_S", 0.0)
    runs = 0

    class Stream:
        """First run: a frame of the wrong size (the pump's reshape fails); then good ones."""

        def __init__(self) -> None:
            nonlocal runs
            runs += 1
            self.bad = runs == 1

        def __aiter__(self) -> Stream:
            self.left = 3
            return self

        async def __anext__(self) -> SimpleNamespace:
            if self.left == 0:
                raise StopAsyncIteration
            self.left -= 1
            samples = 3 if self.bad else 160
            data = np.zeros(samples, np.int16).tobytes()
            return SimpleNamespace(frame=SimpleNamespace(data=data))

        async def aclose(self) -> None:
            pass

    monkeypatch.setattr(engine.rtc.AudioStream, "from_track", lambda **kw: Stream())

    class Ears(Plugin):
        name = "ears"
        audio = AudioWants(sample_rate=16_000, channels=2, frame_ms=10)

        def __init__(self) -> None:
            self.frames: list[AudioFrame] = []

        async def on_audio(self, frame: AudioFrame) -> None:
            self.frames.append(frame)

    media, session = _media()
    alice = _member("@alice:example.org", "ALICEDEV", "uuid-1")
    identity = hashed_identity(alice.user_id, alice.device_id, alice.member_id)
    session.memberships = [alice]
    session.memberships_changed.emit(MembershipsChanged([], [alice]))
    ears = Ears()
    media.router.add(ears)
    track = SimpleNamespace(kind=engine.rtc.TrackKind.KIND_AUDIO)
    remote = SimpleNamespace(identity=identity, name="Alice")
    media._on_track_subscribed(engine.OWN, track, SimpleNamespace(sid="TR1"), remote)  # type: ignore[arg-type]
    (task,) = media._streams[(engine.OWN, identity, "TR1")]
    await asyncio.wait_for(task, 2)
    await asyncio.sleep(0.05)
    assert media.pump_failures == 1 and runs == 2
    assert len(ears.frames) == 3 and ears.frames[0].participant.user_id == alice.user_id
    await media.router.stop()
