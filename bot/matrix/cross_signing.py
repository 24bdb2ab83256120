"""The bot's own cross-signing identity, so that Element's "exclude insecure devices" mode
(MSC4153) talks to it: every device of the bot is signed by the account's self-signing key.

At start, after the device keys are on the server (``ensure_identity``):

* the account has no identity yet: make master, self-signing and user-signing keys, upload
  them (user-interactive auth with the account's password), keep them in secret storage under
  a new recovery key written once to ``<data_dir>/recovery-key.txt`` (0600);
* the account has one and ``<data_dir>/cross_signing.json`` holds its keys: use them;
* it has one we do not hold (made in Element, or a lost store): read the self-signing key
  from secret storage with ``matrix.recovery_key``; without it, refuse to start (ConfigError);
* then sign this device if the server does not show our signature on it yet.

The private keys live only in ``cross_signing.json`` (0600) and, encrypted, in secret storage.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

import nio

from bot.errors import ConfigError, MatrixError
from bot.files import write_private, write_private_json
from bot.log import register_secret
from bot.matrix import rest
from bot.matrix.crypto import (
    CryptoError,
    SigningKey,
    b64decode,
    b64encode,
    check_key,
    cross_signing_key,
    cross_signing_public,
    decode_recovery_key,
    decrypt_secret,
    encode_recovery_key,
    encrypt_secret,
    key_description,
    sign_json,
    verify_json,
)
from bot.matrix.rest import MatrixHttpError

log = logging.getLogger(__name__)

KEYS_FILE = "cross_signing.json"
RECOVERY_KEY_FILE = "recovery-key.txt"
SECRET_NAMES = {
    "master": "m.cross_signing.master",
    "self_signing": "m.cross_signing.self_signing",
    "user_signing": "m.cross_signing.user_signing",
}
DEFAULT_KEY = "m.secret_storage.default_key"
V3 = "/_matrix/client/v3"
#: The UIA stage Matrix Authentication Service offers instead of the password (MSC4312).
MAS_RESET_STAGE = "org.matrix.cross_signing_reset"


class CrossSigningError(MatrixError):
    """The homeserver would not take our cross-signing keys or signatures."""


@dataclass(frozen=True, repr=False)
class Identity:
    """The account's cross-signing keys that we hold (the master and user-signing keys are
    optional: signing our devices needs only the self-signing key)."""

    master_public: str
    self_signing: SigningKey
    master: SigningKey | None = None
    user_signing: SigningKey | None = None

    @classmethod
    def generate(cls) -> Identity:
        master = SigningKey.generate()
        return cls(master.public, SigningKey.generate(), master, SigningKey.generate())

    def seeds(self) -> dict[str, str]:
        keys = {"master": self.master, "self_signing": self.self_signing}
        keys["user_signing"] = self.user_signing
        return {usage: b64encode(k.seed) for usage, k in keys.items() if k is not None}

    def to_json(self) -> dict[str, Any]:
        return {"master_public": self.master_public, "seeds": self.seeds()}

    @classmethod
    def from_json(cls, data: Any) -> Identity:
        try:
            seeds = {u: SigningKey(b64decode(s)) for u, s in data["seeds"].items()}
            return cls(
                data["master_public"],
                seeds["self_signing"],
                seeds.get("master"),
                seeds.get("user_signing"),
            )
        except (KeyError, TypeError, AttributeError, CryptoError) as e:
            raise CryptoError(f"{KEYS_FILE} is malformed") from e

    def __repr__(self) -> str:
        return f"Identity(master={self.master_public})"


@dataclass(frozen=True)
class IdentityResult:
    """What ``ensure_identity`` did (for the log, tests and benchmarks)."""

    action: Literal["kept", "created", "restored"]
    master_public: str
    signed_device: bool
    recovery_key_file: Path | None = None


async def ensure_identity(
    client: nio.AsyncClient,
    data_dir: Path,
    *,
    password: str | None = None,
    recovery_key: str | None = None,
) -> IdentityResult:
    """Make sure the account has a cross-signing identity we hold and this device is signed.

    ``password`` authorises uploading a new identity; ``recovery_key`` unlocks an existing one
    from secret storage (``matrix.password`` and ``matrix.recovery_key``)."""
    user, device = client.user_id, client.device_id
    if recovery_key:
        register_secret(recovery_key)
    own = await _query_own_keys(client)
    server_master = cross_signing_public(own.get("master_keys", {}).get(user), user, "master")
    server_ssk = cross_signing_public(
        own.get("self_signing_keys", {}).get(user), user, "self_signing"
    )
    local = _load_local(data_dir)
    recovery_file = None
    if server_master is None:
        identity = Identity.generate()
        await _upload_identity(client, password, identity)
        recovery_file = await _store_in_secret_storage(client, identity, data_dir)
        action: Literal["kept", "created", "restored"] = "created"
    elif local and local.master_public == server_master and local.self_signing.public == server_ssk:
        identity, action = local, "kept"
    elif recovery_key:
        identity = await _restore(client, recovery_key, server_master, server_ssk)
        action = "restored"
    else:
        raise ConfigError(
            [
                f"matrix.recovery_key: {user} already has a cross-signing identity (made in "
                "Element or by an earlier install of the bot) whose keys I do not hold; set "
                "matrix.recovery_key (or CALLBOT_MATRIX_RECOVERY_KEY) to the account's "
                "recovery key so I can sign this device, otherwise Element clients that "
                "exclude insecure devices will ignore me"
            ]
        )
    if action != "kept":
        write_private_json(data_dir / KEYS_FILE, identity.to_json())
    device_keys = own.get("device_keys", {}).get(user, {}).get(device)
    if not isinstance(device_keys, dict):
        raise CrossSigningError(f"the homeserver does not list this device ({device})'s keys")
    ssk = identity.self_signing
    signed = verify_json(device_keys, user, ssk.public, ssk.public)
    if not signed:
        await _upload_signature(client, sign_json(device_keys, user, ssk.public, ssk), user, device)
    result = IdentityResult(action, identity.master_public, not signed, recovery_file)
    log.info(
        "cross-signing: identity %s (master key %s)%s",
        action,
        identity.master_public,
        ", this device signed" if not signed else "",
    )
    if recovery_file is not None:
        log.warning(
            "cross-signing: a new recovery key for %s is in %s; keep it somewhere safe (it "
            "restores the bot's identity on another machine: matrix.recovery_key) and delete "
            "the file",
            user,
            recovery_file,
        )
    return result


def own_identity(data_dir: Path) -> Identity | None:
    """The identity held locally (for trusting the bot's own other devices)."""
    return _load_local(data_dir)


# ---------------------------------------------------------------------- steps


async def _query_own_keys(client: nio.AsyncClient) -> dict[str, Any]:
    answer = await rest.request(
        client,
        "POST",
        f"{V3}/keys/query",
        {"device_keys": {client.user_id: []}},
        what="querying our own keys",
    )
    return answer if isinstance(answer, dict) else {}


def _load_local(data_dir: Path) -> Identity | None:
    path = data_dir / KEYS_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise CryptoError(f"cannot read {path}: {e}") from e
    return Identity.from_json(data)


async def _upload_identity(
    client: nio.AsyncClient, password: str | None, identity: Identity
) -> None:
    user = client.user_id
    assert identity.master is not None and identity.user_signing is not None
    master = identity.master
    body = {
        "master_key": cross_signing_key(user, "master", master),
        "self_signing_key": sign_json(
            cross_signing_key(user, "self_signing", identity.self_signing),
            user,
            master.public,
            master,
        ),
        "user_signing_key": sign_json(
            cross_signing_key(user, "user_signing", identity.user_signing),
            user,
            master.public,
            master,
        ),
    }
    path = f"{V3}/keys/device_signing/upload"
    what = "uploading the cross-signing keys"
    try:
        await rest.request(client, "POST", path, body, what=what)
        return  # the first upload may need no auth (MSC3967)
    except MatrixHttpError as e:
        if e.status != 401 or not isinstance(e.body.get("flows"), list):
            raise CrossSigningError(f"{what} failed: HTTP {e.status} {e.errcode}") from None
        flows, session = e.body["flows"], e.body.get("session")
        params = p if isinstance(p := e.body.get("params"), dict) else {}
    if not any(_stages(flow) == ["m.login.password"] for flow in flows):
        raise CrossSigningError(_no_password_flow(flows, params))
    if not password:
        raise ConfigError(
            ["matrix.password: needed once, to authorise uploading the cross-signing keys"]
        )
    auth = {
        "type": "m.login.password",
        "identifier": {"type": "m.id.user", "user": user},
        "password": password,
        "session": session,
    }
    try:
        await rest.request(client, "POST", path, {**body, "auth": auth}, what=what)
    except MatrixHttpError as e:
        raise CrossSigningError(
            f"{what} failed: HTTP {e.status} {e.errcode} (is matrix.password right?)"
        ) from None


def _stages(flow: Any) -> list[Any]:
    stages = flow.get("stages") if isinstance(flow, dict) else None
    return stages if isinstance(stages, list) else []


def _no_password_flow(flows: list[Any], params: dict[str, Any]) -> str:
    if any(MAS_RESET_STAGE in _stages(f) for f in flows):
        reset = params.get(MAS_RESET_STAGE)
        url = reset.get("url") if isinstance(reset, dict) else None
        where = f" ({url})" if isinstance(url, str) else ""
        return (
            "the homeserver's login is delegated (Matrix Authentication Service) and does not "
            "take the password to set up cross-signing: sign in to the bot's account page"
            f"{where}, allow the cross-signing reset, and start the bot again within 10 minutes "
            "(docs/deploy.md, Cross-signing)"
        )
    return (
        "the homeserver does not accept the account's password to set up cross-signing "
        f"(it offers {[_stages(f) for f in flows]}); set the identity up in Element and give "
        "the bot matrix.recovery_key"
    )


async def _store_in_secret_storage(
    client: nio.AsyncClient, identity: Identity, data_dir: Path
) -> Path:
    key = os.urandom(32)
    key_id = secrets.token_urlsafe(24)
    recovery_key = encode_recovery_key(key)
    register_secret(recovery_key)
    # The key file first: if an upload fails we still have what the server may hold.
    path = data_dir / RECOVERY_KEY_FILE
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    write_private(
        path,
        f"# recovery key of {client.user_id}, made {when} (matrix.recovery_key)\n{recovery_key}\n",
    )
    await _put_account_data(
        client, f"m.secret_storage.key.{key_id}", {**key_description(key), "name": "callbot"}
    )
    for usage, seed in identity.seeds().items():
        name = SECRET_NAMES[usage]
        await _put_account_data(
            client, name, {"encrypted": {key_id: encrypt_secret(key, name, seed)}}
        )
    await _put_account_data(client, DEFAULT_KEY, {"key": key_id})
    return path


async def _restore(
    client: nio.AsyncClient, recovery_key: str, server_master: str, server_ssk: str | None
) -> Identity:
    def wrong(why: str) -> ConfigError:
        return ConfigError([f"matrix.recovery_key: {why}"])

    try:
        key = decode_recovery_key(recovery_key)
    except CryptoError as e:
        raise wrong(str(e)) from None
    default = await _get_account_data(client, DEFAULT_KEY)
    key_id = default.get("key") if default else None
    if not isinstance(key_id, str):
        raise wrong("the account has no secret storage to restore from")
    try:
        check_key(key, await _get_account_data(client, f"m.secret_storage.key.{key_id}"))
        seeds: dict[str, SigningKey] = {}
        for usage, name in SECRET_NAMES.items():
            data = await _get_account_data(client, name)
            encrypted = (data or {}).get("encrypted")
            if isinstance(encrypted, dict) and key_id in encrypted:
                seeds[usage] = SigningKey(b64decode(decrypt_secret(key, name, encrypted[key_id])))
    except CryptoError as e:
        raise wrong(str(e)) from None
    ssk = seeds.get("self_signing")
    if ssk is None:
        raise wrong("the account's secret storage holds no self-signing key")
    if ssk.public != server_ssk or (
        seeds.get("master") and seeds["master"].public != server_master
    ):
        raise wrong("the keys in secret storage are not the account's current identity")
    return Identity(server_master, ssk, seeds.get("master"), seeds.get("user_signing"))


async def _upload_signature(
    client: nio.AsyncClient, signed_device: dict[str, Any], user: str, device: str
) -> None:
    answer = await rest.request(
        client,
        "POST",
        f"{V3}/keys/signatures/upload",
        {user: {device: signed_device}},
        what="uploading our device's signature",
    )
    if isinstance(answer, dict) and answer.get("failures"):
        raise CrossSigningError(
            f"the homeserver refused our device's signature: {answer['failures']}"
        )


def _account_data_path(client: nio.AsyncClient, event_type: str) -> str:
    return f"{V3}/user/{quote(client.user_id, safe='')}/account_data/{quote(event_type, safe='')}"


async def _put_account_data(client: nio.AsyncClient, event_type: str, content: Any) -> None:
    await rest.request(client, "PUT", _account_data_path(client, event_type), content)


async def _get_account_data(client: nio.AsyncClient, event_type: str) -> dict[str, Any] | None:
    try:
        answer = await rest.request(client, "GET", _account_data_path(client, event_type))
    except MatrixHttpError as e:
        if e.status == 404:
            return None
        raise
    return answer if isinstance(answer, dict) else None
