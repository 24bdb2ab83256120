"""The real ``callbot run`` as a child process, with its JSON log lines collected."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

from tests.synapse import Account


def write_config(path: Path, homeserver: str, account: Account, extra: str = "") -> Path:
    """A config for the bot process at ``path``: the account, data in ``data`` beside it,
    JSON log lines (what ``BotProcess.entries`` reads), then ``extra`` TOML."""
    path.write_text(
        f'[matrix]\nhomeserver = "{homeserver}"\nuser_id = "{account.user_id}"\n'
        f'password = "{account.password}"\n[bot]\ndata_dir = "data"\n'
        '[logging]\nformat = "json"\n' + extra
    )
    return path


#: [rtc] for a bot process that mints its own LiveKit tokens (no SFU is reached)
MINTED_RTC = (
    '[rtc]\nlivekit_url = "ws://127.0.0.1:1"\nlivekit_api_key = "k"\n'
    'livekit_api_secret = "a-secret-of-some-length-0123456789"\n'
)


class BotProcess:
    def __init__(self, config: Path, env: dict[str, str] | None = None) -> None:
        self.config = config
        self.env = {**os.environ, **(env or {})}
        self.lines: list[str] = []
        self.proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> BotProcess:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bot",
            "run",
            "-c",
            str(self.config),
            env=self.env,
            stderr=asyncio.subprocess.PIPE,
        )
        self._reader = asyncio.create_task(self._read())
        return self

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        async for raw in self.proc.stderr:
            self.lines.append(raw.decode())

    @property
    def entries(self) -> list[dict]:
        """The log as JSON objects (the config must set logging.format = "json")."""
        return [json.loads(line) for line in self.lines]

    def logged(self, msg: str) -> bool:
        return any(e["msg"] == msg for e in self.entries)

    async def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        """Send ``sig`` and wait; the exit code."""
        assert self.proc is not None
        if self.proc.returncode is None:
            self.proc.send_signal(sig)
        rc = await asyncio.wait_for(self.proc.wait(), timeout)
        if self._reader is not None:
            await self._reader
        return rc
