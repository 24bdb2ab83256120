"""The bot's cross-signing identity and its "exclude insecure devices" policy (MSC4153),
against a real Synapse: first start, restart, restore with the recovery key, refusal without
it, commands from insecure devices, identity changes."""

from __future__ import annotations

import asyncio
import io
import json
import shutil
import signal
import stat
import time
from pathlib import Path
from typing import Any

import nio
import pytest

from bot.commands.dispatch import INSECURE_DEVICE_REPLY
from bot.errors import ConfigError
from bot.matrix import cross_signing, rest
from bot.matrix.cross_signing import Identity, ensure_identity
from bot.matrix.crypto import encode_recovery_key, sign_json
from bot.matrix.trust import DeviceTrust
from tests.botproc import BotProcess, write_config
from tests.conftest import bot_config, peer, running_bot
from tests.peer import Peer, wait_until
from tests.synapse import Synapse

TIMEOUT = 30.0


async def _keys_of(client: nio.AsyncClient, user_id: str) -> dict[str, Any]:
    return await rest.request(
        client, "POST", "/_matrix/client/v3/keys/query", {"device_keys": {user_id: []}}
    )


async def _signed_as_others_see_it(
    observer: nio.AsyncClient, user_id: str, device_id: str, tmp: Path
) -> str | None:
    """The user's master key if ``device_id`` is cross-signed by it, from a fresh key query."""
    trust = DeviceTrust(tmp / f"pins-{time.monotonic_ns()}.json")
    trust.update(await _keys_of(observer, user_id))
    return trust.master_key(user_id) if trust.is_cross_signed(user_id, device_id) else None


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def test_first_start_creates_an_identity_signs_the_device_and_keeps_it_private(
    synapse: Synapse, tmp_path: Path, debug_log: io.StringIO
) -> None:
    account = synapse.register("bot")
    data = tmp_path / "data"
    config = bot_config(synapse, account, data)
    started = time.perf_counter()
    async with running_bot(config) as bot, peer(synapse, tmp_path, "alice") as alice:
        print(f"first start with cross-signing: {(time.perf_counter() - started) * 1000:.0f} ms")
        result = bot.matrix.identity
        assert result is not None and result.action == "created" and result.signed_device
        master = await _signed_as_others_see_it(
            alice.client, account.user_id, bot.matrix.device_id, tmp_path
        )
        assert master == result.master_public
    recovery_file = data / "recovery-key.txt"
    assert _mode(recovery_file) == 0o600 and _mode(data / "cross_signing.json") == 0o600
    recovery_key = recovery_file.read_text().splitlines()[-1]
    seeds = Identity.from_json(json.loads((data / "cross_signing.json").read_text())).seeds()
    text = debug_log.getvalue()
    assert "recovery-key.txt" in text  # the operator is told where it is ...
    for secret in (recovery_key, recovery_key.replace(" ", ""), *seeds.values()):
        assert secret not in text  # ... never what it is, nor the private keys


async def test_restart_keeps_the_identity_and_the_recovery_key_signs_a_new_device(
    synapse: Synapse, tmp_path: Path
) -> None:
    account = synapse.register("bot")
    data = tmp_path / "data"
    async with running_bot(bot_config(synapse, account, data)) as bot:
        first = bot.matrix.identity
        device = bot.matrix.device_id
    assert first is not None
    recovery_key = (data / "recovery-key.txt").read_text().splitlines()[-1]

    async with running_bot(bot_config(synapse, account, data)) as bot:
        again = bot.matrix.identity
        assert again is not None and bot.matrix.device_id == device
        assert (again.action, again.signed_device) == ("kept", False)
        assert again.master_public == first.master_public

    shutil.rmtree(data)  # store lost: a new machine with only the recovery key
    restored_cfg = bot_config(synapse, account, data, matrix={"recovery_key": recovery_key})
    async with running_bot(restored_cfg) as bot, peer(synapse, tmp_path, "alice") as alice:
        restored = bot.matrix.identity
        assert restored is not None and bot.matrix.device_id != device
        assert (restored.action, restored.signed_device) == ("restored", True)
        assert restored.master_public == first.master_public
        master = await _signed_as_others_see_it(
            alice.client, account.user_id, bot.matrix.device_id, tmp_path
        )
        assert master == first.master_public


async def test_an_identity_made_elsewhere_needs_the_recovery_key(
    synapse: Synapse, tmp_path: Path
) -> None:
    account = synapse.register("bot")
    data = tmp_path / "data"
    async with running_bot(bot_config(synapse, account, data)):
        pass
    shutil.rmtree(data)
    with pytest.raises(ConfigError, match=r"matrix\.recovery_key"):
        async with running_bot(bot_config(synapse, account, data)):
            pass
    wrong = encode_recovery_key(bytes(32))
    with pytest.raises(ConfigError, match="does not match"):
        async with running_bot(bot_config(synapse, account, data, matrix={"recovery_key": wrong})):
            pass
    with pytest.raises(ConfigError, match=r"typo|not a recovery key"):
        async with running_bot(
            bot_config(synapse, account, data, matrix={"recovery_key": "EsT1 HT7u"})
        ):
            pass

    # The real process: one clear line and exit code 2.
    cfg = write_config(tmp_path / "config.toml", synapse.url, account)
    proc = await BotProcess(cfg).start()
    assert proc.proc is not None
    rc = await asyncio.wait_for(proc.proc.wait(), TIMEOUT)
    await proc.stop(signal.SIGTERM)
    assert rc == 2
    errors = [e["msg"] for e in proc.entries if e["level"] == "ERROR"]
    assert len(errors) == 1 and "matrix.recovery_key" in errors[0]


def test_a_homeserver_without_password_auth_gets_a_clear_error() -> None:
    mas = cross_signing._no_password_flow(
        [{"stages": [cross_signing.MAS_RESET_STAGE]}],
        {cross_signing.MAS_RESET_STAGE: {"url": "https://auth.example.org/account"}},
    )
    assert "Matrix Authentication Service" in mas and "https://auth.example.org/account" in mas
    other = cross_signing._no_password_flow([{"stages": ["m.login.sso"]}], {})
    assert "matrix.recovery_key" in other


async def _insecure_second_device(synapse: Synapse, tmp_path: Path, signed: Peer) -> Peer:
    """Another session of the same user that its owner never cross-signed."""
    return await Peer(
        synapse.url, signed.account, tmp_path / "insecure", cross_signed=False
    ).start()


async def test_commands_from_an_insecure_device_are_refused_once_and_get_no_room_keys(
    synapse: Synapse, tmp_path: Path
) -> None:
    account = synapse.register("bot")
    async with (
        running_bot(bot_config(synapse, account, tmp_path / "data")) as bot,
        peer(synapse, tmp_path, "alice") as alice,
    ):
        room = await alice.create_room(invite=[account.user_id])
        await wait_until(lambda: room in bot.matrix.joined_rooms(), TIMEOUT, "bot in room")
        await alice.wait_member(room, account.user_id)
        assert "!help" in await alice.ask(room, "!help", account.user_id)
        laptop = await _insecure_second_device(synapse, tmp_path, alice)
        try:
            await wait_until(lambda: room in laptop.client.rooms, TIMEOUT, "room on the laptop")
            await laptop.wait_member(room, account.user_id)
            ask = await laptop.send(room, "!status")
            refusal = await alice.next_reply(room, ask, account.user_id, TIMEOUT)
            assert refusal.body == INSECURE_DEVICE_REPLY

            # The insecure session got no room key for the bot's reply: it cannot read it.
            def on_laptop() -> list[dict[str, Any]]:
                return [
                    src for rid, src in laptop.timeline if src.get("event_id") == refusal.event_id
                ]

            (seen,) = await wait_until(on_laptop, TIMEOUT, "the bot's reply on the laptop")
            assert seen["type"] == "m.room.encrypted"  # still encrypted: no key for it
            # Told once: a second command gets nothing (alice's next command is the barrier).
            second = await laptop.send(room, "!help")
            await alice.ask(room, "!help", account.user_id)
            with pytest.raises(TimeoutError):
                await alice.next_reply(room, second, account.user_id, timeout=1.0)
        finally:
            await laptop.stop()


async def test_with_the_policy_off_an_insecure_device_is_answered(
    synapse: Synapse, tmp_path: Path
) -> None:
    account = synapse.register("bot")
    config = bot_config(
        synapse, account, tmp_path / "data", matrix={"exclude_insecure_devices": False}
    )
    async with running_bot(config) as bot, peer(synapse, tmp_path, "alice") as alice:
        room = await alice.create_room(invite=[account.user_id])
        await wait_until(lambda: room in bot.matrix.joined_rooms(), TIMEOUT, "bot in room")
        laptop = await _insecure_second_device(synapse, tmp_path, alice)
        try:
            await wait_until(lambda: room in laptop.client.rooms, TIMEOUT, "room on the laptop")
            await laptop.wait_member(room, account.user_id)
            ask = await laptop.send(room, "!help")
            reply = await laptop.next_reply(room, ask, account.user_id, TIMEOUT)
            assert "!help" in reply.body  # decrypted on the insecure session: it got the key
            (seen,) = [src for _, src in laptop.timeline if src.get("event_id") == reply.event_id]
            assert seen["type"] == "m.room.message"
        finally:
            await laptop.stop()


async def test_a_changed_identity_is_reported_once_and_pinned(
    synapse: Synapse, tmp_path: Path
) -> None:
    account = synapse.register("bot")
    async with (
        running_bot(bot_config(synapse, account, tmp_path / "data")) as bot,
        peer(synapse, tmp_path, "alice") as alice,
    ):
        room = await alice.create_room(invite=[account.user_id])
        await wait_until(lambda: room in bot.matrix.joined_rooms(), TIMEOUT, "bot in room")
        await alice.wait_member(room, account.user_id)
        assert "!help" in await alice.ask(room, "!help", account.user_id)
        old = bot.matrix.trust.master_key(alice.user_id)
        assert old is not None

        # alice resets her cross-signing (a new master key) and signs her device with it
        new = Identity.generate()
        await cross_signing._upload_identity(alice.client, alice.account.password, new)
        mine = (await _keys_of(alice.client, alice.user_id))["device_keys"][alice.user_id]
        device = mine[alice.client.device_id]
        ssk = new.self_signing
        await cross_signing._upload_signature(
            alice.client,
            sign_json(device, alice.user_id, ssk.public, ssk),
            alice.user_id,
            alice.client.device_id,
        )

        def notices() -> list[str]:
            return [
                ev.body
                for rid, ev in alice.messages
                if rid == room
                and ev.sender == account.user_id
                and "cryptographic identity" in getattr(ev, "body", "")
            ]

        (text,) = await wait_until(notices, TIMEOUT, "the identity change notice")
        assert alice.user_id in text
        assert bot.matrix.trust.master_key(alice.user_id) == new.master_public
        # The new identity is trusted: her signed device's commands still work, no second notice.
        assert "!help" in await alice.ask(room, "!help", account.user_id)
        assert len(notices()) == 1


async def test_a_wiped_peer_store_with_its_keys_file_keeps_its_identity(
    synapse: Synapse, tmp_path: Path
) -> None:
    # ensure_identity is what test peers use too: a second device of the same user, given the
    # first one's keys file, is signed by the same master key.
    account = synapse.register("carol")
    async with peer(synapse, tmp_path, "dave") as dave:
        first = Peer(synapse.url, account, tmp_path / "one")
        await first.start()
        try:
            result = await ensure_identity(first.client, first.store, password=account.password)
            assert result.action == "kept"
            second = Peer(synapse.url, account, tmp_path / "two", cross_signed=False)
            await second.start()
            try:
                shutil.copy(first.store / "cross_signing.json", second.store / "cross_signing.json")
                again = await ensure_identity(second.client, second.store)
                assert (again.action, again.signed_device) == ("kept", True)
                master = await _signed_as_others_see_it(
                    dave.client, account.user_id, second.client.device_id, tmp_path
                )
                assert master == result.master_public
            finally:
                await second.stop()
        finally:
            await first.stop()


async def test_a_strict_element_user_sees_the_bot_signed_and_talks_to_it(
    synapse: Synapse, tmp_path: Path
) -> None:
    # matrix-js-sdk 43 with its own cross-signing and OnlySignedDevicesIsolationMode: before
    # the bot cross-signed itself she got no reply (the bot had no room key for her command).
    from tests.jspeer import js_peer

    account = synapse.register("bot")
    async with (
        running_bot(bot_config(synapse, account, tmp_path / "data")) as bot,
        js_peer(synapse, tmp_path, "alice", trust="strict") as alice,
    ):
        assert alice.master_key is not None
        room = (await alice.call("create_room", invite=[account.user_id]))["room_id"]
        await wait_until(lambda: room in bot.matrix.joined_rooms(), TIMEOUT, "bot in room")
        status = await alice.device_status(account.user_id, bot.matrix.device_id)
        assert status["signed_by_owner"] is True  # her own crypto checked the bot's signature
        identity = await alice.user_identity(account.user_id)
        assert identity["master_key"] == bot.matrix.identity.master_public
        mark = alice.mark()
        await alice.call("send_text", room_id=room, body="!help")
        reply = await alice.wait_event(
            lambda e: e["event"] == "message" and e["sender"] == account.user_id and e["body"],
            timeout=TIMEOUT,
            since=mark,
        )
        assert "!help" in reply["body"] and reply["encrypted"]
        assert reply["decryption_failure"] is None
        # and the bot pinned her identity as her client published it
        assert bot.matrix.trust.master_key(alice.user_id) == alice.master_key


@pytest.mark.parametrize("exclude", [True, False])
async def test_media_keys_from_an_insecure_device_are_not_used(
    synapse: Synapse, tmp_path: Path, exclude: bool
) -> None:
    # js-sdk 43 itself still sends call keys to and from unsigned devices (its to-device path
    # ignores the isolation mode); the bot's policy does not use an insecure member's key.
    from tests.jspeer import js_peer
    from tests.test_schedule_e2e import FOCUS, MINT

    account = synapse.register("bot")
    config = bot_config(
        synapse,
        account,
        tmp_path / "data",
        rtc=MINT,
        matrix={"exclude_insecure_devices": exclude},
    )
    async with (
        running_bot(config) as bot,
        js_peer(synapse, tmp_path, "alice") as alice,
        js_peer(synapse, tmp_path, "mallory", trust="insecure") as mallory,
    ):
        room = (await alice.call("create_room", invite=[account.user_id, mallory.user_id]))[
            "room_id"
        ]
        await mallory.call("join_room", room_id=room)
        await wait_until(lambda: room in bot.matrix.joined_rooms(), TIMEOUT, "bot in room")
        session = bot.rtc.get_room_session(room)
        await session.join()
        for peer_ in (alice, mallory):
            await peer_.call("rtc_join", room_id=room, foci=[FOCUS])
        await wait_until(lambda: len(session.memberships) == 3, TIMEOUT, "three members")
        by_user = {m.user_id: m for m in session.memberships}
        await wait_until(
            lambda: session.has_key_from(by_user[alice.user_id]), TIMEOUT, "alice's key"
        )
        if exclude:
            # mallory's key was sent (js does) before or with alice's: give it a sync to land
            await mallory.wait_event(lambda e: e["event"] == "key" and e["own"], timeout=TIMEOUT)
            await asyncio.sleep(1.0)
            assert not session.has_key_from(by_user[mallory.user_id])
        else:
            await wait_until(
                lambda: session.has_key_from(by_user[mallory.user_id]), TIMEOUT, "mallory's key"
            )
        await session.leave()
