"""The player: takes tracks from the queue, decodes them (a thread per track), runs the
gain stages and writes 20 ms frames into the call's encrypted audio output, paced by the
clock.

Pacing: the output (the livekit SDK's source) would take a whole second before making
``write`` wait, so controls would act a second late. The player instead keeps only
``lead_s`` of audio queued ahead of real time: it wakes every 100 ms, writes the block that
tops the lead up, and sleeps. If it ever wakes to find the queue run dry (the event loop was held
up for longer than the lead), that is an underrun: counted, and the clock re-anchored
rather than catching up with a burst.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import queue
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import numpy as np

from bot.plugin import AudioOut
from plugins.music.decoder import END, FRAME, FRAME_S, Decoder, Failed, Opened
from plugins.music.dsp import Chain
from plugins.music.queue import PlayQueue, Track
from plugins.music.sources import SourcePolicy

log = logging.getLogger(__name__)

#: Frames written at once (100 ms): each write and wake-up costs about as much as
#: decoding, so fewer, larger writes halve the CPU; the SDK still sends 10 ms at a time.
BLOCK = 5
BLOCK_S = BLOCK * FRAME_S
#: Frames the decoder must have ready before a track starts (smooth start, small delay).
PREFILL = 2 * BLOCK
_SILENCE = np.zeros(FRAME, np.float32)


class State(enum.Enum):
    IDLE = "idle"
    PLAYING = "playing"
    PAUSED = "paused"


class Outcome(enum.Enum):
    ENDED = "ended"
    SKIPPED = "skipped"
    STOPPED = "stopped"
    FAILED = "failed"


@dataclass
class PlayerStats:
    frames: int = 0  # 20 ms frames written
    underruns: int = 0  # times the outgoing queue ran dry while playing
    stalls: int = 0  # frames of silence written because the source was late
    tracks: int = 0
    failed: int = 0
    #: seconds from a !play (on an idle player) to its first frame written
    first_audio: list[float] = field(default_factory=list)


class Player:
    def __init__(
        self,
        play_queue: PlayQueue,
        chain: Chain,
        policy: SourcePolicy,
        open_output: Callable[[], Awaitable[AudioOut]],
        notify: Callable[[str], Awaitable[object]],
        *,
        lead_s: float = 0.3,
        announce: bool = True,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.queue = play_queue
        self.chain = chain
        self.policy = policy
        self._open_output = open_output
        self._notify = notify
        self.lead_s = max(lead_s, 2 * BLOCK_S)
        self.announce = announce
        self.clock, self._sleep = clock, sleep
        self.state = State.IDLE
        self.position = 0.0  # seconds into the current track (what has been written)
        self.stats = PlayerStats()
        self._output: AudioOut | None = None
        self._decoder: Decoder | None = None
        self._request: tuple[str, float] | None = None  # (what, seek position)
        self._wake = asyncio.Event()  # something to play, or a request while waiting
        self._task: asyncio.Task[None] | None = None
        self._posts: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------------ control

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="music-player")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._posts:
            await asyncio.gather(*self._posts, return_exceptions=True)

    def wake(self) -> None:
        """Something was queued: start if idle."""
        self._wake.set()

    def skip(self) -> None:
        self._ask("skip")

    def stop(self) -> None:
        self.queue.clear()
        self._ask("stop")

    def pause(self) -> None:
        self._ask("pause")

    def resume(self) -> None:
        self._ask("resume")

    def seek(self, position: float) -> None:
        self._ask("seek", position)

    def _ask(self, what: str, position: float = 0.0) -> None:
        self._request = (what, position)
        self._wake.set()

    def _take(self, *kinds: str) -> tuple[str, float] | None:
        if self._request is not None and self._request[0] in kinds:
            request, self._request = self._request, None
            return request
        return None

    # ------------------------------------------------------------------ the loop

    async def _run(self) -> None:
        while True:
            track = self.queue.current or self.queue.advance()
            if track is None:
                self.state = State.IDLE
                self._request = None
                self._wake.clear()
                await self._wake.wait()
                continue
            try:
                outcome = await self._play(track)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("playing %s failed", track.name)
                outcome = Outcome.FAILED
            if outcome is Outcome.ENDED:
                self.queue.advance()
            elif outcome is Outcome.SKIPPED:
                self.queue.skip()
            elif outcome is Outcome.FAILED:
                self.stats.failed += 1
                self.queue.drop_current()
            else:
                self.queue.current = None

    async def _open(self, track: Track, start: float) -> Decoder | Outcome:
        """A decoder that has opened the track and has its first frames, or what happened
        instead (a failure is told to the room)."""
        decoder = Decoder(track.source, self.policy, start).start()
        try:
            item = await self._next(decoder)
        except BaseException:  # cancelled (the call ended): the thread must not linger
            decoder.close()
            raise
        if isinstance(item, Outcome):
            decoder.close()
            return item
        if isinstance(item, Failed):
            self.say(f"⚠ Could not play {track.name}: {item.reason}. Skipping it.")
            return Outcome.FAILED
        assert isinstance(item, Opened)
        track.title = item.title or track.title
        track.duration = item.duration
        deadline = self.clock() + 0.5
        while decoder.ready_frames < PREFILL and decoder.running and self.clock() < deadline:
            if self._request is not None and self._request[0] in ("skip", "stop"):
                break
            await self._sleep(0.005)
        return decoder

    async def _next(self, decoder: Decoder) -> Opened | Failed | Outcome:
        """Wait (polling; opening can take seconds) for the decoder's first item, unless
        asked to skip or stop meanwhile."""
        while True:
            request = self._take("skip", "stop")
            if request is not None:
                return Outcome.SKIPPED if request[0] == "skip" else Outcome.STOPPED
            try:
                item = decoder.get_nowait()
            except queue.Empty:
                await self._sleep(0.005)
                continue
            if item is END:
                return Failed("it holds no audio")
            if isinstance(item, Opened | Failed):
                return item
            return Failed("the decoder went wrong")  # a frame before Opened cannot happen

    async def _play(self, track: Track) -> Outcome:
        self.state = State.PLAYING
        self.position = 0.0
        opened = await self._open(track, 0.0)
        if isinstance(opened, Outcome):
            return opened
        decoder = self._decoder = opened
        self.stats.tracks += 1
        if self.announce:
            length = f" ({clock_text(track.duration)})" if track.duration else " (live)"
            self.say(f"▶ Now playing: {track.name}{length}")
        try:
            out = await self._get_output()
            self.chain.new_track(fade_in=False)
            return await self._pace(track, decoder, out)
        finally:
            if self._decoder is not None:  # the track's, or the one a seek opened
                self._decoder.close()

    async def _pace(self, track: Track, decoder: Decoder, out: AudioOut) -> Outcome:
        t0, written = self.clock(), 0.0
        ending: Outcome | None = None
        pausing = False
        seeking: float | None = None
        while True:
            request = self._take("skip", "stop", "pause", "seek", "resume")
            if request is not None:
                what, where = request
                if what == "resume":  # only means something during a pause's fade-out
                    if pausing:
                        pausing = False
                        self.chain.fade_in()
                else:
                    self.chain.fade_out()
                if what == "skip":
                    ending = Outcome.SKIPPED
                elif what == "stop":
                    ending = Outcome.STOPPED
                elif what == "pause":
                    pausing = True
                elif what == "seek":
                    seeking = where
            if self.chain.faded_out and (ending or pausing or seeking is not None):
                if ending is not None:
                    return ending
                if pausing:
                    pausing = False
                    after = await self._paused()
                    if isinstance(after, Outcome):
                        return after
                    if after is not None:
                        seeking = after
                if seeking is not None:
                    decoder.close()
                    reopened = await self._open(track, seeking)
                    if isinstance(reopened, Outcome):
                        return reopened
                    decoder = self._decoder = reopened
                    self.position, seeking = seeking, None
                self.state = State.PLAYING
                self.chain.fade_in()
                t0, written = self.clock(), 0.0  # the output ran empty on purpose
            now = self.clock()
            lead = t0 + written - now
            if lead < 0 and written > 0:
                self.stats.underruns += 1
                log.info("music output underrun (%.0f ms late)", -lead * 1000)
                t0, lead = now - written, 0.0
            while lead < self.lead_s:
                block, outcome = self._block(track, decoder)
                if block:
                    await out.write(np.concatenate(block))
                    self.stats.frames += len(block)
                    written += len(block) * FRAME_S
                    lead += len(block) * FRAME_S
                    if track.requested_at:
                        self.stats.first_audio.append(self.clock() - track.requested_at)
                        track.requested_at = 0.0
                if outcome is not None:
                    return outcome
            await self._sleep(max(0.0, t0 + written - self.lead_s + BLOCK_S - self.clock()))

    def _block(self, track: Track, decoder: Decoder) -> tuple[list[np.ndarray], Outcome | None]:
        """The next ``BLOCK`` frames through the gain stages, and how the track went on."""
        block: list[np.ndarray] = []
        while len(block) < BLOCK:
            try:
                item = decoder.get_nowait()
            except queue.Empty:
                item = _SILENCE  # the source is late (network): keep the output fed
                self.stats.stalls += 1
            if item is END:
                return block, Outcome.ENDED
            if isinstance(item, Failed):
                self.say(f"⚠ Stopped playing {track.name}: {item.reason}.")
                return block, Outcome.FAILED
            assert isinstance(item, np.ndarray)
            if item is not _SILENCE:
                self.position += FRAME_S
            block.append(self.chain.process(item))
        return block, None

    async def _paused(self) -> Outcome | float | None:
        """Wait for resume (None), skip or stop (their outcome) or seek (its position: a
        seek while paused plays on from there)."""
        self.state = State.PAUSED
        while True:
            self._wake.clear()
            request = self._take("resume", "skip", "stop", "seek")
            if request is not None:
                what, where = request
                if what == "skip":
                    return Outcome.SKIPPED
                if what == "stop":
                    return Outcome.STOPPED
                return where if what == "seek" else None
            self._request = None  # pause again: nothing to do
            await self._wake.wait()

    async def _get_output(self) -> AudioOut:
        if self._output is None:
            self._output = await self._open_output()
        return self._output

    def say(self, text: str) -> None:
        """Post to the room without holding up the music."""

        async def post() -> None:
            try:
                await self._notify(text)
            except Exception:
                log.exception("could not post to the room")

        task = asyncio.create_task(post())
        self._posts.add(task)
        task.add_done_callback(self._posts.discard)


def clock_text(seconds: float | None) -> str:
    if seconds is None:
        return "live"
    s = int(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02}:{s % 60:02}" if s >= 3600 else f"{s // 60}:{s % 60:02}"
