from __future__ import annotations

import contextlib
import io
import logging
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from bot.app import CallBot
from bot.config import Config, parse_config
from bot.devsfu.server import DevSfu
from bot.log import setup_logging
from tests.federation import federation_ca, two_homeservers, two_sfus  # noqa: F401 - fixtures
from tests.fleet import pg  # noqa: F401 - fixture
from tests.peer import Peer
from tests.synapse import Account, Synapse


@pytest.fixture(scope="session")
def netns_addrs() -> tuple[str, str]:
    """The two veth addresses of the namespace scripts/netns-run.sh made (media tests)."""
    addrs = os.environ.get("CALLBOT_NETNS_ADDRS", "")
    if not addrs:
        pytest.skip(
            "needs the private network namespace of scripts/netns-run.sh (libwebrtc ignores "
            "loopback): run scripts/test.sh as root"
        )
    first, second = addrs.split(",")
    return first, second


@pytest.fixture(scope="session")
def synapse(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Synapse]:
    """One real Synapse for the whole run; tests register their own users."""
    server = Synapse(tmp_path_factory.mktemp("synapse"))
    server.start()
    yield server
    server.stop()


def bot_config(
    synapse: Synapse, account: Account, data_dir: Path, **sections: dict[str, Any]
) -> Config:
    raw: dict[str, Any] = {
        "matrix": {
            "homeserver": synapse.url,
            "user_id": account.user_id,
            "password": account.password,
        },
        "bot": {"data_dir": str(data_dir)},
    }
    for name, values in sections.items():
        raw.setdefault(name, {}).update(values)
    return parse_config(raw, base_dir=data_dir.parent, environ={})


@contextlib.asynccontextmanager
async def running_bot(config: Config) -> AsyncIterator[CallBot]:
    bot = CallBot(config)
    await bot.start()
    try:
        yield bot
    finally:
        await bot.stop()


@contextlib.asynccontextmanager
async def peer(synapse: Synapse, tmp_path: Path, prefix: str) -> AsyncIterator[Peer]:
    account = synapse.register(prefix)
    p = await Peer(synapse.url, account, tmp_path / f"peer-{account.localpart}").start()
    try:
        yield p
    finally:
        await p.stop()


@pytest.fixture
async def sfu(synapse: Synapse, netns_addrs: tuple[str, str]) -> AsyncIterator[DevSfu]:
    """The dev SFU with its JWT service, checking OpenID tokens against ``synapse``."""
    server = DevSfu(homeserver=synapse.url)
    await server.start(netns_addrs[0])
    yield server
    await server.stop()


@pytest.fixture
def debug_log() -> Iterator[io.StringIO]:
    """All logging at DEBUG into a buffer, through the bot's own formatter."""
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    buf = io.StringIO()
    setup_logging("DEBUG", "human", buf)
    yield buf
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])
