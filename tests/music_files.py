"""Audio files for the music player's tests: tones made with PyAV, and a tiny HTTP server."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import av
import numpy as np
from aiohttp import web

RATE = 48_000


def write_tones(
    path: Path,
    segments: list[tuple[float, float]],
    *,
    rate: int = 44_100,
    codec: str = "flac",
    amplitude: float = 0.2,
) -> Path:
    """A stereo file of tones: (frequency, seconds) one after another (0 Hz: silence)."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=rate, layout="stereo")
        start = 0
        for freq, seconds in segments:
            n = int(seconds * rate)
            t = np.arange(start, start + n) / rate
            wave = (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)
            for i in range(0, n, 1152):
                chunk = wave[i : i + 1152]
                frame = av.AudioFrame.from_ndarray(
                    np.ascontiguousarray(np.vstack([chunk, chunk])), format="fltp", layout="stereo"
                )
                frame.sample_rate = rate
                for packet in stream.encode(frame):
                    container.mux(packet)
            start += n
        for packet in stream.encode(None):
            container.mux(packet)
    return path


def dominant(samples: np.ndarray, rate: int = RATE) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(samples.size)))
    spectrum[0] = 0
    return float(np.argmax(spectrum) * rate / samples.size)


def rms(samples: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.asarray(samples, np.float64) ** 2))) if samples.size else 0.0


@contextlib.asynccontextmanager
async def http_server(host: str, files: dict[str, bytes]) -> AsyncIterator[str]:
    """Serves ``files`` (name -> bytes) at http://host:port/<name>; yields the base URL."""
    app = web.Application()

    async def serve(request: web.Request) -> web.Response:
        body = files.get(request.match_info["name"])
        if body is None:
            raise web.HTTPNotFound()
        return web.Response(body=body, content_type="application/octet-stream")

    app.router.add_get("/{name}", serve)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, host, 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()


def free_port(host: str) -> int:
    """A port with nothing listening on it (bound, then released)."""
    import socket

    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]
