"""Login, device persistence and private files, against a real Synapse."""

from __future__ import annotations

import io
import json
import stat
import urllib.request
from pathlib import Path

import pytest

from bot.errors import LoginError
from bot.matrix import todevice
from bot.matrix.session import login
from tests.conftest import bot_config, peer, running_bot
from tests.peer import wait_until
from tests.synapse import Synapse

KEYS_TYPE = "io.element.call.encryption_keys"


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def test_restart_keeps_device_keys_and_olm_sessions(
    synapse: Synapse, tmp_path: Path, debug_log: io.StringIO
) -> None:
    account = synapse.register("bot")
    config = bot_config(synapse, account, tmp_path / "data")
    async with peer(synapse, tmp_path, "alice") as alice:
        async with running_bot(config) as bot:
            client = bot.matrix.nio
            device, keys = client.device_id, dict(client.olm.account.identity_keys)
            # alice opens an Olm session to the bot; the bot answers through it.
            await todevice.send_encrypted(alice.client, account.user_id, device, KEYS_TYPE, {})
            alice_key = alice.client.olm.account.identity_keys["curve25519"]
            await wait_until(lambda: client.olm.session_store.get(alice_key), what="Olm session")
            sessions = {s.id for s in client.olm.session_store[alice_key]}
            access_token = client.access_token

        async with running_bot(config) as bot:
            client = bot.matrix.nio
            assert client.device_id == device
            assert client.olm.account.identity_keys == keys
            assert {s.id for s in client.olm.session_store[alice_key]} == sessions
            claims = []
            original_claim = client.keys_claim

            async def counting_claim(*args, **kwargs):
                claims.append(args)
                return await original_claim(*args, **kwargs)

            client.keys_claim = counting_claim
            await todevice.send_encrypted(
                client, alice.user_id, alice.client.device_id, KEYS_TYPE, {"after": "restart"}
            )
            assert claims == []  # reused the stored Olm session, no new one-time key
            received = await wait_until(
                lambda: [
                    e
                    for e in alice.to_device
                    if isinstance(e, todevice.DecryptedToDeviceEvent) and e.content
                ],
                what="alice decrypting the bot's message",
            )
            assert received[0].content == {"after": "restart"}
            assert received[0].sender_device == device

    # Everything the bot stored is private to its user.
    data = tmp_path / "data"
    assert _mode(data) == 0o700
    assert _mode(data / "session.txt") == 0o600
    store_files = list((data / "store").iterdir())
    assert store_files
    assert all(_mode(f) & 0o077 == 0 for f in store_files)
    # No secret reached the log, although everything was logged at DEBUG.
    text = debug_log.getvalue()
    assert "logged in as" in text
    assert account.password not in text
    assert access_token not in text


async def test_revoked_session_logs_in_again(synapse: Synapse, tmp_path: Path) -> None:
    account = synapse.register("bot")
    config = bot_config(synapse, account, tmp_path / "data")
    async with running_bot(config) as bot:
        old_device, token = bot.matrix.device_id, bot.matrix.nio.access_token
    request = urllib.request.Request(
        f"{synapse.url}/_matrix/client/v3/logout",
        data=b"{}",
        headers={"Authorization": f"Bearer {token}"},
        method="POST",
    )
    with urllib.request.urlopen(request) as r:
        assert json.load(r) == {}
    async with running_bot(config) as bot:
        assert bot.matrix.device_id != old_device


async def test_wrong_password_is_a_clear_error(synapse: Synapse, tmp_path: Path) -> None:
    account = synapse.register("bot")
    config = bot_config(synapse, account, tmp_path / "data")
    bad = type(config.matrix)(**{**config.matrix.__dict__, "password": "not-the-password"})
    with pytest.raises(LoginError) as info:
        await login(bad, tmp_path / "data")
    message = str(info.value)
    assert (
        message == f"login as {account.user_id} failed: M_FORBIDDEN: Invalid username or password"
    )
    assert "not-the-password" not in message
