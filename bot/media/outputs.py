"""What the bot publishes into a call: encrypted audio and video tracks fed by plugins."""

from __future__ import annotations

import numpy as np
from livekit import rtc


class VideoOutput:
    """RGBA or RGB24 images in, encrypted VP8 out."""

    def __init__(self, name: str, width: int, height: int) -> None:
        self.name = name
        self.width, self.height = width, height
        self._source = rtc.VideoSource(width, height)

    async def publish(self, room: rtc.Room) -> None:
        track = rtc.LocalVideoTrack.create_video_track(self.name, self._source)
        options = rtc.TrackPublishOptions(
            source=rtc.TrackSource.SOURCE_CAMERA, video_codec=rtc.VideoCodec.VP8, simulcast=False
        )  # VP8: Element Call's codec, and the one its E2EE handles
        await room.local_participant.publish_track(track, options)

    async def write(self, image: np.ndarray) -> None:
        """uint8 height x width x 4 (RGBA) or x 3 (RGB)."""
        if image.shape[:2] != (self.height, self.width) or image.shape[2] not in (3, 4):
            raise ValueError(f"expected {self.height}x{self.width}x3 or x4, got {image.shape}")
        kind = rtc.VideoBufferType.RGBA if image.shape[2] == 4 else rtc.VideoBufferType.RGB24
        data = np.ascontiguousarray(image, dtype=np.uint8).tobytes()
        self._source.capture_frame(rtc.VideoFrame(self.width, self.height, kind, data))

    async def close(self) -> None:
        return None


class AudioOutput:
    """PCM in, encrypted Opus out. ``write`` paces itself: the SDK's queue holds 1 s."""

    def __init__(self, name: str, source: rtc.AudioSource, sample_rate: int, channels: int) -> None:
        self.name = name
        self._source = source
        self.sample_rate = sample_rate
        self.channels = channels

    async def publish(self, room: rtc.Room) -> None:
        """Publish (again, after a reconnect) as a microphone track of the bot's."""
        track = rtc.LocalAudioTrack.create_audio_track(self.name, self._source)
        options = rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE)
        await room.local_participant.publish_track(track, options)

    async def write(self, pcm: np.ndarray) -> None:
        """int16 samples, shape (samples, channels); waits while the queue is full."""
        samples = np.ascontiguousarray(pcm, dtype=np.int16).reshape(-1, self.channels)
        frame = rtc.AudioFrame(samples.tobytes(), self.sample_rate, self.channels, samples.shape[0])
        await self._source.capture_frame(frame)

    async def close(self) -> None:
        await self._source.aclose()
