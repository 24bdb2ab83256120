"""What !play accepts: files of the music folder only, http(s) URLs, pages with yt-dlp."""

from __future__ import annotations

from pathlib import Path

import pytest

from plugins.music.sources import (
    YTDLP_MISSING,
    Source,
    SourceError,
    SourcePolicy,
    check_address,
    classify,
    prepare,
    ytdlp_available,
)
from tests.music_files import http_server


@pytest.fixture
def music(tmp_path: Path) -> Path:
    root = tmp_path / "music"
    (root / "Classical").mkdir(parents=True)
    (root / "Classical" / "Moonlight Sonata.flac").write_bytes(b"x")
    (root / "Classical" / "notes.txt").write_bytes(b"x")
    (root / "jazz.mp3").write_bytes(b"x")
    (tmp_path / "secret.mp3").write_bytes(b"x")
    (root / "link.mp3").symlink_to(tmp_path / "secret.mp3")
    return root


def test_files_of_the_music_folder_and_nothing_else(music: Path, tmp_path: Path) -> None:
    policy = SourcePolicy(music)
    source = classify("jazz.mp3", policy)
    assert (source.kind, source.label) == ("file", "jazz.mp3")
    assert source.options["protocol_whitelist"] == "file"
    # Words find a file; the shortest path wins; only audio file names count.
    assert classify("moonlight", policy).label == "Classical/Moonlight Sonata.flac"
    with pytest.raises(SourceError, match="Nothing in the music folder matches 'notes'"):
        classify("notes", policy)
    for escape in ("../secret.mp3", str(tmp_path / "secret.mp3"), "link.mp3", "/etc/passwd"):
        with pytest.raises(SourceError, match="leads out of the music folder"):
            classify(escape, policy)
    with pytest.raises(SourceError, match="No music folder is set up"):
        classify("jazz.mp3", SourcePolicy(None))
    with pytest.raises(SourceError, match="Tell me what to play"):
        classify("  ", policy)


def test_urls(music: Path) -> None:
    policy = SourcePolicy(music)
    source = classify("https://radio.example.org/stream", policy)
    assert source.kind == "url" and "file" not in source.options["protocol_whitelist"]
    with pytest.raises(SourceError, match="only play http:// and https:// URLs, not file://"):
        classify("file:///etc/passwd", policy)
    with pytest.raises(SourceError, match="turned off"):
        classify("https://radio.example.org/stream", SourcePolicy(music, allow_urls=False))


def test_pages_need_ytdlp_and_say_so() -> None:
    assert not ytdlp_available()  # the test environment has no yt-dlp (an optional extra)
    for url in ("https://www.youtube.com/watch?v=abc", "https://youtu.be/abc"):
        with pytest.raises(SourceError) as e:
            classify(url, SourcePolicy(None))
        assert str(e.value) == YTDLP_MISSING
    assert "pip install 'matrix-callbot[ytdlp]'" in YTDLP_MISSING


def test_private_addresses_are_refused_unless_allowed() -> None:
    for url in ("http://127.0.0.1:8008/x.mp3", "http://10.1.2.3/x", "http://[::1]/x"):
        with pytest.raises(SourceError, match="inside a private network"):
            check_address(url, SourcePolicy(None))
        check_address(url, SourcePolicy(None, allow_private_urls=True))
    with pytest.raises(SourceError, match="could not be found"):
        check_address("http://no-such-host.invalid/x", SourcePolicy(None))


async def test_station_playlists_are_read_for_their_stream() -> None:
    pls = b"[playlist]\nNumberOfEntries=1\nFile1=http://127.0.0.1:9/live.mp3\nTitle1=Radio\n"
    m3u = b"#EXTM3U\n#EXTINF:-1,Radio\nhttp://127.0.0.1:9/other.aac\n"
    policy = SourcePolicy(None, allow_private_urls=True)
    async with http_server("127.0.0.1", {"s.pls": pls, "s.m3u": m3u, "e.pls": b"[x]"}) as base:
        for name, stream in (("s.pls", "live.mp3"), ("s.m3u", "other.aac")):
            source = classify(f"{base}/{name}", policy)
            prepared = await _in_thread(prepare, source, policy)
            assert prepared.location == f"http://127.0.0.1:9/{stream}"
        with pytest.raises(SourceError, match="names no http"):
            await _in_thread(prepare, classify(f"{base}/e.pls", policy), policy)
    # A playlist may not lead into a private network either.
    with pytest.raises(SourceError, match="private network"):
        prepare(Source("url", "http://127.0.0.1:9/s.pls", "s"), SourcePolicy(None))


async def _in_thread(fn, *args):
    import asyncio

    return await asyncio.to_thread(fn, *args)
