"""Building a fleet worker from the config, importing psycopg only when one is configured."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from bot.config import Config
from bot.consent import OptOuts
from bot.errors import ConfigError
from bot.rtc.commands import CallCommands, CallExtras, MediaState
from bot.schedule.timezones import RoomTimezones

if TYPE_CHECKING:
    from bot.fleet.worker import FleetWorker, PostFn
    from bot.rtc.manager import MatrixRTCSessionManager


def fleet_worker(config: Config, rtc: MatrixRTCSessionManager, post: PostFn) -> FleetWorker:
    try:
        from bot.fleet.db import FleetDb
        from bot.fleet.worker import FleetWorker
    except ImportError as e:  # psycopg: pip install 'matrix-callbot[fleet]'
        raise ConfigError(
            [f"fleet.database_url: fleet mode needs the 'fleet' extra (psycopg): {e}"]
        ) from None
    assert config.fleet.database_url is not None
    return FleetWorker(
        FleetDb(config.fleet.database_url, config.matrix.user_id),
        rtc,
        max_calls=config.rtc.max_calls,
        metrics_address=config.metrics.address,
        post=post,
    )


def fleet_optouts(fleet: FleetWorker, local: Path) -> OptOuts:
    from bot.fleet.consent import FleetOptOuts

    optouts = FleetOptOuts(fleet.db, local)
    fleet.optouts = optouts
    return optouts


def fleet_timezones(
    fleet: FleetWorker, local: Path, default: str, rooms: Mapping[str, str]
) -> RoomTimezones:
    from bot.fleet.timezones import FleetRoomTimezones

    timezones = FleetRoomTimezones(fleet.db, local, default, rooms)
    fleet.timezones = timezones
    return timezones


def fleet_store_url(url: str) -> str:
    """The job store's SQLAlchemy URL for the fleet's database (through psycopg 3)."""
    _, sep, rest = url.partition("://")
    return f"postgresql+psycopg{sep}{rest}"


def fleet_call_commands(
    rtc: MatrixRTCSessionManager,
    fleet: FleetWorker,
    media_state: MediaState | None,
    extras: CallExtras | None,
) -> CallCommands:
    from bot.fleet.commands import FleetCallCommands

    return FleetCallCommands(rtc, fleet, media_state, extras)
