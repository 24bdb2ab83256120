"""The [schedule] section and the rtc.auto_leave* options: checked like the rest of the config,
and reported by `callbot check-config`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bot.app import CallBot
from bot.cli import main
from bot.config import parse_config
from bot.errors import ConfigError
from bot.schedule.scheduler import default_store_url

BASE: dict[str, Any] = {
    "matrix": {
        "homeserver": "https://matrix.example.org",
        "user_id": "@bot:example.org",
        "password": "pw",
    },
    "bot": {"data_dir": "data"},
}


def config(tmp_path: Path, **sections: dict[str, Any]):
    return parse_config({**BASE, **sections}, base_dir=tmp_path, environ={})


def problems(tmp_path: Path, **sections: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as e:
        config(tmp_path, **sections)
    return e.value.problems


def test_defaults(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    assert cfg.schedule.enabled and cfg.schedule.timezone == "UTC"
    assert cfg.schedule.misfire_grace == 300 and cfg.schedule.job_store is None
    assert (cfg.rtc.auto_leave, cfg.rtc.auto_leave_grace, cfg.rtc.wait_for_participants) == (
        True,
        30.0,
        600.0,
    )
    bot = CallBot(cfg)
    assert bot.jobs is not None and bot.jobs.url == default_store_url(cfg.bot.data_dir)
    assert {"schedule", "schedules", "unschedule", "timezone"} <= bot.registry.names()


def test_bad_values_name_the_key(tmp_path: Path) -> None:
    found = problems(
        tmp_path,
        schedule={
            "timezone": "Mars/Olympus",
            "room_timezones": {"general": "UTC"},
            "job_store": "not a url",
            "misfire_grace": 0,
            "misfire": 3,
        },
        rtc={"auto_leave_grace": -1},
    )
    assert sorted(found) == sorted(
        [
            "schedule.misfire: unknown key (did you mean 'misfire_grace'?)",
            "schedule.timezone: unknown time zone 'Mars/Olympus' (use an IANA name like "
            "'Europe/Berlin')",
            "schedule.room_timezones: keys must be room IDs like '!abc:example.org', got 'general'",
            "schedule.job_store: must be an SQLAlchemy database URL like "
            "'postgresql://user@host/db'",
            "schedule.misfire_grace: must be greater than 0",
            "rtc.auto_leave_grace: must be 0 or more",
        ]
    )
    assert problems(tmp_path, schedule={"room_timezones": {"!a:b": "Nowhere/City"}}) == [
        "schedule.room_timezones: !a:b: unknown time zone 'Nowhere/City' (use an IANA name "
        "like 'Europe/Berlin')"
    ]
    assert problems(tmp_path, schedule={"room_timezones": {"!a:b": 5}}) == [
        "schedule.room_timezones: must be a table of strings, got a table"
    ]


def test_a_database_without_its_driver_is_reported(tmp_path: Path, capsys) -> None:
    path = tmp_path / "config.toml"
    path.write_text(
        '[matrix]\nhomeserver = "https://matrix.example.org"\nuser_id = "@bot:example.org"\n'
        'password = "pw"\n[bot]\ndata_dir = "data"\n'
        '[schedule]\njob_store = "postgresql+nosuchdriver://callbot:dbsecret@db/callbot"\n'
    )
    assert main(["check-config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "schedule.job_store: cannot use this database URL" in err
    assert not (tmp_path / "data").exists()  # checking does no I/O


def test_the_database_password_is_a_secret(tmp_path: Path) -> None:
    cfg = config(tmp_path, schedule={"job_store": "postgresql://callbot:dbsecret@db/callbot"})
    assert "dbsecret" in cfg.secrets()


def test_scheduling_can_be_turned_off(tmp_path: Path) -> None:
    bot = CallBot(config(tmp_path, schedule={"enabled": False}, rtc={"auto_leave": False}))
    assert bot.jobs is None and bot.auto_leave is None
    assert "schedule" not in bot.registry.names()
