"""``!record start`` / ``!record stop``: per-participant and mixed Opus/Ogg files of a call.

Files go to ``<data_dir>/calls/<room>/<UTC start>/``: ``<user>-<device>.ogg`` per participant,
``mixed.ogg``, and ``meta.json``. All files share one timeline (silence where someone was
quiet, muted, not there yet, or lost), so they line up with each other and with the clock.
Nobody who opted out (``!optout``) is in any file. Recording refuses to start if it cannot
tell the room; people who join later are told too.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bot.plugin import (
    Arg,
    AudioFrame,
    AudioWants,
    CallContext,
    CommandContext,
    CommandError,
    ConnectionChange,
    Gap,
    Overflow,
    Participant,
    ParticipantChange,
    ParticipantEvent,
    Plugin,
    VideoFrame,
    VideoWants,
    command,
    format_duration,
    private_dir,
    write_private_json,
)
from plugins.recorder.mixer import MixBuffer
from plugins.recorder.ogg import OpusOggWriter
from plugins.recorder.timeline import TrackTimeline
from plugins.recorder.webm import Vp8WebmWriter

log = logging.getLogger(__name__)

RATE = 48_000
#: The mix is written this far behind the newest audio, so late frames still get in.
MIX_DELAY_S = 1.0
#: Frames handed to the writing thread together: everyone's frames of this much call time
#: in one hop (a hop per 2 frames, as before, was 20 hops a second in a call of four; each
#: costs a thread wake-up and a loop wake-up). Well inside MIX_DELAY_S.
BATCH_S = 0.5


@dataclass(frozen=True)
class RecorderConfig:
    #: Rooms where recording starts as soon as the bot is in the call.
    auto_rooms: tuple[str, ...] = ()
    #: Post the mixed file to the room at the end (encrypted in encrypted rooms).
    upload_mixed: bool = True
    #: Larger mixed files are not uploaded (the summary says where they are).
    max_upload_mb: float = 50.0
    #: Opus bitrate per file, bits per second.
    bitrate: int = 32_000
    #: Also record each participant's camera as VP8/WebM (<user>-<device>.webm).
    video: bool = False
    #: Frames per second of the video files.
    video_fps: float = 10.0


@dataclass
class _Track:
    participant: Participant
    writer: OpusOggWriter
    timeline: TrackTimeline
    joined_at: float
    left_at: float | None = None
    #: [left, back] of each time they left and joined again (seconds, the files' clock)
    away: list[tuple[float, float]] = field(default_factory=list)


@dataclass
class _Recording:
    folder: Path
    started_utc: str
    started_at: float  # call clock
    mix: OpusOggWriter
    mix_buffer: MixBuffer = field(default_factory=lambda: MixBuffer(RATE))
    tracks: dict[str, _Track] = field(default_factory=dict)
    gaps: list[dict[str, Any]] = field(default_factory=list)
    latest: float = 0.0
    pending: list[AudioFrame] = field(default_factory=list)
    videos: dict[str, Vp8WebmWriter] = field(default_factory=dict)
    #: Held by whichever worker thread touches the writers. A write whose coroutine was
    #: cancelled (the call ended) still runs in its thread; two threads in one libopus
    #: encoder abort the whole process (seen under load: silk/resampler.c assertion).
    lock: threading.RLock = field(default_factory=threading.RLock)
    closed: bool = False
    #: 1, or 2, 3, ... for a recording that goes on after the bot was restarted mid-call: its
    #: files are named ``<name>.part<N>.ogg`` beside the earlier parts' files
    part: int = 1
    #: what meta.json said of the earlier parts, and when the recording was interrupted
    earlier_parts: list[dict[str, Any]] = field(default_factory=list)
    interruptions: list[dict[str, Any]] = field(default_factory=list)
    #: how many tracks the last meta.json written lists
    tracks_in_meta: int = 0
    #: times the SFU connection was lost, in seconds of the recording ("end" None: not back)
    media_outages: list[dict[str, Any]] = field(default_factory=list)


class Recorder(Plugin):
    name = "recorder"
    # 200 ms frames: every frame costs the same handling (SDK event, router, timeline, mix)
    # whatever its length, and a recording needs no quick reaction (bench.load: 20 -> 100 ms
    # took the loop from 33% to 22% of a core at 20 participants).
    audio = AudioWants(sample_rate=RATE, channels=1, frame_ms=200)
    overflow = Overflow.LOSSLESS
    queue_size = 300  # 60 s of one person; a gap marker if even that is not enough
    Config = RecorderConfig

    def __init__(self, config: RecorderConfig | None = None) -> None:
        self.config = config or RecorderConfig()
        # Only subscribe to video when asked to record it.
        self.video = (
            VideoWants(fps=self.config.video_fps, format="yuv420p") if self.config.video else None
        )
        self.call: CallContext | None = None
        self.recording: _Recording | None = None
        self._now = 0.0  # the call clock, from the frames

    @classmethod
    async def on_bot_start(
        cls, data_dir: Path, post: Callable[[str, str], Awaitable[object]]
    ) -> None:
        """Recordings a crash interrupted: their files play up to the crash; mark them
        finished and tell their rooms."""
        for meta_path, meta in await asyncio.to_thread(interrupted_recordings, data_dir):
            meta.update(complete=True, interrupted=True)
            await asyncio.to_thread(write_private_json, meta_path, meta)
            log.warning("finalized the interrupted recording %s", meta_path.parent)
            try:
                await post(
                    meta["room_id"],
                    f"The recording started {meta['started_utc']} was interrupted (the bot "
                    "stopped unexpectedly). Its files are kept up to that moment.",
                )
            except Exception:
                log.exception("could not tell %s about its interrupted recording", meta["room_id"])

    async def on_call_start(self, call: CallContext) -> None:
        self.call = call
        earlier = await call.run_blocking(_interrupted_here, call.folder) if call.resumed else None
        if earlier is not None:
            await self.start(earlier)
        elif call.room_id in self.config.auto_rooms:
            await self.start()

    async def on_call_end(self) -> None:
        if self.recording is not None:
            await self.stop()

    @command(help="Record this call: !record start, or !record stop", args=[Arg("action")])
    async def record(self, ctx: CommandContext, action: str) -> None:
        if action == "start":
            if self.recording is not None:
                raise CommandError("This call is already being recorded.")
            await self.start()
        elif action == "stop":
            if self.recording is None:
                raise CommandError("This call is not being recorded.")
            await self.stop()
        else:
            raise CommandError(f"Usage: {ctx.prefix}record start|stop")

    # ------------------------------------------------------------------ start / stop

    async def start(self, earlier: dict[str, Any] | None = None) -> None:
        """Start recording; ``earlier``: the meta.json of this call's recording that a
        restart interrupted, which this one continues (in the same folder)."""
        call = self._call()
        what = "is being recorded" if earlier is None else "is being recorded again"
        try:
            await call.post(
                f"🔴 This call {what}. Type !optout to keep your voice and video out of the "
                "recording."
            )
        except Exception as e:  # no notice, no recording
            raise CommandError(
                f"I could not post the recording notice, so I am not recording: {e}"
            ) from None
        started_utc = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        # The call's folder (beside its transcript), unless an earlier recording of this
        # call is already there.
        folder = call.folder
        if earlier is None and (folder / "meta.json").exists():
            folder = call.files_dir / started_utc
        await call.run_blocking(private_dir, folder)
        parts: list[dict[str, Any]] = []
        interruptions: list[dict[str, Any]] = []
        if earlier is not None:
            interruptions = earlier.pop("interruptions", [])
            interruptions.append(
                {"from_utc": earlier.get("last_write_utc"), "until_utc": started_utc}
            )
            parts = [*earlier.pop("earlier_parts", []), earlier]
        part = len(parts) + 1
        mix = await call.run_blocking(
            OpusOggWriter, folder / _part_name("mixed.ogg", part), RATE, 1, self.config.bitrate
        )
        self.recording = _Recording(
            folder,
            started_utc,
            self._now,
            mix,
            part=part,
            earlier_parts=parts,
            interruptions=interruptions,
        )
        await self._save_meta(self.recording)
        log.info("recording to %s", folder)

    async def stop(self) -> None:
        rec, call = self.recording, self._call()
        if rec is None:
            return
        self.recording = None
        await call.run_blocking(self._write_batch, rec, rec.pending)
        await call.run_blocking(self._finish, rec, self._loop_state(rec))
        duration = rec.mix.seconds
        names = sorted(t.participant.name for t in rec.tracks.values())
        await call.post(
            f"⏹ Recording stopped: {format_duration(round(duration))}, "
            f"{len(names)} participants ({', '.join(names) or 'nobody'}). Files: "
            f"{', '.join(sorted(p.name for p in rec.folder.iterdir()))}."
        )
        mixed = rec.mix.path
        size_mb = mixed.stat().st_size / 1e6
        if self.config.upload_mixed and size_mb <= self.config.max_upload_mb:
            await call.upload(mixed, "audio/ogg", f"Recording {rec.started_utc} (mixed)")
        elif self.config.upload_mixed:
            await call.post(
                f"The mixed file ({size_mb:.0f} MB) is over the upload limit of "
                f"{self.config.max_upload_mb:.0f} MB; it stays on the server."
            )

    def _finish(self, rec: _Recording, loop_state: dict[str, Any]) -> None:
        with rec.lock:
            rec.closed = True
            self._flush_mix(rec, final=True)
            rec.mix.close()
            for track in rec.tracks.values():
                track.writer.close()
            for video in rec.videos.values():
                video.close()
            self._write_meta(True, rec, loop_state)

    # ------------------------------------------------------------------ media

    async def on_audio(self, frame: AudioFrame) -> None:
        self._now = max(self._now, frame.timestamp)
        rec = self.recording
        if rec is None or self._call().opted_out(frame.participant.user_id):
            return
        rec.pending.append(frame)
        if frame.timestamp - rec.pending[0].timestamp >= BATCH_S:
            batch, rec.pending = rec.pending, []
            await self._call().run_blocking(self._write_batch, rec, batch)
            if len(rec.tracks) != rec.tracks_in_meta:
                # Someone's first sound: meta.json names their file even if the bot dies.
                rec.tracks_in_meta = len(rec.tracks)
                await self._save_meta(rec)

    def _write_batch(self, rec: _Recording, frames: list[AudioFrame]) -> None:
        with rec.lock:
            if rec.closed:
                return
            for frame in frames:
                self._write(rec, frame)
            self._flush_mix(rec)

    def _write(self, rec: _Recording, frame: AudioFrame) -> None:
        track = rec.tracks.get(frame.participant.identity)
        t = frame.timestamp - rec.started_at
        if track is None:
            name = _part_name(_file_name(frame.participant), rec.part)
            writer = OpusOggWriter(rec.folder / name, RATE, 1, self.config.bitrate)
            track = _Track(frame.participant, writer, TrackTimeline(RATE), joined_at=max(0, t))
            rec.tracks[frame.participant.identity] = track
        placed = track.timeline.place(t, frame.pcm)
        track.writer.write_silence(placed.silence)
        track.writer.write(placed.pcm)
        start = track.timeline.position - placed.pcm.shape[0]
        rec.mix_buffer.add(start, placed.pcm[:, 0])
        rec.latest = max(rec.latest, t)

    def _flush_mix(self, rec: _Recording, final: bool = False) -> None:
        until = None if final else round((rec.latest - MIX_DELAY_S) * RATE)
        blocks = rec.mix_buffer.take(until)
        if blocks:  # one encoder call for them all, not one per 20 ms block
            rec.mix.write(np.concatenate(blocks).reshape(-1, 1))

    async def on_video(self, frame: VideoFrame) -> None:
        rec = self.recording
        if rec is None or self._call().opted_out(frame.participant.user_id):
            return
        await self._call().run_blocking(self._write_video, rec, frame)

    def _write_video(self, rec: _Recording, frame: VideoFrame) -> None:
        with rec.lock:
            if not rec.closed:
                self._write_video_locked(rec, frame)

    def _write_video_locked(self, rec: _Recording, frame: VideoFrame) -> None:
        writer = rec.videos.get(frame.participant.identity)
        if writer is None or (writer.width, writer.height) != (frame.width, frame.height):
            if writer is not None:  # the camera changed size: a new file
                writer.close()
            suffix = "" if writer is None else f"-{writer.frames}"
            name = _part_name(
                _file_name(frame.participant).replace(".ogg", f"{suffix}.webm"), rec.part
            )
            writer = Vp8WebmWriter(
                rec.folder / name, frame.width, frame.height, self.config.video_fps
            )
            rec.videos[frame.participant.identity] = writer
        writer.write(frame.image, max(0.0, frame.timestamp - rec.started_at))

    async def on_gap(self, gap: Gap) -> None:
        if self.recording is not None:
            self.recording.gaps.append(
                {
                    "user_id": gap.participant.user_id,
                    "frames": gap.frames,
                    "start": round(gap.start - self.recording.started_at, 3),
                    "end": round(gap.end - self.recording.started_at, 3),
                }
            )

    async def on_connection(self, change: ConnectionChange) -> None:
        rec = self.recording
        if rec is None:
            return
        t = round(max(0.0, change.timestamp - rec.started_at), 3)
        open_ = [o for o in rec.media_outages if o["end"] is None and o.get("sfu") == change.sfu]
        if not change.connected:
            outage: dict[str, Any] = {"start": t, "end": None, "reason": change.reason}
            if change.sfu is not None:  # another SFU of a federated call: only its members
                outage["sfu"] = change.sfu
                outage["participants"] = [p.user_id for p in change.participants]
            rec.media_outages.append(outage)
        elif open_:
            open_[-1]["end"] = t
        else:
            return
        # Written at once: what is missing must be on disk even if the bot dies meanwhile.
        await self._save_meta(rec)

    async def on_participant(self, event: ParticipantEvent) -> None:
        rec = self.recording
        if rec is None:
            return
        track = rec.tracks.get(event.participant.identity)
        at = round(event.timestamp - rec.started_at, 3)
        if event.change is ParticipantChange.JOINED:
            if track is not None and track.left_at is not None:  # back (after an outage, say)
                track.away.append((track.left_at, at))
                track.left_at = None
            try:
                await self._call().post(
                    f"{event.participant.name}: this call is being recorded. Type !optout to "
                    "keep your voice and video out of it."
                )
            except Exception as e:  # the homeserver may be down: the recording goes on
                # Raising would count against the plugin (5 errors in a minute disable it),
                # and after an outage every member joins again at once.
                log.warning(
                    "could not tell %s that the call is recorded: %s", event.participant.user_id, e
                )
        elif event.change is ParticipantChange.LEFT and track is not None:
            track.left_at = at

    def metrics(self) -> dict[str, float]:
        rec = self.recording
        if rec is None:
            return {"recording": 0}
        writers: list[OpusOggWriter | Vp8WebmWriter] = [
            rec.mix,
            *(t.writer for t in rec.tracks.values()),
            *rec.videos.values(),
        ]
        return {
            "recording": 1,
            "bytes_written": sum(_size(w.path) for w in writers),
            "participants_recorded": len(rec.tracks),
            "frames_lost": sum(g["frames"] for g in rec.gaps),
        }

    # ------------------------------------------------------------------ meta

    async def _save_meta(self, rec: _Recording) -> None:
        """meta.json of a recording still going on, written in a worker thread."""
        await self._call().run_blocking(self._write_meta, False, rec, self._loop_state(rec))

    def _loop_state(self, rec: _Recording) -> dict[str, Any]:
        """What meta.json says that the event loop owns, read on the loop: the worker thread
        that writes the file reads only this copy and the writers (under the lock)."""
        call = self._call()
        return {
            "room_id": call.room_id,
            "opted_out": sorted(
                p.user_id for p in call.participants() if call.opted_out(p.user_id)
            ),
            "lost": [dict(g) for g in rec.gaps],
            "media_outages": [dict(o) for o in rec.media_outages],
        }

    def _write_meta(self, complete: bool, rec: _Recording, loop_state: dict[str, Any]) -> None:
        with rec.lock:  # never an "incomplete" meta.json after the finished one
            if rec.closed and not complete:
                return
            self._write_meta_file(complete, rec, loop_state)

    def _write_meta_file(self, complete: bool, rec: _Recording, loop_state: dict[str, Any]) -> None:
        meta = {
            "room_id": loop_state["room_id"],
            "started_utc": rec.started_utc,
            "complete": complete,
            "duration_s": round(rec.mix.seconds, 3),
            # When the files start, in seconds since the bot joined the call (the time of
            # the call folder): the transcript counts from there.
            "call_offset_s": round(rec.started_at, 3),
            "participants": [
                {
                    "user_id": t.participant.user_id,
                    "device_id": t.participant.device_id,
                    "display_name": t.participant.display_name,
                    "file": t.writer.path.name,
                    "joined_at_s": round(t.joined_at, 3),
                    "left_at_s": t.left_at,
                    "away": [[a, b] for a, b in t.away],
                    "silences": [[round(a, 3), round(b, 3)] for a, b in t.timeline.gaps],
                }
                for t in rec.tracks.values()
            ],
            "video_files": sorted(v.path.name for v in rec.videos.values()),
            "opted_out": loop_state["opted_out"],
            "lost": loop_state["lost"],
            "media_outages": loop_state["media_outages"],
        }
        if rec.part > 1:
            # Restarts mid-call: each earlier part as its meta.json described it, and when the
            # recording stopped and started again (the earlier files' last write, UTC).
            meta.update(part=rec.part, earlier_parts=rec.earlier_parts)
            meta["interruptions"] = rec.interruptions
        write_private_json(rec.folder / "meta.json", meta)

    def _call(self) -> CallContext:
        if self.call is None:
            raise CommandError("I am not in this room's call.")
        return self.call


def interrupted_recordings(data_dir: Path) -> list[tuple[Path, dict[str, Any]]]:
    """(meta.json path, its content) of every recording not marked complete."""
    found = []
    for meta_path in sorted((data_dir / "calls").glob("*/*/meta.json")):
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            log.warning("unreadable %s; leaving it alone", meta_path)
            continue
        if isinstance(meta, dict) and meta.get("complete") is False and "room_id" in meta:
            found.append((meta_path, meta))
    return found


def _interrupted_here(folder: Path) -> dict[str, Any] | None:
    """The meta.json of the recording in ``folder`` if a crash interrupted it, with the time
    of its files' last write (when the recording stopped, near enough)."""
    try:
        meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
        files = [p for p in folder.iterdir() if p.suffix in (".ogg", ".webm")]
        last_write = max((p.stat().st_mtime for p in files), default=None)
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict) or not (meta.get("interrupted") or meta.get("complete") is False):
        return None
    meta.pop("interrupted", None)
    meta.pop("complete", None)
    meta["files"] = sorted(p.name for p in files if _part_of(p.name) == meta.get("part", 1))
    if last_write is not None:
        meta["last_write_utc"] = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(last_write))
    return meta


def _part_name(name: str, part: int) -> str:
    """``mixed.ogg`` -> ``mixed.part2.ogg`` in the second part of a recording."""
    if part == 1:
        return name
    stem, dot, suffix = name.rpartition(".")
    return f"{stem}.part{part}{dot}{suffix}"


def _part_of(name: str) -> int:
    stem = name.rpartition(".")[0]
    _, dot, number = stem.rpartition(".part")
    return int(number) if dot and number.isdecimal() and number.isascii() else 1


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _file_name(p: Participant) -> str:
    raw = f"{p.user_id.lstrip('@')}-{p.device_id}"
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in raw) + ".ogg"
