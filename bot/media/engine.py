"""One call's media: the LiveKit connections, subscribed tracks turned into plugin frames,
participant events, and published outputs.

The bot publishes on its own SFU (``connection``) and subscribes to every other SFU that
members publish on (``sfus``, bot.media.sfus: federated calls, Element Call's multi-SFU); the
plugins see one call whatever SFU each participant is on.

Only what plugins asked for is produced: for every remote audio track there is one
``AudioStream`` per distinct ``AudioWants`` (the SDK resamples and frames it), and none when
no plugin wants audio. LiveKit identities are mapped to Matrix identities through the call's
memberships (``rtc_backend_identity``).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import numpy as np
from livekit import rtc

from bot.log import context
from bot.media.clock import StreamClock
from bot.media.connection import MediaConnection
from bot.media.outputs import AudioOutput, VideoOutput
from bot.media.router import FrameRouter
from bot.media.sfus import RemoteSfus, SfuUse, sfus_in_use, transport_key
from bot.outbound import display_host
from bot.plugin import (
    AudioFrame,
    AudioWants,
    ConnectionChange,
    Participant,
    ParticipantChange,
    ParticipantEvent,
    VideoFrame,
    VideoWants,
)
from bot.rtc.focus import SfuAccess
from bot.rtc.membership import CallMembership
from bot.rtc.session import EncryptionKeyChanged, MatrixRTCSession, MembershipsChanged

#: the key of the bot's own connection among the call's SFU connections
OWN = ""
#: a participant's frame pump that fails is started again this many times, this long apart
PUMP_RESTARTS = 5
PUMP_RESTART_DELAY_S = 1.0

log = logging.getLogger(__name__)

#: Speaking: a frame louder than this (int16 RMS) is voice; this long quiet is silence.
SPEAKING_RMS = 500.0
SILENCE_AFTER_S = 0.5
#: Tell the room when someone's media has not decrypted for this long.
UNDECRYPTABLE_NOTICE_S = 5.0
_E2EE_STATES = {
    rtc.EncryptionState.NEW: "waiting",
    rtc.EncryptionState.OK: "decrypting",
    rtc.EncryptionState.KEY_RATCHETED: "decrypting",
    rtc.EncryptionState.MISSING_KEY: "no key for their media",
    rtc.EncryptionState.DECRYPTION_FAILED: "their media does not decrypt with their key",
    rtc.EncryptionState.ENCRYPTION_FAILED: "encryption failed",
    rtc.EncryptionState.INTERNAL_ERROR: "encryption error",
}
#: plugin pixel format -> (SDK buffer type, channels; 0: planar, delivered flat)
_VIDEO_FORMATS = {
    "rgb24": (rtc.VideoBufferType.RGB24, 3),
    "rgba": (rtc.VideoBufferType.RGBA, 4),
    "yuv420p": (rtc.VideoBufferType.I420, 0),
}
_BAD_STATES = {
    rtc.EncryptionState.MISSING_KEY,
    rtc.EncryptionState.DECRYPTION_FAILED,
    rtc.EncryptionState.INTERNAL_ERROR,
}


class CallMedia:
    def __init__(
        self,
        session: MatrixRTCSession,
        router: FrameRouter,
        get_access: Callable[[], Awaitable[SfuAccess]],
        notify: Callable[[str], Awaitable[object]] | None = None,
        clock: Callable[[], float] = time.monotonic,
        display_name: Callable[[str], str | None] = lambda user_id: None,
        remote_access: Callable[[SfuUse], Awaitable[SfuAccess]] | None = None,
        describe_error: Callable[[Exception], str] = lambda e: type(e).__name__,
    ) -> None:
        self.session = session
        self._display_name = display_name
        self._notify = notify
        #: per LiveKit identity: the last end-to-end encryption state the SDK reported
        self.e2ee_states: dict[str, rtc.EncryptionState.ValueType] = {}
        self._notified: set[str] = set()
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._notice_tasks: set[asyncio.Task[None]] = set()
        self.router = router
        self.connection = MediaConnection(
            session.room_id, get_access, functools.partial(self._attach, OWN), session
        )
        self.sfus = RemoteSfus(
            session.room_id,
            remote_access or _no_remote_access,
            self._attach,
            self._remote_connected,
            session,
            self._spawn_notice,
            describe_error,
        )
        self._stopping = False
        self._attempted = False
        self._reconnecting: asyncio.Task[None] | None = None
        #: failed reconnection attempts since the connection dropped (0: connected)
        self.reconnect_failures = 0
        #: frame pumps that failed and were started again
        self.pump_failures = 0
        self._clock = clock
        self._t0 = clock()
        #: (connection key, LiveKit identity, track sid) -> frame pumps
        self._streams: dict[tuple[str, str, str], list[asyncio.Task[None]]] = {}
        #: LiveKit identity -> the connections they are in (one JOINED/LEFT across SFUs)
        self._present: dict[str, set[str]] = {}
        #: other SFUs whose connection dropped and is not back yet
        self._lost: set[str] = set()
        #: per LiveKit identity: when they were last loud (None: not speaking)
        self._speaking: dict[str, float] = {}
        self._outputs: list[AudioOutput | VideoOutput] = []
        self._ctx = context(room=session.room_id)
        #: LiveKit identity → current membership; LiveKit identities seen without one
        self._members = {m.rtc_backend_identity: m for m in session.memberships}
        self._unresolved: set[str] = set()
        session.encryption_key_changed.connect(self._on_key)
        session.memberships_changed.connect(self._on_memberships)

    def now(self) -> float:
        """Seconds since the bot joined the call: the one clock of all frames."""
        return self._clock() - self._t0

    async def start(self) -> None:
        """Connect; called again after a failed attempt (bot.media.active_call retries)."""
        for change in self.session.current_keys():  # announced before we listened
            self._on_key(change)
        if self._attempted:
            await self.connection.reconnect()  # a new Room: the failed one is spent
        else:
            self._attempted = True
            await self.connection.connect()
        self._subscribe_existing(OWN, self.connection.room)
        self._update_sfus()

    def rooms(self) -> list[tuple[str, rtc.Room]]:
        """Every connected LiveKit room of the call: ours first, then the other SFUs'."""
        own = [(OWN, self.connection.room)] if self.connection.connected else []
        return own + [(k, c.room) for k, c in self.sfus.connections() if c.connected]

    def _update_sfus(self) -> None:
        if self.connection.access is None:
            return  # not connected yet: start() does it
        me = (self.session.client.user_id, self.session.client.device_id)
        own = transport_key(self.connection.access.transport)
        self.sfus.update(sfus_in_use(self.session.memberships, me, own))

    def _remote_connected(self, key: str, room: rtc.Room) -> None:
        self._subscribe_existing(key, room)
        sfu = self.sfus.sfus.get(key)
        if sfu is not None and key in self._lost:
            self._lost.discard(key)
            self.router.push_event(ConnectionChange(True, self.now(), "reconnected", sfu.use.host))

    def _remote_lost(self, key: str, reason: object) -> None:
        """Another SFU of the call dropped for good: the media of those who publish there is
        missing until it is back (plugins are told whose)."""
        sfu = self.sfus.sfus.get(key)
        if sfu is None or sfu.closing or self._stopping:
            return
        self._lost.add(key)
        who = tuple(
            p
            for m in sfu.use.members
            if (p := self.participant(m.rtc_backend_identity)) is not None
        )
        self.router.push_event(
            ConnectionChange(False, self.now(), f"lost: {reason}", sfu.use.host, who)
        )
        self._spawn_task(self._stop_streams(key))
        self.sfus.dropped(key)

    def sfu_lines(self) -> list[str]:
        """The other SFUs of the call and who publishes on each (for !status)."""

        def name(m: CallMembership) -> str:
            return self._display_name(m.user_id) or m.user_id

        others = self.sfus.lines(name)
        access = self.connection.access
        if not others or access is None:
            return others
        own = transport_key(access.transport)
        here = [
            name(m)
            for m in self.session.memberships
            if transport_key(m.transport(self.session.memberships[0])) == own
        ]
        host = display_host(str(access.transport.get("livekit_service_url", "")))
        state = "connected" if self.connection.connected else "not connected"
        return [f"  SFU {host} (mine, I publish here): {state}; {', '.join(here)}", *others]

    def _wants(self, kind: int) -> bool:
        if kind == rtc.TrackKind.KIND_AUDIO:
            return bool(self.router.audio_wants())
        return kind == rtc.TrackKind.KIND_VIDEO and bool(self.router.video_wants())

    def _on_track_published(
        self, publication: rtc.RemoteTrackPublication, remote: rtc.RemoteParticipant
    ) -> None:
        if self._wants(publication.kind):
            publication.set_subscribed(True)

    def _subscribe_existing(self, key: str, room: rtc.Room) -> None:
        for remote in room.remote_participants.values():
            self._mark_present(key, remote.identity)
            for publication in remote.track_publications.values():
                self._on_track_published(publication, remote)

    def _attach(self, key: str, room: rtc.Room) -> None:
        """Listen to a (new) LiveKit room object of connection ``key``."""
        if key == OWN:
            room.on("disconnected", self._on_disconnected)
        else:
            room.on("disconnected", functools.partial(self._remote_lost, key))
        room.on("track_published", self._on_track_published)
        room.on("track_subscribed", functools.partial(self._on_track_subscribed, key))
        room.on("track_unsubscribed", functools.partial(self._on_track_unsubscribed, key))
        room.on("participant_connected", self._on_participant(key, ParticipantChange.JOINED))
        room.on("participant_disconnected", self._on_participant(key, ParticipantChange.LEFT))
        room.on("track_muted", self._on_mute(ParticipantChange.MUTED))
        room.on("track_unmuted", self._on_mute(ParticipantChange.UNMUTED))
        room.on("e2ee_state_changed", self._on_e2ee_state)

    async def stop(self) -> None:
        self._stopping = True
        if self._reconnecting is not None:
            self._reconnecting.cancel()
            await asyncio.gather(self._reconnecting, return_exceptions=True)
        self.session.encryption_key_changed.disconnect(self._on_key)
        for timer in self._timers.values():
            timer.cancel()
        for output in self._outputs:
            await output.close()
        await self._stop_streams()
        await self.sfus.stop()
        await self.connection.close()

    async def _stop_streams(self, key: str | None = None) -> None:
        """Stop the frame pumps of connection ``key`` (None: of all)."""
        ids = [k for k in self._streams if key is None or k[0] == key]
        tasks = [t for k in ids for t in self._streams.pop(k)]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # ------------------------------------------------------------------ reconnecting

    def _on_disconnected(self, reason: object) -> None:
        if self._stopping or (self._reconnecting and not self._reconnecting.done()):
            return
        log.warning("lost the SFU connection (%s); reconnecting", reason, extra=self._ctx)
        self.router.push_event(ConnectionChange(False, self.now(), f"lost: {reason}"))
        self._reconnecting = asyncio.create_task(self._reconnect())

    async def _reconnect(self) -> None:
        """New connection, same plugins: their queues and state carry on."""
        await self._stop_streams(OWN)
        delay = 0.5
        self.reconnect_failures = 0
        while not self._stopping:
            try:
                await self.connection.reconnect()
                self._subscribe_existing(OWN, self.connection.room)
                for output in self._outputs:
                    await output.publish(self.connection.room)
                self.connection.own_tracks_published()
                log.info("reconnected to the SFU", extra=self._ctx)
                self.router.push_event(ConnectionChange(True, self.now(), "reconnected"))
                if self.reconnect_failures:
                    self._spawn_notice("I can hear the call again.")
                self.reconnect_failures = 0
                return
            except Exception as e:
                self.reconnect_failures += 1
                log.warning(
                    "reconnecting to the SFU failed (%s); again in %.0f s",
                    e,
                    delay,
                    extra=self._ctx,
                )
                if self.reconnect_failures == 1:  # told once, not at every try
                    self._spawn_notice(
                        "I lost the call's media server and cannot reconnect yet; I keep "
                        "trying, and hear nothing until then."
                    )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)

    # ------------------------------------------------------------------ identities and keys

    def participant(self, identity: str, name: str | None = None) -> Participant | None:
        """The Matrix side of a LiveKit participant, from the call's current memberships;
        None for someone in the LiveKit room without a membership (Element Call ignores
        them, and so do we: their media reaches no plugin). Resolved for every frame batch,
        so a track that arrives before its membership is never filed under the LiveKit
        identity (with hashed identities that would defeat opt-outs)."""
        m = self._members.get(identity)
        if m is None:
            if identity not in self._unresolved:
                self._unresolved.add(identity)
                log.info(
                    "a LiveKit participant has no call membership (yet); ignoring their media",
                    extra=self._ctx,
                )
            return None
        self._unresolved.discard(identity)
        return self._as_participant(identity, m, name)

    def _as_participant(
        self, identity: str, m: CallMembership, name: str | None = None
    ) -> Participant:
        shown = self._display_name(m.user_id) or name or None
        return Participant(m.user_id, m.device_id, identity, shown)

    @property
    def unresolved(self) -> int:
        """LiveKit participants seen without a call membership (for !status)."""
        return len(self._unresolved)

    def _on_memberships(self, change: MembershipsChanged) -> None:
        earlier = self._members
        before = set(earlier)
        self._members = {m.rtc_backend_identity: m for m in change.new}
        self._update_sfus()
        # A membership that ends while its LiveKit connection stays (a homeserver that sent
        # the member's delayed leave during an outage, say) ends their part for the plugins:
        # from now on their media reaches none, so they hear LEFT, and JOINED when the
        # membership is back (below). Before, they heard nothing, then a second JOINED.
        for identity in before - set(self._members):
            if identity in self._present:
                self._unresolved.add(identity)
                gone = self._as_participant(identity, earlier[identity])
                self.router.push_event(ParticipantEvent(ParticipantChange.LEFT, gone, self.now()))
        # Someone connected before their membership synced joins now, for the plugins.
        for identity in set(self._members) - before:
            remote = next(
                (r for _, room in self.rooms() if (r := room.remote_participants.get(identity))),
                None,
            )
            if remote is not None and identity in self._unresolved:
                who = self.participant(identity, remote.name)
                if who is not None:
                    self.router.push_event(
                        ParticipantEvent(ParticipantChange.JOINED, who, self.now())
                    )

    def _on_key(self, change: EncryptionKeyChanged) -> None:
        self.connection.set_key(change.identity, change.key, change.own)
        for _, connection in self.sfus.connections():
            connection.set_key(change.identity, change.key, change.own)

    # ------------------------------------------------------------------ E2EE diagnostics

    def undecryptable(self) -> int:
        """Participants whose media does not decrypt now (missing key, failures)."""
        return sum(state in _BAD_STATES for state in self.e2ee_states.values())

    def e2ee_state(self, identity: str) -> str | None:
        """How decrypting this participant's media goes, in words (None: nothing seen yet)."""
        state = self.e2ee_states.get(identity)
        return None if state is None else _E2EE_STATES.get(state, str(state))

    def _on_e2ee_state(
        self, participant: rtc.Participant, state: rtc.EncryptionState.ValueType
    ) -> None:
        identity = participant.identity
        if identity == self.connection.identity:
            return
        self.e2ee_states[identity] = state
        timer = self._timers.pop(identity, None)
        if timer is not None:
            timer.cancel()
        if state in _BAD_STATES and identity not in self._notified:
            self._timers[identity] = asyncio.get_running_loop().call_later(
                UNDECRYPTABLE_NOTICE_S, self._still_undecryptable, identity
            )
        elif state not in _BAD_STATES:
            self._notified.discard(identity)

    def _still_undecryptable(self, identity: str) -> None:
        self._timers.pop(identity, None)
        state = self.e2ee_states.get(identity)
        if state is None or state not in _BAD_STATES or self._notify is None:
            return
        self._notified.add(identity)
        who = self.participant(identity)
        if who is None:
            return  # not a call member: nothing of theirs is expected to decrypt
        text = (
            f"I cannot decrypt the media of {who.name} ({who.device_id}): "
            f"{_E2EE_STATES[state]}. If this persists, they may need to rejoin the call."
        )
        log.warning(
            "media of %s stays undecryptable: %s", identity, _E2EE_STATES[state], extra=self._ctx
        )
        self._spawn_notice(text)

    def _spawn_notice(self, text: str) -> None:
        if self._notify is not None:
            self._spawn_task(self._post_notice(text))

    def _spawn_task(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._notice_tasks.add(task)
        task.add_done_callback(self._notice_tasks.discard)

    async def _post_notice(self, text: str) -> None:
        assert self._notify is not None
        try:
            await self._notify(text)
        except Exception:
            log.exception("could not tell the room about its media", extra=self._ctx)

    # ------------------------------------------------------------------ incoming media

    def _on_track_subscribed(
        self,
        key: str,
        track: rtc.Track,
        publication: rtc.RemoteTrackPublication,
        remote: rtc.RemoteParticipant,
    ) -> None:
        if track.kind == rtc.TrackKind.KIND_AUDIO:
            tasks = [
                self._supervise(
                    functools.partial(self._pump_audio, track, wants, remote, detect=i == 0),
                    remote,
                    "audio",
                )
                for i, wants in enumerate(self.router.audio_wants())
            ]
        else:
            tasks = [
                self._supervise(
                    functools.partial(self._pump_video, track, wants, remote), remote, "video"
                )
                for wants in self.router.video_wants()
            ]
        self._streams[(key, remote.identity, publication.sid)] = tasks

    def _supervise(
        self,
        pump: Callable[[], Awaitable[None]],
        remote: rtc.RemoteParticipant,
        kind: str,
    ) -> asyncio.Task[None]:
        """Run a frame pump; one that fails is logged and started again, and after
        PUMP_RESTARTS failures the room is told once: a person's audio never just stops."""

        async def supervised() -> None:
            for failures in range(1, PUMP_RESTARTS + 1):
                try:
                    await pump()
                    return  # the track ended
                except Exception:
                    log.exception(
                        "the %s of %s failed (%d); starting it again",
                        kind,
                        remote.identity,
                        failures,
                        extra=self._ctx,
                    )
                    self.pump_failures += 1
                    await asyncio.sleep(PUMP_RESTART_DELAY_S)
            who = self.participant(remote.identity, remote.name)
            name = who.name if who is not None else "someone"
            self._spawn_notice(
                f"I can no longer take in the {kind} of {name} (an internal error; the bot's log "
                "has the details)."
            )

        return asyncio.create_task(supervised(), name=f"pump-{kind}-{remote.identity}")

    def _on_track_unsubscribed(
        self,
        key: str,
        track: rtc.Track,
        publication: rtc.RemoteTrackPublication,
        remote: rtc.RemoteParticipant,
    ) -> None:
        for task in self._streams.pop((key, remote.identity, publication.sid), []):
            task.cancel()

    async def _pump_audio(
        self, track: rtc.Track, wants: AudioWants, remote: rtc.RemoteParticipant, detect: bool
    ) -> None:
        """Frames of one track in one format; ``detect``: also tell who speaks (one stream
        per track does that)."""
        stream = rtc.AudioStream.from_track(
            track=track,
            sample_rate=wants.sample_rate,
            num_channels=wants.channels,
            frame_size_ms=wants.frame_ms,
        )
        clock = StreamClock(wants.sample_rate)
        try:
            async for event in stream:
                pcm = np.frombuffer(event.frame.data, dtype=np.int16).reshape(-1, wants.channels)
                received = self._clock()
                now = received - self._t0
                start = clock.start_of(pcm.shape[0], now)
                who = self.participant(remote.identity, remote.name)
                if who is None:
                    continue
                # No copy: the SDK hands every frame over in a fresh buffer of its own.
                self.router.push_audio(
                    wants, AudioFrame(who, pcm, wants.sample_rate, start, received)
                )
                if detect:
                    self._detect_speech(who, pcm, now)
        finally:
            await stream.aclose()

    def _detect_speech(self, who: Participant, pcm: np.ndarray, now: float) -> None:
        samples = pcm.reshape(-1).astype(np.float32)
        loud = float(samples @ samples) > SPEAKING_RMS**2 * samples.size  # RMS, no sqrt
        last_loud = self._speaking.get(who.identity)
        if loud:
            if last_loud is None:
                self.router.push_event(ParticipantEvent(ParticipantChange.SPEAKING, who, now))
            self._speaking[who.identity] = now
        elif last_loud is not None and now - last_loud >= SILENCE_AFTER_S:
            del self._speaking[who.identity]
            self.router.push_event(ParticipantEvent(ParticipantChange.SILENT, who, now))

    async def _pump_video(
        self, track: rtc.Track, wants: VideoWants, remote: rtc.RemoteParticipant
    ) -> None:
        buffer_type, channels = _VIDEO_FORMATS[wants.format]
        stream = rtc.VideoStream.from_track(track=track, format=buffer_type)
        min_gap, last = 1.0 / wants.fps, -1.0
        try:
            async for event in stream:
                now = self.now()
                if now - last < min_gap * 0.9:  # thin out to the declared frame rate
                    continue
                last = now
                who = self.participant(remote.identity, remote.name)
                if who is None:
                    continue
                frame = event.frame
                data = np.frombuffer(frame.data, dtype=np.uint8)
                image = data if channels == 0 else data.reshape(frame.height, frame.width, channels)
                self.router.push_video(
                    wants,
                    VideoFrame(who, image.copy(), wants.format, frame.width, frame.height, now),
                )
        finally:
            await stream.aclose()

    def _on_participant(
        self, key: str, change: ParticipantChange
    ) -> Callable[[rtc.RemoteParticipant], None]:
        def handler(remote: rtc.RemoteParticipant) -> None:
            # Members are in the LiveKit room of every SFU of the call: plugins hear of
            # their first arrival and of their last departure.
            if change == ParticipantChange.JOINED:
                if not self._mark_present(key, remote.identity):
                    return
            elif not self._mark_absent(key, remote.identity):
                return
            who = self.participant(remote.identity, remote.name)
            if who is not None:
                self.router.push_event(ParticipantEvent(change, who, self.now()))

        return handler

    def _mark_present(self, key: str, identity: str) -> bool:
        """True if ``identity`` was in none of the call's connections before."""
        where = self._present.setdefault(identity, set())
        first = not where
        where.add(key)
        return first

    def _mark_absent(self, key: str, identity: str) -> bool:
        """True if ``identity`` is now in none of the call's connections."""
        where = self._present.get(identity, set())
        where.discard(key)
        if where:
            return False
        self._present.pop(identity, None)
        return True

    def _on_mute(self, change: ParticipantChange) -> Callable[..., None]:
        def handler(participant: rtc.Participant, publication: rtc.TrackPublication) -> None:
            if participant.identity == self.connection.identity:
                return
            who = self.participant(participant.identity, participant.name)
            if who is not None:
                self.router.push_event(ParticipantEvent(change, who, self.now()))

        return handler

    # ------------------------------------------------------------------ outgoing media

    async def publish_video(self, name: str, width: int, height: int) -> VideoOutput:
        """A new encrypted VP8 track of the bot's, for a plugin to write images into."""
        output = VideoOutput(name, width, height)
        await output.publish(self.connection.room)
        self.connection.own_tracks_published()
        self._outputs.append(output)
        log.info("publishing video track %s", name, extra=self._ctx)
        return output

    async def publish_audio(
        self, name: str, sample_rate: int = 48_000, channels: int = 1
    ) -> AudioOutput:
        """A new encrypted audio track of the bot's, for a plugin to write PCM into."""
        output = AudioOutput(name, rtc.AudioSource(sample_rate, channels), sample_rate, channels)
        await output.publish(self.connection.room)
        self.connection.own_tracks_published()
        self._outputs.append(output)
        log.info("publishing audio track %s", name, extra=self._ctx)
        return output


async def _no_remote_access(use: SfuUse) -> SfuAccess:
    raise RuntimeError(f"no way to get a token for {use.host}")
