"""Music player figures: CPU per playing stream, underruns while the recorder and the
transcriber run in the same call, and the delay from `!play` to first audio.

    scripts/netns-run.sh .venv/bin/python -m bench.music [--streams 4] [--seconds 20]

Part 1 (anywhere): ``--streams`` players, each decoding its own 44.1 kHz stereo MP3 and
writing into its own livekit ``AudioSource`` (the SDK's native queue, as in a call, not
published), in real time for ``--seconds``; the process's CPU time per stream, less the
same process idle for as long.

Part 2 (inside the network namespace): a real encrypted call through the dev SFU. alice
(matrix-js-sdk + a livekit client) speaks recorded sentences in a loop; the bot records
(recorder) and, if ``plugins.transcriber`` is importable, transcribes; alice types
``!play`` as a Matrix message and her client measures when the decrypted music arrives.
Then 60 s of music: the player's underruns, and the process's CPU with and without music.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import statistics
import tempfile
import time
from pathlib import Path

import av
import numpy as np

from plugins.music.config import MusicConfig
from plugins.music.plugin import MusicPlayer

RATE = 44_100


def write_music(path: Path, seconds: float) -> Path:
    """Something with the spectrum of music (chords, a beat, noise): MP3, 44.1 kHz stereo."""
    rng = np.random.default_rng(7)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libmp3lame", rate=RATE, layout="stereo")
        stream.bit_rate = 128_000
        block = 1152
        for i in range(0, int(seconds * RATE), block):
            t = np.arange(i, i + block) / RATE
            chord = sum(
                np.sin(2 * np.pi * f * t) for f in (220, 277, 330, 440 * (1 + (i // RATE) % 3))
            )
            beat = np.exp(-((t % 0.5) * 20)) * rng.normal(0, 1, block)
            left = 0.08 * chord + 0.1 * beat
            right = 0.08 * chord + 0.1 * rng.normal(0, 0.3, block)
            frame = av.AudioFrame.from_ndarray(
                np.vstack([left, right]).astype(np.float32), format="fltp", layout="stereo"
            )
            frame.sample_rate = RATE
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return path


class _SourceCall:
    """Just enough of a call for the player: its output is a real livekit AudioSource."""

    def __init__(self, folder: Path) -> None:
        self.room_id = "!bench:x"
        self.files_dir = self.folder = folder
        self.posts: list[str] = []

    async def post(self, text: str, html: str | None = None, thread: str | None = None) -> str:
        self.posts.append(text)
        return "$p"

    async def publish_audio(self, name: str, sample_rate: int = 48_000, channels: int = 1):
        from livekit import rtc

        from bot.media.outputs import AudioOutput

        return AudioOutput(name, rtc.AudioSource(sample_rate, channels), sample_rate, channels)

    async def run_blocking(self, fn, *args):
        return await asyncio.to_thread(fn, *args)


async def measure_streams(streams: int, seconds: float, folder: Path) -> None:
    from tests.test_music_plugin import Replies

    write_music(folder / "music.mp3", seconds + 10)
    cpu0 = time.process_time()
    await asyncio.sleep(seconds)  # the baseline: this process doing nothing
    idle = time.process_time() - cpu0
    players = []
    for _ in range(streams):
        plugin = MusicPlayer(MusicConfig(music_dir=folder, announce=False))
        await plugin.on_call_start(_SourceCall(folder))  # type: ignore[arg-type]
        players.append(plugin)
    for plugin in players:
        await plugin.play(Replies().ctx(), "music.mp3")
    await asyncio.sleep(1.0)  # all started
    cpu0 = time.process_time()
    await asyncio.sleep(seconds)
    cpu = time.process_time() - cpu0
    stats = [p.player.stats for p in players]  # type: ignore[union-attr]
    for plugin in players:
        await plugin.on_call_end()
    per = 100 * (cpu - idle) / (streams * seconds)
    print(
        f"{streams} streams x {seconds:.0f} s (44.1 kHz stereo MP3 -> 48 kHz mono, normalized,"
        f" into livekit AudioSources): {per:.2f}% of one core per stream "
        f"(process {100 * cpu / seconds:.1f}%, idle {100 * idle / seconds:.1f}%); "
        f"underruns {sum(s.underruns for s in stats)}, source stalls {sum(s.stalls for s in stats)}"
    )


async def measure_call(synapse, folder: Path, addr: str) -> None:
    from livekit import rtc

    from bot.devsfu.server import DevSfu
    from plugins.recorder.plugin import Recorder, RecorderConfig
    from tests import lkclient
    from tests.peer import wait_until
    from tests.test_media import scene

    music_dir = folder / "music"
    music_dir.mkdir()
    write_music(music_dir / "music.mp3", 100)
    music = MusicPlayer(MusicConfig(music_dir=music_dir, announce=False))
    recorder = Recorder(RecorderConfig(upload_mixed=False))
    plugins: list = [music, recorder]
    transcriber = None
    if importlib.util.find_spec("plugins.transcriber.plugin") is not None:
        from plugins.transcriber.plugin import Transcriber, TranscriberConfig

        transcriber = Transcriber(TranscriberConfig(upload=()))
        plugins.append(transcriber)
    sfu = DevSfu(homeserver=synapse.url)
    await sfu.start(addr)
    try:
        async with scene(synapse, sfu, folder, tuple(plugins)) as s:
            s.bot.registry.register_plugin_class(MusicPlayer, lambda room: music, "not here")
            voice = lkclient.Speech()
            await voice.publish(s.lk)
            talking = asyncio.create_task(_talk(voice))
            await recorder.start()
            if transcriber is not None:
                await transcriber.start()
            probe = None
            delays = []
            for _ in range(5):
                sent = time.monotonic()
                await s.alice.call("send_text", room_id=s.room, body="!play music.mp3")
                if probe is None:
                    track = await s.lk.track(s.bot_identity, rtc.TrackKind.KIND_AUDIO, 30)
                    probe = lkclient.AudioProbe(track)
                start = len(probe.chunks)
                await wait_until(
                    lambda start=start, probe=probe: any(
                        lkclient.rms(c) > 300 for c in probe.chunks[start:]
                    ),
                    30,
                    "music at alice",
                )
                first = next(i for i, c in enumerate(probe.chunks[start:]) if lkclient.rms(c) > 300)
                # The chunk's arrival, less the time it took to fill it.
                delays.append(
                    time.monotonic() - sent - (len(probe.chunks) - start - first - 1) * 0.05
                )
                await s.alice.call("send_text", room_id=s.room, body="!stop")
                await wait_until(lambda: music.player.state.value == "idle", 30, "idle")
                await asyncio.sleep(1.0)
            in_bot = music.player.stats.first_audio
            print(
                f"!play -> first audio at alice (Matrix message, bot, SFU, decrypt): median "
                f"{1000 * statistics.median(delays):.0f} ms (min {1000 * min(delays):.0f}, max "
                f"{1000 * max(delays):.0f}, n={len(delays)}); inside the bot (command -> first "
                f"frame written): median {1000 * statistics.median(in_bot):.0f} ms"
            )
            before = music.player.stats.underruns
            cpu0 = time.process_time()
            await asyncio.sleep(20)
            cpu_quiet = time.process_time() - cpu0
            await s.alice.call("send_text", room_id=s.room, body="!play music.mp3")
            await wait_until(lambda: music.player.state.value == "playing", 30, "playing")
            await asyncio.sleep(1.0)
            frames0 = music.player.stats.frames
            cpu0 = time.process_time()
            await asyncio.sleep(60)
            cpu_music = (time.process_time() - cpu0) / 3
            stats = music.player.stats
            others = "recorder + transcriber" if transcriber is not None else "recorder only"
            print(
                f"60 s of music with {others} running and alice speaking: underruns "
                f"{stats.underruns - before}, source stalls {stats.stalls}, "
                f"{stats.frames - frames0} frames written (expected {60 * 50})"
            )
            print(
                f"whole process (bot, SFU, alice's clients) per 20 s: {100 * cpu_quiet / 20:.1f}% "
                f"of one core without music, {100 * cpu_music / 20:.1f}% with: the music stream "
                f"adds {100 * (cpu_music - cpu_quiet) / 20:.1f}% (encoding, encryption, "
                "forwarding and alice's decoding included)"
            )
            if transcriber is not None:
                await transcriber.stop()
            await recorder.stop()
            talking.cancel()
            await probe.close()
            await voice.stop()
    finally:
        await sfu.stop()


async def _talk(voice) -> None:
    from plugins.transcriber.samples import samples

    pcm = [s.pcm() for s in samples().values()]
    while True:
        for sample in pcm:
            await voice.say(sample).wait()
            await asyncio.sleep(1.0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--streams", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=20.0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(measure_streams(args.streams, args.seconds, Path(tmp)))
    addrs = os.environ.get("CALLBOT_NETNS_ADDRS", "")
    if not addrs:
        print("part 2 skipped: run inside scripts/netns-run.sh for the in-call figures")
        return
    from bench.common import run_with_synapse

    run_with_synapse(lambda synapse, folder: measure_call(synapse, folder, addrs.split(",")[0]))


if __name__ == "__main__":
    main()
