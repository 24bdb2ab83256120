"""VP8 in WebM, one file per participant's camera, flushed after every packet so a killed
process leaves a file that plays up to the last frames."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from bot.plugin import private_file


class Vp8WebmWriter:
    def __init__(
        self, path: Path, width: int, height: int, fps: float, bitrate: int = 500_000
    ) -> None:
        self.path = path
        self.width, self.height = width, height
        # 0600 whatever the umask: FFmpeg opens the existing file and keeps its mode.
        self._container = av.open(
            str(private_file(path)), "w", format="webm", options={"flush_packets": "1"}
        )
        self._stream = self._container.add_stream(
            "libvpx", rate=Fraction(fps).limit_denominator(1000)
        )
        self._stream.width, self._stream.height = width, height
        self._stream.pix_fmt = "yuv420p"
        self._stream.bit_rate = bitrate
        self._stream.codec_context.time_base = Fraction(1, 1000)
        # libvpx's defaults aim at quality per bit and cost ~40% of a core for 640x360 at
        # 10 fps; realtime settings cost a fraction of that (bench.recorder).
        self._stream.options = {"deadline": "realtime", "cpu-used": "8"}
        self.frames = 0

    def write(self, i420: np.ndarray, timestamp: float) -> None:
        """One picture: the flat I420 planes of a width x height image; ``timestamp`` in s."""
        planes = np.ascontiguousarray(i420, dtype=np.uint8).reshape(
            self.height * 3 // 2, self.width
        )
        frame = av.VideoFrame.from_ndarray(planes, format="yuv420p")
        frame.pts = round(timestamp * 1000)
        frame.time_base = Fraction(1, 1000)
        for packet in self._stream.encode(frame):
            self._container.mux(packet)
        self.frames += 1

    def close(self) -> None:
        for packet in self._stream.encode(None):
            self._container.mux(packet)
        self._container.close()
