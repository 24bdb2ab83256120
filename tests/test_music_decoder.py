"""Decoding in a thread: any rate and layout to 48 kHz mono 20 ms frames; seeking; errors in
words."""

from __future__ import annotations

import queue
from pathlib import Path

import numpy as np

from plugins.music.decoder import END, FRAME, Decoder, Failed, Opened
from plugins.music.sources import Source, SourcePolicy, classify
from tests.music_files import dominant, free_port, http_server, write_tones

POLICY = SourcePolicy(None, allow_private_urls=True, timeout_s=5)


def drain(decoder: Decoder) -> list:
    items = []
    while True:
        item = decoder.get(timeout=10)
        items.append(item)
        if item is END or isinstance(item, Failed):
            return items


def file_source(path: Path) -> Source:
    return classify(path.name, SourcePolicy(path.parent))


def test_a_file_becomes_48k_mono_frames(tmp_path: Path) -> None:
    path = write_tones(tmp_path / "t.mp3", [(440, 1.0), (660, 1.0)], codec="libmp3lame")
    items = drain(Decoder(file_source(path), POLICY).start())
    opened, frames = items[0], items[1:-1]
    assert isinstance(opened, Opened) and opened.seekable
    assert abs(opened.duration - 2.0) < 0.1
    assert items[-1] is END
    assert all(f.shape == (FRAME,) and f.dtype == np.float32 for f in frames)
    pcm = np.concatenate(frames)
    assert abs(pcm.size / 48_000 - 2.0) < 0.1
    assert abs(dominant(pcm[9_600:38_400]) - 440) < 5
    assert abs(dominant(pcm[57_600:86_400]) - 660) < 5


def test_starting_part_way_in(tmp_path: Path) -> None:
    path = write_tones(tmp_path / "t.flac", [(440, 2.0), (660, 2.0)])
    items = drain(Decoder(file_source(path), POLICY, start=2.5).start())
    pcm = np.concatenate(items[1:-1])
    # 1.5 s left, all of it the second tone.
    assert abs(pcm.size / 48_000 - 1.5) < 0.05
    assert abs(dominant(pcm[:24_000]) - 660) < 5


async def test_garbage_and_unreachable_urls_fail_in_words() -> None:
    garbage = bytes(range(256)) * 200
    async with http_server("127.0.0.1", {"bad.mp3": garbage}) as base:
        bad = classify(f"{base}/bad.mp3", POLICY)
        items = await _drain_async(Decoder(bad, POLICY).start())
        assert items == [Failed("it is not audio I can play (FFmpeg: invalid data)")]
        missing = classify(f"{base}/none.mp3", POLICY)
        items = await _drain_async(Decoder(missing, POLICY).start())
        assert items == [Failed("the server says it does not exist (HTTP 404)")]
    closed = classify(f"http://127.0.0.1:{free_port('127.0.0.1')}/x.mp3", POLICY)
    items = await _drain_async(Decoder(closed, POLICY).start())
    assert items == [Failed("it could not be reached (connection refused)")]


def test_close_ends_the_thread_while_it_waits(tmp_path: Path) -> None:
    path = write_tones(tmp_path / "t.flac", [(440, 3.0)])
    decoder = Decoder(file_source(path), POLICY, ahead_frames=2).start()
    assert isinstance(decoder.get(timeout=10), Opened)
    decoder.close()
    decoder._thread.join(timeout=5)
    assert not decoder.running
    try:
        while True:
            decoder.get_nowait()
    except queue.Empty:
        pass


async def _drain_async(decoder: Decoder) -> list:
    import asyncio

    return await asyncio.to_thread(drain, decoder)
