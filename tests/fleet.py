"""Fleets of real ``callbot run`` workers of one account on a real PostgreSQL (tests/postgres.py).

Each worker has its own config and data_dir (its own device and Olm store); call folders go
to one shared ``fleet.calls_dir``. The first worker makes the account's cross-signing identity;
the others restore it with the recovery key it wrote, as an operator would configure them
(``CALLBOT_MATRIX_RECOVERY_KEY``). The database URL, with its password, comes from the
environment (``CALLBOT_FLEET_DATABASE_URL``), never from the config file.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from bot.matrix.cross_signing import RECOVERY_KEY_FILE
from tests import postgres
from tests.botproc import BotProcess, write_config
from tests.peer import wait_until
from tests.synapse import Account, Synapse

START_TIMEOUT = 60.0


@pytest.fixture
def pg() -> Iterator[postgres.Postgres]:
    """A fresh PostgreSQL cluster for one test."""
    why = postgres.available()
    if why:
        pytest.skip(why)
    server = postgres.Postgres()
    server.start()
    yield server
    server.stop()


class Fleet:
    def __init__(
        self, synapse: Synapse, pg: postgres.Postgres, tmp_path: Path, extra: str = ""
    ) -> None:
        self.synapse = synapse
        self.pg = pg
        self.tmp_path = tmp_path
        self.extra = extra
        self.account: Account = synapse.register("bot")
        self.calls_dir = tmp_path / "calls"
        self.workers: list[BotProcess] = []
        self.recovery_key: str | None = None
        #: the /metrics URL of each worker serving one, by id(worker)
        self.metrics: dict[int, str] = {}

    async def add(self, metrics: bool = False) -> BotProcess:
        """One more worker, started and part of the fleet; ``metrics``: serving /metrics on
        a port of its own (``self.metrics[worker]``)."""
        folder = self.tmp_path / f"worker{len(self.workers)}"
        folder.mkdir()
        extra = f'[fleet]\ncalls_dir = "{self.calls_dir}"\n' + self.extra
        port = postgres.free_port()
        if metrics:
            extra += f'[metrics]\naddress = "127.0.0.1:{port}"\n'
        cfg = write_config(folder / "config.toml", self.synapse.url, self.account, extra)
        env = {"CALLBOT_FLEET_DATABASE_URL": self.pg.url}
        if self.recovery_key is not None:
            env["CALLBOT_MATRIX_RECOVERY_KEY"] = self.recovery_key
        worker = await BotProcess(cfg, env).start()
        self.workers.append(worker)
        if metrics:
            self.metrics[id(worker)] = f"http://127.0.0.1:{port}/metrics"
        await wait_until(
            lambda: self.ready(worker) or (worker.proc and worker.proc.returncode is not None),
            START_TIMEOUT,
            "a worker to start",
        )
        assert self.ready(worker), worker.lines[-20:]
        if self.recovery_key is None:
            text = (folder / "data" / RECOVERY_KEY_FILE).read_text()
            self.recovery_key = text.strip().splitlines()[-1]
        return worker

    @staticmethod
    def ready(worker: BotProcess) -> bool:
        return any(e["msg"].startswith("ready:") for e in worker.entries)

    @staticmethod
    def device(worker: BotProcess) -> str:
        """The worker's device ID, from its "fleet worker ... started" line."""
        line = next(e["msg"] for e in worker.entries if e["msg"].startswith("fleet worker "))
        return line.split()[2]

    @staticmethod
    def leads(worker: BotProcess) -> bool:
        return any(e["msg"].endswith("is now the fleet's leader") for e in worker.entries)

    async def stop(self) -> None:
        for worker in self.workers:
            if worker.proc is not None and worker.proc.returncode is None:
                await worker.stop(signal.SIGKILL)

    def logs(self) -> str:
        return "".join(line for w in self.workers for line in w.lines)
