"""Element Call itself and the bot in one encrypted call (exploration)."""

from __future__ import annotations

import asyncio
import json
import wave
from pathlib import Path

import numpy as np

from bot.devsfu.server import DevSfu
from tests.conftest import bot_config, running_bot
from tests.elementcall import element_call, widget_backend
from tests.peer import wait_until
from tests.synapse import Synapse

TIMEOUT = 30.0
ALICE_HZ = 440


def write_tone_wav(path: Path, freq: float, seconds: float = 4.0, rate: int = 48_000) -> Path:
    t = np.arange(int(seconds * rate)) / rate
    pcm = (0.3 * 32767 * np.sin(2 * np.pi * freq * t)).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())
    return path


async def test_explore(synapse: Synapse, sfu: DevSfu, tmp_path: Path) -> None:
    bot_account = synapse.register("bot")
    config = bot_config(
        synapse, bot_account, tmp_path / "data", rtc={"livekit_service_url": sfu.http_url}
    )
    mic = write_tone_wav(tmp_path / "mic.wav", ALICE_HZ)
    transports = [{"type": "livekit", "livekit_service_url": sfu.http_url}]
    async with (
        running_bot(config) as bot,
        widget_backend(synapse, tmp_path, "alice") as alice,
    ):
        room = (await alice.call("create_room", invite=[bot_account.user_id]))["room_id"]
        await wait_until(lambda: room in bot.matrix.joined_rooms(), TIMEOUT, "bot in room")
        async with element_call(synapse, tmp_path / "ec", alice, room, transports, mic) as page:
            try:
                session = bot.rtc.get_room_session(room)
                await wait_until(lambda: session.memberships, 60, "EC's membership")
            finally:
                await asyncio.sleep(5)
                await page.screenshot(tmp_path / "shot.png")
                print(json.dumps(await page.seen(), indent=1)[:3000])
                print(json.dumps(await page.view(), indent=1)[:3000])
                print(page.log_tail(20000))
