"""The music player in a real encrypted call: a livekit participant (alice) receives and
decrypts the music through the dev SFU, and hears what the commands do. Runs inside the
network namespace (scripts/netns-run.sh)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from livekit import rtc

from bot.devsfu.server import DevSfu
from plugins.music.config import MusicConfig
from plugins.music.plugin import MusicPlayer
from tests import lkclient
from tests.music_files import free_port, http_server, write_tones
from tests.peer import wait_until
from tests.synapse import Synapse
from tests.test_media import TIMEOUT, scene
from tests.test_music_plugin import Replies

QUIET_RMS = 100.0


def recent(probe: lkclient.AudioProbe, seconds: float) -> np.ndarray:
    n = math.ceil(seconds * 1000 / lkclient.FRAME_MS)
    return np.concatenate(probe.chunks[-n:]) if len(probe.chunks) >= n else np.zeros(0)


async def settled(probe: lkclient.AudioProbe, seconds: float = 1.0) -> lkclient.Heard:
    """What alice hears over 0.3 s, once ``seconds`` of new audio have come in (the
    change has gone through the player's lead, the fade, Opus and the network)."""
    start = len(probe.chunks)
    frames = math.ceil(seconds * 1000 / lkclient.FRAME_MS)
    await wait_until(lambda: len(probe.chunks) - start >= frames, TIMEOUT, "audio")
    window = recent(probe, 0.3)
    return lkclient.Heard(lkclient.dominant_frequency(window), lkclient.rms(window))


def watch_posts(bot) -> list[str]:
    posts: list[str] = []
    send = bot.matrix.send

    async def recording_send(room_id: str, content: dict) -> str:
        posts.append(content.get("body", ""))
        return await send(room_id, content)

    bot.matrix.send = recording_send
    return posts


async def test_music_files_and_streams_reach_a_participant_encrypted(
    synapse: Synapse, sfu: DevSfu, tmp_path: Path, netns_addrs: tuple[str, str]
) -> None:
    """An unreachable URL and a corrupt file are reported and skipped; a tone served over
    HTTP arrives, decrypted, at the right frequency."""
    host = netns_addrs[0]
    tone = write_tones(tmp_path / "tone.flac", [(660, 20.0)]).read_bytes()
    garbage = bytes(range(256)) * 64
    music = MusicPlayer(MusicConfig(allow_private_urls=True, network_timeout_s=5))
    async with (
        http_server(host, {"tone.flac": tone, "corrupt.mp3": garbage}) as base,
        scene(synapse, sfu, tmp_path, (music,)) as s,
    ):
        posts = watch_posts(s.bot)
        ctx = Replies().ctx()
        unreachable = f"http://{host}:{free_port(host)}/nothing.mp3"
        await music.play(ctx, unreachable)
        await music.play(ctx, f"{base}/corrupt.mp3")
        await music.play(ctx, f"{base}/tone.flac")
        probe = lkclient.AudioProbe(await s.lk.track(s.bot_identity, rtc.TrackKind.KIND_AUDIO))
        heard = await probe.tone(near=660, timeout=TIMEOUT)
        assert abs(heard.freq - 660) < lkclient.TONE_TOLERANCE
        assert [p for p in posts if p.startswith("⚠")] == [
            f"⚠ Could not play {unreachable}: it could not be reached (connection refused). "
            "Skipping it.",
            f"⚠ Could not play {base}/corrupt.mp3: it is not audio I can play (FFmpeg: invalid "
            "data). Skipping it.",
        ]
        assert f"▶ Now playing: {base}/tone.flac (0:20)" in posts
        await probe.close()


async def test_commands_change_what_a_participant_hears(
    synapse: Synapse, sfu: DevSfu, tmp_path: Path
) -> None:
    """Volume, ducking under alice's voice, seek, pause, resume, skip and stop, as alice
    hears them (one call for all, to keep the suite short)."""
    folder = tmp_path / "music"
    folder.mkdir()
    write_tones(folder / "a.flac", [(440, 8.0), (660, 12.0)])
    write_tones(folder / "b.mp3", [(880, 20.0)], codec="libmp3lame")
    # A louder target than the default keeps even the ducked music well above the noise.
    music = MusicPlayer(MusicConfig(music_dir=folder, target_lufs=-12.0, announce=False))
    async with scene(synapse, sfu, tmp_path, (music,)) as s:
        ctx = Replies().ctx()
        await music.play(ctx, "a.flac")
        await music.play(ctx, "b.mp3")
        probe = lkclient.AudioProbe(await s.lk.track(s.bot_identity, rtc.TrackKind.KIND_AUDIO))
        full = await probe.tone(near=440, timeout=TIMEOUT)
        assert music.speaking == set()  # its own music is not someone speaking

        await music.volume(ctx, "50")
        half = await settled(probe)
        assert abs(half.freq - 440) < lkclient.TONE_TOLERANCE
        assert 0.35 < half.rms / full.rms < 0.65, (half, full)
        await music.volume(ctx, "100")

        # alice speaks: the music goes down (-12 dB); she mutes: it comes back.
        voice = lkclient.Tone(300)
        publication = await voice.publish(s.lk)
        await wait_until(lambda: music.speaking, TIMEOUT, "alice speaking")
        ducked = await settled(probe)
        assert ducked.rms < 0.4 * full.rms, (ducked, full)
        publication.track.mute()
        await wait_until(lambda: not music.speaking, TIMEOUT, "alice quiet")
        back = await settled(probe, 1.5)
        assert back.rms > 0.7 * full.rms, (back, full)

        await music.seek(ctx, "0:09")
        assert (await probe.tone(near=660, timeout=TIMEOUT)).freq > 600

        await music.pause(ctx)
        await wait_until(lambda: lkclient.rms(recent(probe, 0.3)) < QUIET_RMS, TIMEOUT, "quiet")
        await music.resume(ctx)
        await probe.tone(near=660, timeout=TIMEOUT)

        await music.skip(ctx)
        await probe.tone(near=880, timeout=TIMEOUT)

        await music.stop(ctx)
        await wait_until(lambda: lkclient.rms(recent(probe, 0.3)) < QUIET_RMS, TIMEOUT, "stop")
        # Underruns depend on how busy the machine is (an event loop held up longer than the
        # player's lead): bench.music measures them; here only that they are counted.
        assert music.player is not None and music.player.stats.frames > 0
        print(f"player underruns: {music.player.stats.underruns}")
        await voice.stop()
        await probe.close()
