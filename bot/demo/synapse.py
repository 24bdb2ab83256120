"""A throwaway Synapse on 127.0.0.1 for the demo and the tests: SQLite, a free port, MatrixRTC
features on (delayed events, sticky events, /rtc/transports), rate limits out of the way.

Synapse runs from its own virtual environment, never the bot's: its exact pins would clash
with ours. ``synapse_python()`` finds it: ``CALLBOT_SYNAPSE_PYTHON``, else ``.venv-synapse`` in
the checkout (``scripts/demo.sh`` and ``scripts/test.sh`` install it there).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bot.files import private_dir, write_private

SERVER_NAME = "localhost"
#: what scripts/_env.sh installs into .venv-synapse
SYNAPSE_VERSION = "1.163.2"
#: the checkout this module is in (an editable install, as the scripts make)
CHECKOUT = Path(__file__).resolve().parents[2]
HOW_TO_INSTALL = (
    "Synapse runs from its own virtual environment: scripts/demo.sh makes it "
    f"(.venv-synapse), or by hand: python3 -m venv .venv-synapse && "
    f".venv-synapse/bin/pip install matrix-synapse=={SYNAPSE_VERSION}; "
    "CALLBOT_SYNAPSE_PYTHON=/path/to/bin/python names another"
)


def synapse_python() -> Path:
    """The Python that runs Synapse: ``$CALLBOT_SYNAPSE_PYTHON`` or the checkout's
    ``.venv-synapse`` (whether it exists is checked by ``Synapse.start``)."""
    env = os.environ.get("CALLBOT_SYNAPSE_PYTHON")
    return Path(env) if env else CHECKOUT / ".venv-synapse" / "bin" / "python"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_LOG_CONFIG = """\
version: 1
formatters:
  precise: {format: '%(asctime)s %(name)s %(levelname)s %(message)s'}
handlers:
  file: {class: logging.FileHandler, formatter: precise, filename: LOGFILE}
root: {level: WARNING, handlers: [file]}
disable_existing_loggers: false
"""

_RATE = "{per_second: 1000, burst_count: 1000}"


def _homeserver_yaml(d: Path, port: int, secret: str) -> str:
    return f"""\
server_name: "{SERVER_NAME}"
public_baseurl: "http://127.0.0.1:{port}/"
pid_file: {d}/homeserver.pid
listeners:
  - port: {port}
    bind_addresses: ['127.0.0.1']
    type: http
    tls: false
    x_forwarded: false
    resources:
      # federation: /_matrix/federation/v1/openid/userinfo, which JWT services use
      - names: [client, federation]
        compress: false
database: {{name: sqlite3, args: {{database: {d}/homeserver.db}}}}
log_config: "{d}/log.config"
media_store_path: {d}/media_store
signing_key_path: "{d}/signing.key"
registration_shared_secret: "{secret}"
enable_registration: false
report_stats: false
macaroon_secret_key: "{secret}-macaroon"
form_secret: "{secret}-form"
trusted_key_servers: []
suppress_key_server_warning: true
federation_domain_whitelist: []
presence: {{enabled: false}}
url_preview_enabled: false
# MSC4140 delayed events: switched on by this key in Synapse 1.163, not by experimental_features
max_event_delay_duration: 24h
experimental_features:
  msc4222_enabled: true
  msc4143_enabled: true
  msc4354_enabled: true
  msc4140_max_delayed_events_per_user: 100
matrix_rtc:
  transports: [{{type: livekit, livekit_service_url: "http://127.0.0.1:{port + 1}"}}]
rc_message: {_RATE}
rc_registration: {_RATE}
rc_login: {{address: {_RATE}, account: {_RATE}, failed_attempts: {_RATE}}}
rc_joins: {{local: {_RATE}, remote: {_RATE}}}
rc_joins_per_room: {_RATE}
rc_invites: {{per_room: {_RATE}, per_user: {_RATE}, per_issuer: {_RATE}}}
rc_room_creation: {_RATE}
rc_key_requests: {_RATE}
rc_delayed_event_mgmt: {_RATE}
rc_3pid_validation: {_RATE}
"""


@dataclass(frozen=True)
class Account:
    user_id: str
    password: str
    localpart: str


class Synapse:
    def __init__(
        self,
        directory: Path,
        python: Path | None = None,
        extra_config: dict[str, Any] | None = None,
    ) -> None:
        self.dir = directory
        self.python = python or synapse_python()
        # Top-level keys that replace the generated ones (e.g. the federation tests'): a second
        # config file, which Synapse merges over the first key by key. Set before start().
        self.extra_config: dict[str, Any] = dict(extra_config or {})
        self._secret = secrets.token_hex(16)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self._counter = 0

    def start(self, timeout_s: float = 60.0) -> None:
        py = self.python
        if not py.exists():
            raise RuntimeError(f"no Python at {py} to run Synapse with. {HOW_TO_INSTALL}")
        check = subprocess.run([str(py), "-c", "import synapse"], capture_output=True)
        if check.returncode != 0:
            raise RuntimeError(f"Synapse is not installed for {py}. {HOW_TO_INSTALL}")
        private_dir(self.dir)
        cfg = self.dir / "homeserver.yaml"
        write_private(cfg, _homeserver_yaml(self.dir, self.port, self._secret))  # its secrets
        write_private(
            self.dir / "log.config",
            _LOG_CONFIG.replace("LOGFILE", str(self.dir / "homeserver.log")),
        )
        configs = ["-c", str(cfg)]
        if self.extra_config:
            extra = self.dir / "extra.yaml"
            extra.write_text(json.dumps(self.extra_config))  # JSON is YAML
            configs += ["-c", str(extra)]
        if not (self.dir / "signing.key").exists():  # a restart, or a caller made one
            subprocess.run(
                [str(py), "-m", "synapse.app.homeserver", *configs, "--generate-keys"],
                check=True,
                capture_output=True,
                cwd=self.dir,
            )
        out = open(self.dir / "stdout.log", "wb")  # closed when the process ends
        self.proc = subprocess.Popen(
            [str(py), "-m", "synapse.app.homeserver", *configs],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=self.dir,
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"Synapse exited with {self.proc.returncode}:\n{self._tail('stdout.log')}"
                    f"\n{self._tail('homeserver.log')}"
                )
            try:
                with urllib.request.urlopen(f"{self.url}/_matrix/client/versions", timeout=1):
                    return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"Synapse did not answer within {timeout_s} s")

    def _tail(self, name: str) -> str:
        path = self.dir / name
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def register(self, prefix: str = "user", admin: bool = False) -> Account:
        """A new account with a unique name, through the shared-secret admin API."""
        self._counter += 1
        localpart = f"{prefix}{self._counter}"
        password = secrets.token_urlsafe(12)
        with urllib.request.urlopen(f"{self.url}/_synapse/admin/v1/register") as r:
            nonce = json.load(r)["nonce"]
        mac = hmac.new(self._secret.encode(), digestmod=hashlib.sha1)
        mac.update(
            b"\x00".join(
                [
                    nonce.encode(),
                    localpart.encode(),
                    password.encode(),
                    b"admin" if admin else b"notadmin",
                ]
            )
        )
        body = {
            "nonce": nonce,
            "username": localpart,
            "password": password,
            "admin": admin,
            "mac": mac.hexdigest(),
        }
        req = urllib.request.Request(
            f"{self.url}/_synapse/admin/v1/register",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(req) as r:
            user_id = json.load(r)["user_id"]
        return Account(user_id, password, localpart)
