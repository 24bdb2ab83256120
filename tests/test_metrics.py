"""/metrics and /health of a real bot, and what plugins report."""

from __future__ import annotations

import time
from pathlib import Path

import aiohttp
import pytest

from bot.app import CallBot
from bot.commands import dispatch as dispatch_module
from bot.config import parse_config
from bot.errors import ConfigError
from bot.matrix.messages import IncomingMessage
from bot.testing import PluginHarness
from plugins.recorder.plugin import Recorder, RecorderConfig
from tests.conftest import bot_config, running_bot
from tests.synapse import Synapse, free_port


async def test_metrics_and_health_are_served(synapse: Synapse, tmp_path: Path) -> None:
    address = f"127.0.0.1:{free_port()}"
    config = bot_config(
        synapse, synapse.register("bot"), tmp_path / "data", metrics={"address": address}
    )
    async with running_bot(config) as bot, aiohttp.ClientSession() as http:
        async with http.get(f"http://{address}/health") as r:
            assert r.status == 200
            health = await r.json()
        assert health["status"] == "ok" and health["calls"] == 0
        assert 0 <= health["matrix_sync_age_s"] < 90
        async with http.get(f"http://{address}/metrics") as r:
            assert r.status == 200
            text = await r.text()
        assert "callbot_calls 0.0" in text
        assert "callbot_calls_limit 20.0" in text and "callbot_joins_refused_total 0.0" in text
        assert "# TYPE callbot_plugin_frames_delivered_total counter" in text
        # A stalled sync makes it unhealthy.
        bot.matrix.last_sync = 0.0
        async with http.get(f"http://{address}/health") as r:
            assert r.status == 503
            assert (await r.json())["status"] == "unhealthy"
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.ClientConnectionError):
            await http.get(f"http://{address}/health")


def test_not_started_is_unhealthy(tmp_path: Path) -> None:
    raw = {
        "matrix": {"homeserver": "http://127.0.0.1:1", "user_id": "@b:x", "password": "p"},
        "bot": {"data_dir": str(tmp_path)},
    }
    bot = CallBot(parse_config(raw, base_dir=tmp_path, environ={}))
    ok, details = bot.metrics.health()
    assert not ok and details["status"] == "unhealthy"


async def test_commands_refused_as_busy_are_counted(tmp_path: Path, monkeypatch) -> None:
    raw = {
        "matrix": {"homeserver": "http://127.0.0.1:1", "user_id": "@b:x", "password": "p"},
        "bot": {"data_dir": str(tmp_path)},
    }
    bot = CallBot(parse_config(raw, base_dir=tmp_path, environ={}))
    monkeypatch.setattr(dispatch_module, "MAX_RUNNING_COMMANDS", 0)
    now_ms = int(time.time() * 1000)
    for n in range(3):
        bot.dispatcher.submit(IncomingMessage("!r:x", f"$e{n}", "@a:x", "!np", now_ms))
    bot.dispatcher.submit(IncomingMessage("!r:x", "$chat", "@a:x", "hello", now_ms))
    await bot.dispatcher.drain()  # the one "busy" reply fails (not logged in): logged only
    assert "callbot_commands_dropped_total 3.0" in bot.metrics.render().decode()


@pytest.mark.parametrize("address", ["9464", "localhost:", "host:99999", ":80"])
def test_a_bad_address_is_refused(tmp_path: Path, address: str) -> None:
    raw = {
        "matrix": {"homeserver": "http://127.0.0.1:1", "user_id": "@b:x", "password": "p"},
        "bot": {"data_dir": str(tmp_path)},
        "metrics": {"address": address},
    }
    with pytest.raises(ConfigError, match=r"metrics\.address: must be HOST:PORT"):
        parse_config(raw, base_dir=tmp_path, environ={})


async def test_the_recorder_reports_what_it_writes(tmp_path: Path) -> None:
    h = PluginHarness(Recorder(RecorderConfig(upload_mixed=False)))
    await h.start()
    assert h.plugin.metrics() == {"recording": 0}
    alice = h.participant("@alice:x")
    await h.plugin.start()  # type: ignore[attr-defined]
    await h.feed_audio(alice, seconds=2.0, freq=440)
    figures = h.plugin.metrics()
    assert figures["recording"] == 1 and figures["participants_recorded"] == 1
    assert figures["bytes_written"] > 1000 and figures["frames_lost"] == 0
    await h.end()
