"""A test kit for plugin authors: run one plugin with no homeserver and no SFU.

    async def test_my_plugin():
        h = PluginHarness(MyPlugin())
        await h.start()
        alice = h.participant("@alice:example.org")
        await h.feed_audio(alice, seconds=1.0, freq=440)
        await h.end()
        assert h.posts == ["..."]

Frames go through the real router (same queue, overflow and error handling as in a call);
what the plugin posts, edits and publishes is recorded.
"""

from __future__ import annotations

import asyncio
import math
import tempfile
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from bot.commands.executor import Invocation, execute
from bot.commands.parsing import parse_command
from bot.commands.permissions import UserPatterns
from bot.commands.registry import CommandRegistry
from bot.errors import CommandError
from bot.media.router import FrameRouter, PluginRunner
from bot.media.worker import PluginWorker
from bot.plugin import (
    AudioFrame,
    AudioWants,
    Participant,
    ParticipantChange,
    ParticipantEvent,
    Plugin,
)

T = TypeVar("T")


@dataclass
class RecordedOutput:
    """What the plugin published on an audio track."""

    name: str
    sample_rate: int
    channels: int
    chunks: list[np.ndarray] = field(default_factory=list)

    async def write(self, pcm: np.ndarray) -> None:
        self.chunks.append(np.asarray(pcm, dtype=np.int16).reshape(-1, self.channels))

    @property
    def pcm(self) -> np.ndarray:
        if not self.chunks:
            return np.zeros((0, self.channels), dtype=np.int16)
        return np.concatenate(self.chunks)


@dataclass
class RecordedVideo:
    """What the plugin published on a video track."""

    name: str
    width: int
    height: int
    images: list[np.ndarray] = field(default_factory=list)

    async def write(self, image: np.ndarray) -> None:
        self.images.append(np.asarray(image, dtype=np.uint8))


class FakeCall:
    """A ``CallContext`` that records instead of talking to Matrix."""

    def __init__(self, room_id: str = "!test:example.org", files_dir: Path | None = None) -> None:
        self.room_id = room_id
        self.files_dir = files_dir or Path(tempfile.mkdtemp(prefix="callbot-test-"))
        self.folder = self.files_dir / "20260101T000000Z"
        self.resumed = False
        self.members: list[Participant] = []
        self.opted_out_users: set[str] = set()
        self.posts: list[str] = []
        #: the thread root of each post (None: in the room)
        self.threads: list[str | None] = []
        self.edits: list[tuple[str, str]] = []
        self.uploads: list[tuple[Path, str, str | None]] = []
        self.outputs: list[RecordedOutput] = []
        self.videos: list[RecordedVideo] = []
        #: the plugin's threads and tasks, as in a real call (PluginHarness.end closes it)
        self.worker = PluginWorker("test")

    def participants(self) -> list[Participant]:
        return list(self.members)

    def opted_out(self, user_id: str) -> bool:
        return user_id in self.opted_out_users

    async def post(self, text: str, html: str | None = None, thread: str | None = None) -> str:
        self.posts.append(text)
        self.threads.append(thread)
        return f"$post{len(self.posts)}"

    async def edit(self, event_id: str, text: str, html: str | None = None) -> str:
        self.edits.append((event_id, text))
        return f"$edit{len(self.edits)}"

    async def upload(self, path: Path, mimetype: str, body: str | None = None) -> str:
        self.uploads.append((path, mimetype, body))
        return f"$upload{len(self.uploads)}"

    async def publish_audio(
        self, name: str, sample_rate: int = 48_000, channels: int = 1
    ) -> RecordedOutput:
        output = RecordedOutput(name, sample_rate, channels)
        self.outputs.append(output)
        return output

    async def publish_video(self, name: str, width: int, height: int) -> RecordedVideo:
        video = RecordedVideo(name, width, height)
        self.videos.append(video)
        return video

    async def run_blocking(self, fn: Callable[..., T], *args: Any) -> T:
        return await self.worker.run_blocking(fn, *args)

    def spawn(self, coro: Coroutine[Any, Any, T], name: str | None = None) -> asyncio.Task[T]:
        return self.worker.spawn(coro, name)


PREFIX = "!"


class PluginHarness:
    def __init__(self, plugin: Plugin, call: FakeCall | None = None) -> None:
        self.plugin = plugin
        self.call = call or FakeCall()
        self.router = FrameRouter()
        self.runner: PluginRunner | None = None
        self.clock = 0.0

    @property
    def posts(self) -> list[str]:
        return self.call.posts

    async def start(self) -> None:
        self.runner = self.router.add(self.plugin)
        await self.plugin.on_call_start(self.call)

    def participant(
        self, user_id: str, device_id: str = "DEVICE", display_name: str | None = None
    ) -> Participant:
        """Someone joins the call."""
        who = Participant(user_id, device_id, f"{user_id}:{device_id}", display_name)
        self.call.members.append(who)
        self.router.push_event(ParticipantEvent(ParticipantChange.JOINED, who, self.clock))
        return who

    def leave(self, who: Participant) -> None:
        self.call.members.remove(who)
        self.router.push_event(ParticipantEvent(ParticipantChange.LEFT, who, self.clock))

    def speaking(self, who: Participant, speaking: bool = True) -> None:
        """``who`` starts (or, with False, stops) speaking, as the call tells it."""
        change = ParticipantChange.SPEAKING if speaking else ParticipantChange.SILENT
        self.router.push_event(ParticipantEvent(change, who, self.clock))

    async def command(
        self, text: str, sender: str = "@tester:example.org", level: int = 100
    ) -> list[str]:
        """Run one of the plugin's commands as ``sender`` (who has power ``level`` and is an
        allowed user), the way the bot runs it; the replies, errors included, in order."""
        registry = CommandRegistry()
        registry.register(self.plugin)
        parsed = parse_command(text, PREFIX)
        if parsed is None:
            raise ValueError(f"not a command: {text!r} (commands start with {PREFIX})")
        cmd = registry.get(parsed.name)
        if cmd is None:
            raise ValueError(f"the plugin has no command {parsed.name!r}")
        replies: list[str] = []

        async def reply(text: str, html: str | None = None) -> str:
            replies.append(text)
            return f"$reply{len(replies)}"

        invocation = Invocation(self.call.room_id, sender, level, PREFIX, reply, "$command")
        try:
            await execute(cmd, parsed.argtext, invocation, UserPatterns(["*"]))
        except CommandError as e:
            replies.append(str(e))
        return replies

    async def feed_audio(
        self, who: Participant, seconds: float, freq: float | None = None, amplitude: float = 0.3
    ) -> None:
        """Frames of a tone (or silence) from ``who``, in the format the plugin declared.

        Each frame is handed over once the plugin has taken the previous one, so a plugin
        that keeps up loses nothing; to test overflow, push to ``h.router`` directly.
        """
        wants = self.plugin.audio or AudioWants()
        n = wants.samples_per_frame
        for _ in range(round(seconds * 1000 / wants.frame_ms)):
            t = np.arange(n) / wants.sample_rate + self.clock
            wave = np.sin(2 * math.pi * freq * t) if freq else np.zeros(n)
            pcm = np.repeat(
                (amplitude * 32767 * wave).astype(np.int16)[:, None], wants.channels, axis=1
            )
            self.router.push_audio(wants, AudioFrame(who, pcm, wants.sample_rate, self.clock))
            self.clock += wants.frame_ms / 1000
            await self.settle()

    async def feed_pcm(self, who: Participant, pcm: np.ndarray) -> None:
        """Recorded audio from ``who``: int16 samples (mono, or shape (samples, channels)) at
        the rate the plugin declared, cut into its frames (the last one padded)."""
        wants = self.plugin.audio or AudioWants()
        n = wants.samples_per_frame
        pcm = np.asarray(pcm, dtype=np.int16).reshape(pcm.shape[0], -1)
        pcm = (
            np.repeat(pcm[:, :1], wants.channels, axis=1) if pcm.shape[1] != wants.channels else pcm
        )
        for i in range(0, pcm.shape[0], n):
            frame = pcm[i : i + n]
            if frame.shape[0] < n:
                frame = np.pad(frame, ((0, n - frame.shape[0]), (0, 0)))
            self.router.push_audio(wants, AudioFrame(who, frame, wants.sample_rate, self.clock))
            self.clock += wants.frame_ms / 1000
            await self.settle()

    async def settle(self) -> None:
        """Wait until the plugin has taken everything queued so far."""
        assert self.runner is not None
        await self.runner.drained()

    async def end(self) -> None:
        """The call ends: deliver what is queued, then ``on_call_end``, then the plugin's
        tasks and threads end (as in a real call)."""
        await self.router.stop()
        await self.plugin.on_call_end()
        await self.call.worker.close()
