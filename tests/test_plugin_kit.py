"""The plugin test kit, exercised on the example plugin of docs/plugins.md."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from bot.plugin import AudioFrame, AudioWants, Overflow, Plugin
from bot.testing import PluginHarness

EXAMPLE = Path(__file__).resolve().parent.parent / "docs" / "examples" / "speaking_time.py"


def load_example():
    spec = importlib.util.spec_from_file_location("speaking_time", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.SpeakingTime


async def test_example_plugin_reports_speaking_time() -> None:
    h = PluginHarness(load_example()())
    await h.start()
    alice = h.participant("@alice:example.org", display_name="Alice")
    bob = h.participant("@bob:example.org")
    await h.feed_audio(alice, seconds=3.0, freq=300)
    await h.feed_audio(bob, seconds=1.0, freq=500)
    await h.feed_audio(bob, seconds=2.0)  # silence does not count
    await h.end()
    assert h.posts == ["Speaking time\nAlice: 3 s\n@bob:example.org: 1 s"]


async def test_published_audio_is_recorded() -> None:
    class Echo(Plugin):
        name = "echo"
        audio = AudioWants(sample_rate=48_000)
        overflow = Overflow.LOSSLESS

        async def on_call_start(self, call) -> None:
            self.out = await call.publish_audio("echo")

        async def on_audio(self, frame: AudioFrame) -> None:
            await self.out.write(frame.pcm)

    h = PluginHarness(Echo())
    await h.start()
    await h.feed_audio(h.participant("@a:x"), seconds=0.5, freq=440)
    await h.end()
    (out,) = h.call.outputs
    assert out.pcm.shape == (24_000, 1)
    spectrum = np.abs(np.fft.rfft(out.pcm[:, 0]))
    assert abs(np.argmax(spectrum) * 48_000 / 24_000 - 440) < 5
