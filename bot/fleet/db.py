"""The fleet's shared PostgreSQL database: its tables, and a worker's connection to it.

Every fact the fleet agrees on lives in PostgreSQL itself, so nothing here is consensus of our
own making:

* **who is alive**: each worker's row names the backend (``pg_backend_pid`` and its start
  time) of its one *session* connection. PostgreSQL ends that backend when the process dies
  (the kernel closes its socket at once on SIGKILL), so a worker is alive exactly while its
  backend is in ``pg_stat_activity``;
* **who leads**: the holder of a session-level advisory lock on that connection
  (``pg_try_advisory_lock``), which PostgreSQL frees when the session ends;
* **which worker holds which call**: rows of ``callbot_fleet_calls``, written by the leader;
* **what changed**: ``NOTIFY callbot_fleet`` after each write, heard on a second connection
  (``LISTEN``), so workers act at once rather than at their next poll.

The session connection is never re-made: a worker whose session ends has lost its lock and its
liveness, so it stops (``FleetLost``) and its supervisor restarts it as a new worker.
"""

from __future__ import annotations

import asyncio
import json
import logging
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.rows import dict_row

from bot.fleet import FleetLost

log = logging.getLogger(__name__)

CHANNEL = "callbot_fleet"
#: the first key of the fleet's advisory locks (the second is per account): "cbot"
LOCK_CLASS = 0x63626F74
#: the second key of the schema's lock (one-off, at start-up)
SCHEMA_LOCK = 1
#: a session silent this long is ended by the server; a query waits this long at most
SESSION_TIMEOUT_S = 10

SCHEMA = """
CREATE TABLE IF NOT EXISTS callbot_fleet_workers (
    account text NOT NULL,
    device_id text NOT NULL,
    pid integer NOT NULL,
    backend_start timestamptz NOT NULL,
    max_calls integer NOT NULL,
    calls jsonb NOT NULL DEFAULT '[]',
    metrics text NOT NULL DEFAULT '',
    started timestamptz NOT NULL DEFAULT now(),
    seen timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (account, device_id)
);
CREATE TABLE IF NOT EXISTS callbot_fleet_optouts (
    account text NOT NULL,
    room_id text NOT NULL,
    user_id text NOT NULL,
    PRIMARY KEY (account, room_id, user_id)
);
CREATE TABLE IF NOT EXISTS callbot_fleet_room_zones (
    account text NOT NULL,
    room_id text NOT NULL,
    zone text NOT NULL,
    PRIMARY KEY (account, room_id)
);
CREATE TABLE IF NOT EXISTS callbot_fleet_calls (
    account text NOT NULL,
    room_id text NOT NULL,
    worker text NOT NULL,
    folder text NOT NULL,
    plan jsonb,
    resumed boolean NOT NULL DEFAULT false,
    assigned timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (account, room_id)
);
"""

#: the workers of an account whose session is still open: alive
ALIVE = """
SELECT w.device_id, w.max_calls, w.calls, w.metrics, w.started
FROM callbot_fleet_workers w
JOIN pg_stat_activity a ON a.pid = w.pid AND a.backend_start = w.backend_start
WHERE w.account = %s
"""

#: the device whose session holds the account's leader lock
LEADER = """
SELECT w.device_id FROM pg_locks l
JOIN callbot_fleet_workers w ON w.pid = l.pid
JOIN pg_stat_activity a ON a.pid = w.pid AND a.backend_start = w.backend_start
WHERE l.locktype = 'advisory' AND l.granted AND l.classid::bigint = %s AND l.objid::bigint = %s
  AND l.objsubid = 2 AND w.account = %s
"""


def account_key(account: str) -> int:
    """The second advisory lock key of an account (a positive int4)."""
    return zlib.crc32(account.encode()) & 0x7FFFFFFF


@dataclass(frozen=True)
class Worker:
    device_id: str
    max_calls: int
    calls: tuple[str, ...]
    metrics: str


@dataclass(frozen=True)
class Assignment:
    room_id: str
    worker: str
    folder: str
    plan: dict[str, Any] | None
    resumed: bool


#: the live worker holding a room's call
HOLDER = f"""
SELECT c.worker FROM callbot_fleet_calls c JOIN ({ALIVE}) w ON w.device_id = c.worker
WHERE c.account = %s AND c.room_id = %s
"""  # noqa: S608 - constant text, no value in it


#: libpq's TCP keepalives: a dead server is noticed in about 10 s, not the kernel's 2 h
KEEPALIVES: dict[str, Any] = {
    "keepalives": 1,
    "keepalives_idle": 5,
    "keepalives_interval": 2,
    "keepalives_count": 3,
}


class FleetDb:
    """One worker's two connections: the session (its identity, the leader lock, all
    queries, one at a time) and the listener (``LISTEN``)."""

    def __init__(self, url: str, account: str) -> None:
        self.url = url
        self.account = account
        self.key = account_key(account)
        self._session: psycopg.AsyncConnection[Any] | None = None
        self._listener: psycopg.AsyncConnection[Any] | None = None
        self._lock = asyncio.Lock()
        #: set by every NOTIFY on the channel
        self.changed = asyncio.Event()
        self._listen_task: asyncio.Task[None] | None = None

    async def connect(self) -> None:
        try:
            self._session = await psycopg.AsyncConnection.connect(
                self.url, autocommit=True, connect_timeout=10, **KEEPALIVES
            )
            self._listener = await psycopg.AsyncConnection.connect(
                self.url, autocommit=True, connect_timeout=10, **KEEPALIVES
            )
        except psycopg.Error as e:
            # psycopg's message names host and port, never the password
            raise FleetLost(f"cannot connect to fleet.database_url: {e}") from None
        # The server ends a session whose worker stopped talking (a partition, a frozen host:
        # no FIN to end it at once): the lock and the worker's calls are free 10 s later.
        # The worker's loop queries every second, so its own session is never that idle.
        await self._session.execute(f"SET idle_session_timeout = '{SESSION_TIMEOUT_S}s'")
        async with self._session.transaction():
            # Two workers starting at once must not both create the tables.
            await self._session.execute(
                "SELECT pg_advisory_xact_lock(%s::int, %s::int)", (LOCK_CLASS, SCHEMA_LOCK)
            )
            await self._session.execute(SCHEMA)
        await self._listener.execute(f"LISTEN {CHANNEL}")
        self._listen_task = asyncio.create_task(self._listen(), name="fleet-listen")

    async def _listen(self) -> None:
        assert self._listener is not None
        try:
            async for _ in self._listener.notifies():
                self.changed.set()
        except psycopg.Error as e:
            log.warning("the fleet's notification connection ended: %s", e)

    async def close(self) -> None:
        if self._listen_task is not None:
            self._listen_task.cancel()
        for conn in (self._listener, self._session):
            if conn is not None:
                try:
                    await conn.close()
                except psycopg.Error:
                    pass

    async def query(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        """Run one statement on the session connection; its rows. FleetLost if it ended."""
        if self._session is None:
            raise FleetLost("not connected")
        async with self._lock:
            try:
                async with asyncio.timeout(SESSION_TIMEOUT_S):
                    async with self._session.cursor(row_factory=dict_row) as cur:
                        await cur.execute(sql, params)
                        return await cur.fetchall() if cur.description else []
            except psycopg.OperationalError as e:
                raise FleetLost(f"the fleet database session ended: {e}") from None
            except TimeoutError:
                # the server may have ended the session meanwhile: the lock may be another's
                raise FleetLost("the fleet database did not answer in time") from None

    async def notify(self) -> None:
        await self.query(f"NOTIFY {CHANNEL}")

    # ------------------------------------------------------------------ workers

    async def register(self, device_id: str, max_calls: int, metrics: str) -> None:
        """This worker's row, naming its session's backend (so: alive while it lasts)."""
        await self.query(
            """
            INSERT INTO callbot_fleet_workers (account, device_id, pid, backend_start,
                max_calls, metrics)
            SELECT %s, %s, pid, backend_start, %s, %s
            FROM pg_stat_activity WHERE pid = pg_backend_pid()
            ON CONFLICT (account, device_id) DO UPDATE SET pid = EXCLUDED.pid,
                backend_start = EXCLUDED.backend_start, max_calls = EXCLUDED.max_calls,
                metrics = EXCLUDED.metrics, calls = '[]', started = now(), seen = now()
            """,
            (self.account, device_id, max_calls, metrics),
        )
        await self.notify()

    async def report(self, device_id: str, calls: list[str]) -> None:
        await self.query(
            "UPDATE callbot_fleet_workers SET calls = %s, seen = now() "
            "WHERE account = %s AND device_id = %s",
            (json.dumps(sorted(calls)), self.account, device_id),
        )

    async def alive(self) -> list[Worker]:
        rows = await self.query(ALIVE + " ORDER BY w.started, w.device_id", (self.account,))
        return [
            Worker(r["device_id"], r["max_calls"], tuple(r["calls"]), r["metrics"]) for r in rows
        ]

    async def forget_dead(self) -> None:
        """Rows of workers whose session ended and that hold no call any more."""
        await self.query(
            """
            DELETE FROM callbot_fleet_workers w WHERE w.account = %s
            AND NOT EXISTS (SELECT 1 FROM pg_stat_activity a
                            WHERE a.pid = w.pid AND a.backend_start = w.backend_start)
            AND NOT EXISTS (SELECT 1 FROM callbot_fleet_calls c
                            WHERE c.account = w.account AND c.worker = w.device_id)
            """,
            (self.account,),
        )

    # ------------------------------------------------------------------ the leader lock

    async def try_lead(self) -> bool:
        rows = await self.query(
            "SELECT pg_try_advisory_lock(%s::int, %s::int) AS got", (LOCK_CLASS, self.key)
        )
        return bool(rows[0]["got"])

    async def leader(self) -> str | None:
        rows = await self.query(LEADER, (LOCK_CLASS, self.key, self.account))
        return rows[0]["device_id"] if rows else None

    # ------------------------------------------------------------------ calls

    async def assignments(self) -> list[Assignment]:
        rows = await self.query(
            "SELECT room_id, worker, folder, plan, resumed FROM callbot_fleet_calls "
            "WHERE account = %s ORDER BY assigned",
            (self.account,),
        )
        return [
            Assignment(r["room_id"], r["worker"], r["folder"], r["plan"], r["resumed"])
            for r in rows
        ]

    async def holder(self, room_id: str) -> str | None:
        """The live worker holding the room's call, if any."""
        rows = await self.query(
            HOLDER,
            (self.account, self.account, room_id),
        )
        return rows[0]["worker"] if rows else None

    async def assign(
        self,
        room_id: str,
        worker: str,
        folder: str,
        plan: dict[str, Any] | None = None,
        resumed: bool = False,
    ) -> None:
        """The room's call goes to ``worker`` (a new assignment, or a takeover)."""
        await self.query(
            """
            INSERT INTO callbot_fleet_calls (account, room_id, worker, folder, plan, resumed)
            VALUES (%s, %s, %s, %s, %s, %s)
            ON CONFLICT (account, room_id) DO UPDATE SET worker = EXCLUDED.worker,
                folder = EXCLUDED.folder, plan = EXCLUDED.plan, resumed = EXCLUDED.resumed,
                assigned = now()
            """,
            (
                self.account,
                room_id,
                worker,
                folder,
                json.dumps(plan) if plan is not None else None,
                resumed,
            ),
        )
        await self.notify()

    async def optouts(self) -> list[tuple[str, str]]:
        rows = await self.query(
            "SELECT room_id, user_id FROM callbot_fleet_optouts WHERE account = %s",
            (self.account,),
        )
        return [(r["room_id"], r["user_id"]) for r in rows]

    async def set_optout(self, room_id: str, user_id: str, out: bool) -> None:
        if out:
            await self.query(
                "INSERT INTO callbot_fleet_optouts (account, room_id, user_id) "
                "VALUES (%s, %s, %s) ON CONFLICT DO NOTHING",
                (self.account, room_id, user_id),
            )
        else:
            await self.query(
                "DELETE FROM callbot_fleet_optouts WHERE account = %s AND room_id = %s "
                "AND user_id = %s",
                (self.account, room_id, user_id),
            )
        await self.notify()

    async def room_zones(self) -> dict[str, str]:
        rows = await self.query(
            "SELECT room_id, zone FROM callbot_fleet_room_zones WHERE account = %s",
            (self.account,),
        )
        return {r["room_id"]: r["zone"] for r in rows}

    async def set_room_zone(self, room_id: str, zone: str, replace: bool = True) -> None:
        await self.query(
            "INSERT INTO callbot_fleet_room_zones (account, room_id, zone) VALUES (%s, %s, %s) "
            "ON CONFLICT (account, room_id) DO UPDATE SET zone = "
            "CASE WHEN %s THEN EXCLUDED.zone ELSE callbot_fleet_room_zones.zone END",
            (self.account, room_id, zone, replace),
        )

    async def unassign(self, room_id: str, worker: str | None = None) -> None:
        """The room's call is no longer held (by ``worker``, if given)."""
        if worker is None:
            await self.query(
                "DELETE FROM callbot_fleet_calls WHERE account = %s AND room_id = %s",
                (self.account, room_id),
            )
        else:
            await self.query(
                "DELETE FROM callbot_fleet_calls WHERE account = %s AND room_id = %s "
                "AND worker = %s",
                (self.account, room_id, worker),
            )
        await self.notify()
