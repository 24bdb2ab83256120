"""``callbot demo``: a throwaway Synapse, the dev SFU with its JWT service, the bot with the
recorder and the transcriber, and Alice, a simulated participant who joins the call through
MatrixRTC with end-to-end encryption (she is this same framework, with a plugin that speaks),
types the commands, says four sentences and plays a tone. At the end it prints where the files
are and the transcript. Everything it starts is stopped when it ends, also on errors.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from bot.files import private_dir
from bot.plugin import CallContext, Plugin

NETNS_ADDR = "10.213.0.1"
SENTENCES = ("slt-1", "slt-2", "slt-3", "slt-4")
TONE_HZ = 440.0
WAIT_S = 60.0


def say(text: str) -> None:
    print(f"demo: {text}", flush=True)


def main(data_dir: Path | None, keep: bool) -> int:
    """Run the demo; inside a private network namespace when root (re-executing itself)."""
    from bot.demo.synapse import HOW_TO_INSTALL, synapse_python
    from bot.extras import missing_extras

    if missing := missing_extras({"aiortc": "devsfu", "faster_whisper": "transcriber"}):
        print(f"callbot demo {missing}", file=sys.stderr)
        return 2
    if not synapse_python().exists():  # Synapse runs from its own environment
        print(f"callbot demo needs Synapse: {HOW_TO_INSTALL}", file=sys.stderr)
        return 2
    if os.geteuid() == 0 and "CALLBOT_DEMO_NETNS" not in os.environ and shutil.which("unshare"):
        args = [sys.executable, "-m", "bot", "demo"]
        args += ["--data-dir", str(data_dir)] if data_dir else []
        args += ["--keep"] if keep else []
        env = {**os.environ, "CALLBOT_DEMO_NETNS": "1"}
        return subprocess.call(["unshare", "--net", "--", *args], env=env)
    if os.environ.get("CALLBOT_DEMO_NETNS") == "1":
        address = _private_network()
    else:
        address = os.environ.get("CALLBOT_NETNS_ADDRS", "").split(",")[0] or _own_address()
    folder = data_dir or Path(tempfile.mkdtemp(prefix="callbot-demo-"))
    private_dir(folder)
    return asyncio.run(_demo(folder, address))


def _private_network() -> str:
    """lo and a veth pair in this (new) namespace: libwebrtc ignores loopback."""
    for cmd in (
        "ip link set lo up",
        "ip link add cbd0 type veth peer name cbd1",
        f"ip addr add {NETNS_ADDR}/24 dev cbd0",
        "ip addr add 10.213.0.2/24 dev cbd1",
        "ip link set cbd0 up",
        "ip link set cbd1 up",
    ):
        subprocess.run(cmd.split(), check=True)
    return NETNS_ADDR


def _own_address() -> str:
    """The address of the interface with the default route (connecting a UDP socket sends
    nothing)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # TEST-NET-1: only the route is looked up
            return s.getsockname()[0]
        except OSError:
            raise SystemExit(
                "demo: this machine has no network interface besides loopback, and libwebrtc "
                "ignores loopback; run the demo as root to use a private network namespace"
            ) from None


class Voice(Plugin):
    """Alice's microphone: once she is in the call, waits for ``go``, then says the sample
    sentences and plays a tone, in real time."""

    name = "demo-voice"
    #: the instance in Alice's call (the bot makes one per call)
    current: ClassVar[Voice | None] = None

    def __init__(self) -> None:
        Voice.current = self
        self.go = asyncio.Event()
        self.done = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def on_call_start(self, call: CallContext) -> None:
        out = await call.publish_audio("microphone")
        self._task = asyncio.create_task(self._speak(out))

    async def _speak(self, out: Any) -> None:
        from plugins.transcriber.samples import samples

        rate, frame = 48_000, 960
        silence = np.zeros(rate // 2, dtype=np.int16)
        t = np.arange(rate * 2) / rate
        tone = (0.3 * 32767 * np.sin(2 * math.pi * TONE_HZ * t)).astype(np.int16)
        script = [silence]
        for name in SENTENCES:
            script += [samples()[name].pcm(rate), silence, silence]
        script += [tone, silence]
        while not self.go.is_set():  # silence until the bot listens
            await out.write(np.zeros((frame, 1), dtype=np.int16))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.go.wait(), 0.01)
        for pcm in script:
            for i in range(0, pcm.size, frame):
                chunk = pcm[i : i + frame]
                await out.write(np.pad(chunk, (0, frame - chunk.size)).reshape(-1, 1))
        self.done.set()
        while True:  # keep the track alive with silence
            await out.write(np.zeros((frame, 1), dtype=np.int16))

    async def on_call_end(self) -> None:
        if self._task is not None:
            self._task.cancel()


async def _until(cond: Callable[[], bool], what: str, limit: float = WAIT_S) -> None:
    deadline = time.monotonic() + limit
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {limit:.0f} s for {what}")
        await asyncio.sleep(0.05)


async def _demo(folder: Path, address: str) -> int:
    from bot.app import CallBot
    from bot.config import parse_config
    from bot.demo.synapse import Synapse
    from bot.devsfu.server import DevSfu
    from bot.log import setup_logging

    setup_logging(os.environ.get("CALLBOT_DEMO_LOG_LEVEL", "ERROR"))
    synapse = Synapse(folder / "synapse")  # from its own environment (synapse_python)
    cleanup: list[Callable[[], Awaitable[None]]] = []
    try:
        say("starting a throwaway Synapse")
        await asyncio.to_thread(synapse.start)
        sfu = DevSfu(homeserver=synapse.url)
        await sfu.start(address)
        cleanup.append(sfu.stop)
        say(f"dev SFU at {sfu.url}, its JWT service at {sfu.http_url}")
        bot_account, alice_account = synapse.register("callbot"), synapse.register("alice")

        def config(account: Any, name: str, **extra: dict[str, Any]) -> Any:
            raw: dict[str, Any] = {
                "matrix": {
                    "homeserver": synapse.url,
                    "user_id": account.user_id,
                    "password": account.password,
                },
                "bot": {"data_dir": str(folder / name), "allowed_users": [alice_account.user_id]},
                "rtc": {"livekit_service_url": sfu.http_url},
                "logging": {"level": "WARNING"},
            }
            raw.update(extra)
            return parse_config(raw, base_dir=folder, environ={})

        bot = CallBot(config(bot_account, "bot", plugins={"enabled": ["recorder", "transcriber"]}))
        alice = CallBot(
            config(
                alice_account,
                "alice",
                plugins={"enabled": ["demo-voice"]},
                # Alice is this framework too: her own commands must not answer hers.
                bot={
                    "data_dir": str(folder / "alice"),
                    "command_prefix": "alice-bot:",
                },
            ),
            extra_plugins={"demo-voice": Voice},
        )
        for b in (bot, alice):
            await b.start()
            cleanup.append(b.stop)
        await alice.matrix.nio.set_displayname("Alice")
        say(f"the bot is {bot_account.user_id}; Alice is {alice_account.user_id}")

        resp = await alice.matrix.nio.room_create(
            name="callbot demo",
            invite=[bot_account.user_id],
            # As Element Call makes rooms for calls: everyone may send call memberships.
            power_level_override={"events": {"org.matrix.msc3401.call.member": 0}},
            initial_state=[
                {
                    "type": "m.room.encryption",
                    "state_key": "",
                    "content": {"algorithm": "m.megolm.v1.aes-sha2"},
                }
            ],
        )
        room = resp.room_id
        await _until(lambda: room in bot.matrix.joined_rooms(), "the bot to accept the invite")
        say(f"Alice made the encrypted room {room}, invited the bot, and starts a call")
        await alice.rtc.get_room_session(room).join()
        await _until(lambda: Voice.current is not None, "Alice's microphone")
        voice = Voice.current
        assert voice is not None

        async def command(text: str) -> None:
            say(f"Alice types {text}")
            await alice.matrix.send(room, {"msgtype": "m.text", "body": text})

        # Typed one after the other, as people do: the plugin commands wait for the join.
        await command("!join")
        await command("!record start")
        await command("!transcribe start")
        from plugins.recorder.plugin import Recorder
        from plugins.transcriber.plugin import Transcriber

        def started() -> bool:
            rec, tr = bot.media.instance(room, Recorder), bot.media.instance(room, Transcriber)
            return bool(rec and rec.recording and tr and tr.transcript)  # type: ignore[attr-defined]

        await _until(started, "recording and transcription to start")
        await _until(
            lambda: bot.media.e2ee_state(room, alice_identity(alice, room)) == "decrypting",
            "the bot to decrypt Alice's audio",
        )
        say("Alice speaks four sentences, then plays a 440 Hz tone")
        voice.go.set()
        await asyncio.wait_for(voice.done.wait(), WAIT_S)
        await asyncio.sleep(1.5)  # the last caption
        await command("!leave")
        await _until(lambda: not bot.media.runners(room), "the bot to leave the call")
        await bot.media.stop()  # waits for the plugins to finish their files
        return _report(folder / "bot" / "calls")
    except Exception as e:
        print(f"demo: failed: {e}", file=sys.stderr)
        return 1
    finally:
        for stop in reversed(cleanup):
            with contextlib.suppress(Exception):
                await stop()
        synapse.stop()


def alice_identity(alice: Any, room: str) -> str:
    session = alice.rtc.get_room_session(room)
    return session.sfu.identity if session.sfu else ""


def _report(calls: Path) -> int:
    import av

    folders = sorted(p for p in calls.glob("*/*") if p.is_dir())
    if not folders:
        print("demo: failed: no call folder was written", file=sys.stderr)
        return 1
    folder = folders[-1]
    say(f"done. The call's files are in {folder}:")
    for path in sorted(folder.iterdir()):
        line = f"  {path.name:28s} {path.stat().st_size:>9,d} bytes"
        if path.suffix in (".ogg", ".webm"):
            with av.open(str(path)) as c:
                line += f"  {(c.duration or 0) / 1e6:6.1f} s"
        print(line)
    transcript = folder / "transcript.txt"
    if not transcript.exists():
        print("demo: failed: no transcript was written", file=sys.stderr)
        return 1
    say("the transcript:")
    print(transcript.read_text(encoding="utf-8"), end="")
    return 0
