"""Logging in, and keeping the same device and crypto identity across restarts.

simplematrixbotlib does the login and keeps ``[device_id, access_token]`` Fernet-encrypted
in ``<data_dir>/session.txt``; nio keeps the Olm/Megolm store in ``<data_dir>/store/``.
The two belong together: a restart logs in with the stored token, reloads the store, and
so keeps its device ID, identity keys and Olm sessions.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import aiohttp
import cryptography.fernet
import nio
import simplematrixbotlib as botlib

from bot.config import MatrixConfig
from bot.errors import LoginError
from bot.files import private_dir, private_file
from bot.log import register_secret

log = logging.getLogger(__name__)

PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600


def session_paths(data_dir: Path) -> tuple[Path, Path]:
    """(session file, crypto store directory) under the data directory."""
    return data_dir / "session.txt", data_dir / "store"


def make_private(path: Path) -> None:
    """Restrict a directory tree to the bot's user (the store holds private keys)."""
    path.chmod(PRIVATE_DIR)
    for root, dirs, files in os.walk(path):
        for d in dirs:
            os.chmod(os.path.join(root, d), PRIVATE_DIR)
        for f in files:
            os.chmod(os.path.join(root, f), PRIVATE_FILE)


async def login(cfg: MatrixConfig, data_dir: Path) -> nio.AsyncClient:
    """Log in (or restore the stored session) and return a ready nio client with E2EE on."""
    if not nio.crypto.ENCRYPTION_ENABLED:
        raise LoginError("end-to-end encryption is unavailable: install matrix-nio[e2e]")
    for secret in (cfg.password, cfg.access_token):
        register_secret(secret)
    private_dir(data_dir)
    session_file, store = session_paths(data_dir)
    # 0700 before nio opens its database in it (created with the umask's mode, fixed below).
    make_private(private_dir(store))
    await _check_homeserver(cfg.homeserver)

    try:
        client = await _login_once(cfg, session_file, store)
    except LoginError:
        if not (session_file.exists() and cfg.password):
            raise
        # The stored token may have been revoked (logged out elsewhere): start a new device.
        log.warning(
            "the stored session was refused; logging in again with the password "
            "(this creates a new device)"
        )
        session_file.unlink()
        client = await _login_once(cfg, session_file, store)
    make_private(data_dir / "store")
    if session_file.exists():
        session_file.chmod(PRIVATE_FILE)
    log.info("logged in as %s, device %s", client.user_id, client.device_id)
    return client


async def _login_once(cfg: MatrixConfig, session_file: Path, store: Path) -> nio.AsyncClient:
    creds = botlib.Creds(
        cfg.homeserver,
        username=cfg.user_id,
        password=cfg.password,
        access_token=cfg.access_token,
        session_stored_file=str(session_file),
        device_name=cfg.device_name,
    )
    try:
        creds.session_read_file()
    except (cryptography.fernet.InvalidToken, ValueError, IndexError):
        # Encrypted with another password/token, or damaged: the stored device is unusable.
        log.warning(
            "cannot read %s (the password or token changed?); starting a new session", session_file
        )
        session_file.unlink()
        creds.session_read_file()
    sbl_config = botlib.Config()
    sbl_config.encryption_enabled = True
    sbl_config.store_path = str(store)
    sbl_config.ignore_unverified_devices = cfg.ignore_unverified_devices
    api = botlib.Api(creds, sbl_config)
    try:
        await api.login()
    except Exception as e:  # the library raises bare Exception/ValueError/ConnectionError
        if api.async_client is not None:
            await api.async_client.close()
        raise LoginError(f"login as {cfg.user_id} failed: {_describe(e)}") from None
    client = api.async_client
    register_secret(client.access_token)
    private_file(session_file)  # simplematrixbotlib opens it with "w", which keeps the mode
    creds.session_write_file()
    return client


async def _check_homeserver(url: str) -> None:
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http,
            http.get(f"{url}/_matrix/client/versions") as resp,
        ):
            if resp.status != 200:
                raise LoginError(
                    f"{url} is not a Matrix homeserver (HTTP {resp.status} "
                    "from /_matrix/client/versions)"
                )
    except (aiohttp.ClientError, TimeoutError) as e:
        raise LoginError(f"cannot reach the homeserver {url}: {_describe(e)}") from None


def _describe(e: BaseException) -> str:
    if isinstance(e.args[0] if e.args else None, nio.LoginError):
        err = e.args[0]
        return f"{err.status_code}: {err.message}"
    return str(e) or type(e).__name__
