"""Fleet mode without a server: the config section, and how the leader picks a worker."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.app import CallBot
from bot.config import FleetConfig, load_config, parse_config
from bot.errors import ConfigError
from bot.fleet.assignments import choose, loads, orphaned
from bot.fleet.db import Assignment, Worker, account_key
from bot.fleet.setup import fleet_store_url

REPO = Path(__file__).resolve().parent.parent
BASE = {
    "matrix": {
        "homeserver": "https://example.org",
        "user_id": "@bot:example.org",
        "password": "pw",
    },
    "bot": {"data_dir": "data"},
}
URL = "postgresql://callbot:s3cret-pw@db.example.org/callbot"


def _parse(fleet: dict | None = None, environ: dict | None = None):
    raw = {**BASE, **({"fleet": fleet} if fleet is not None else {})}
    return parse_config(raw, base_dir=Path("/srv/bot"), environ=environ or {})


def test_without_a_fleet_section_the_bot_is_one_process() -> None:
    cfg = _parse()
    assert cfg.fleet == FleetConfig() and not cfg.fleet.enabled
    bot = CallBot(cfg)
    assert bot.fleet is None
    assert type(bot.call_commands).__name__ == "CallCommands"
    assert bot.jobs is not None and bot.jobs.url.startswith("sqlite:///")


def test_a_fleet_worker_keeps_its_schedule_in_the_fleets_database() -> None:
    cfg = _parse({"calls_dir": "/shared/calls"}, {"CALLBOT_FLEET_DATABASE_URL": URL})
    assert cfg.fleet.enabled and cfg.fleet.calls_dir == Path("/shared/calls")
    bot = CallBot(cfg)
    assert bot.fleet is not None
    assert bot.jobs is not None and bot.jobs.url == URL.replace(
        "postgresql:", "postgresql+psycopg:"
    )
    assert bot.leader_only == {"schedule", "schedules", "unschedule", "timezone"}
    assert bot.media.files_dir("!r:x") == Path("/shared/calls/r_x")
    # the password is a secret: never logged, never in the repr
    assert "s3cret-pw" in cfg.secrets() and "s3cret-pw" not in repr(cfg)


def test_database_url_must_be_postgresql() -> None:
    with pytest.raises(ConfigError) as e:
        _parse({"database_url": "sqlite:///x.db"})
    assert "fleet.database_url" in str(e.value)


def test_example_config_documents_the_fleet() -> None:
    text = (REPO / "config.toml.example").read_text()
    assert "[fleet]" in text and "database_url" in text and "calls_dir" in text
    assert not load_config(REPO / "config.toml.example", environ={}).fleet.enabled


def test_store_url_and_lock_key() -> None:
    assert fleet_store_url("postgres://u@h/d") == "postgresql+psycopg://u@h/d"
    assert fleet_store_url("postgresql://u@h/d") == "postgresql+psycopg://u@h/d"
    assert 0 <= account_key("@bot:example.org") < 2**31
    assert account_key("@bot:example.org") != account_key("@other:example.org")


def _w(name: str, max_calls: int = 2) -> Worker:
    return Worker(name, max_calls, (), "")


def _a(room: str, worker: str) -> Assignment:
    return Assignment(room, worker, "20260101T000000Z", None, False)


def test_the_least_loaded_worker_gets_the_call_within_its_limit() -> None:
    a, b = _w("A"), _w("B", max_calls=4)
    assert choose([a, b], []) is a  # a tie: the oldest (the list's order)
    assert choose([a, b], [_a("!1", "A")]) is b
    # B's 1 of 4 is less than A's 1 of 2
    assert choose([a, b], [_a("!1", "A"), _a("!2", "B")]) is b
    assert choose([a, b], [_a("!1", "A"), _a("!2", "B"), _a("!3", "B")]) is a
    full = [_a("!1", "A"), _a("!2", "A"), *(_a(f"!b{i}", "B") for i in range(4))]
    assert choose([a, b], full) is None
    assert [(x.worker.device_id, x.calls) for x in loads([a, b], full)] == [("A", 2), ("B", 4)]


def test_calls_of_dead_workers_are_orphaned() -> None:
    calls = [_a("!1", "A"), _a("!2", "GONE")]
    assert orphaned([_w("A")], calls) == [calls[1]]
    assert orphaned([_w("A"), _w("GONE")], calls) == []


async def test_a_worker_that_cannot_reach_its_database_stops_before_logging_in() -> None:
    from bot.fleet import FleetLost
    from tests.postgres import free_port

    url = f"postgresql://callbot:s3cret-pw@127.0.0.1:{free_port()}/callbot"
    bot = CallBot(_parse(environ={"CALLBOT_FLEET_DATABASE_URL": url}))
    with pytest.raises(FleetLost) as e:
        await bot.start()
    assert "cannot connect to fleet.database_url" in str(e.value)
    assert "s3cret-pw" not in str(e.value)
    assert not bot.matrix.started  # no device was made for a worker that cannot work
    await bot.stop()
