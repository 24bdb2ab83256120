"""A real PostgreSQL server for the fleet tests: Debian's ``postgresql`` package
(scripts/test.sh installs it), a throwaway cluster on 127.0.0.1 with a password.

PostgreSQL refuses to run as root, so as root the cluster belongs to, and the server runs as,
the unprivileged ``postgres`` user the package creates (``runuser``); otherwise as ourselves.
"""

from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg


def _bin_dir() -> Path | None:
    """Debian keeps the server's programs under /usr/lib/postgresql/<version>/bin."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"))
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("postgres")
    return Path(on_path).parent if on_path else None


def available() -> str | None:
    """Why no server can be started here, or None."""
    if _bin_dir() is None:
        return "needs PostgreSQL (apt-get install postgresql; scripts/test.sh does it as root)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "as root, PostgreSQL needs its unprivileged 'postgres' user (the package's)"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Postgres:
    """One cluster: ``start()``, ``url`` for the bot, ``stop()``."""

    user = "callbot"

    def __init__(self) -> None:
        self.password = secrets.token_urlsafe(16)
        self.port = free_port()
        self.bin = _bin_dir()
        # Under /tmp itself, not pytest's 0700 tmp_path: the postgres user must reach it.
        self.dir = Path(tempfile.mkdtemp(prefix="callbot-pg-"))
        self.data = self.dir / "data"
        self.proc: subprocess.Popen[bytes] | None = None
        self._as: list[str] = []
        if os.geteuid() == 0:
            self._as = ["runuser", "-u", "postgres", "--"]
            pw = pwd.getpwnam("postgres")
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)

    @property
    def url(self) -> str:
        return f"postgresql://{self.user}:{self.password}@127.0.0.1:{self.port}/postgres"

    def start(self, timeout_s: float = 30.0) -> None:
        assert self.bin is not None
        pwfile = self.dir / "pw"
        pwfile.write_text(self.password)
        if self._as:
            pw = pwd.getpwnam("postgres")
            os.chown(pwfile, pw.pw_uid, pw.pw_gid)
        pwfile.chmod(0o600)
        subprocess.run(
            [
                *self._as,
                str(self.bin / "initdb"),
                "-D",
                str(self.data),
                "-U",
                self.user,
                f"--pwfile={pwfile}",
                "--auth=scram-sha-256",
                "-E",
                "UTF8",
                "--no-sync",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        pwfile.unlink()
        self.proc = subprocess.Popen(
            [
                *self._as,
                str(self.bin / "postgres"),
                "-D",
                str(self.data),
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-k",
                str(self.dir),
                "-c",
                "fsync=off",
                "-c",
                "max_connections=100",
            ],
            stdout=subprocess.DEVNULL,
            stderr=open(self.dir / "server.log", "wb"),  # the child keeps it
        )
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                psycopg.connect(self.url, connect_timeout=2).close()
                return
            except psycopg.OperationalError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"PostgreSQL did not start: {(self.dir / 'server.log').read_text()}"
                    ) from None
                time.sleep(0.2)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            # "fast": ends the sessions (SIGTERM would wait for every client to go)
            subprocess.run(
                [*self._as, str(self.bin / "pg_ctl"), "stop", "-D", str(self.data), "-m", "fast"],
                check=False,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                timeout=30,
            )
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)
