"""The nio patch for custom Olm to-device events, against a real Synapse.

If a matrix-nio upgrade changes what the patch relies on, these tests fail: the internals
check, the unpatched behaviour (nio drops custom types), and the round trip.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace

import nio
import pytest
from nio.crypto.olm_machine import Olm

from bot.errors import IncompatibleDependency
from bot.matrix import todevice
from tests.conftest import peer
from tests.peer import wait_until
from tests.synapse import Synapse

KEYS_TYPE = "io.element.call.encryption_keys"
CONTENT = {
    "keys": {"index": 3, "key": "q83vEjRWeJBvXqkzHq1bAA"},
    "room_id": "!room:localhost",
    "member": {"claimed_device_id": "DEV"},
    "session": {"call_id": "", "application": "m.call", "scope": "m.room"},
    "sent_ts": 1764000000000,
}


def test_nio_internals_are_as_expected() -> None:
    todevice.check_nio_internals()
    todevice.install()
    assert Olm._handle_olm_event.__wrapped__ is not None


def test_changed_internals_fail_loudly(monkeypatch) -> None:
    def _olm_encrypt(self, session, device, event_type, content, *, extra=None): ...

    monkeypatch.setattr(Olm, "_olm_encrypt", _olm_encrypt)
    monkeypatch.delattr(Olm, "_handle_olm_event")
    with pytest.raises(IncompatibleDependency) as info:
        todevice.check_nio_internals()
    message = str(info.value)
    assert "is not compatible with bot.matrix.todevice (tested with 0.26.0)" in message
    assert "Olm._olm_encrypt(self, session, recipient_device, message_type, content) changed" in (
        message
    )
    assert "Olm._handle_olm_event(self, sender, sender_key, payload) changed" in message


async def test_custom_olm_event_round_trip(synapse: Synapse, tmp_path: Path) -> None:
    todevice.install()
    async with peer(synapse, tmp_path, "alice") as alice, peer(synapse, tmp_path, "bob") as bob:
        # Unpatched nio still throws the plaintext of custom types away; if this starts
        # failing, nio handles them itself now and the patch should be revisited.
        unpatched = Olm._handle_olm_event.__wrapped__
        payload = {"type": KEYS_TYPE, "content": CONTENT, "sender": alice.user_id}
        assert unpatched(bob.client.olm, alice.user_id, "curve", payload) is None

        await todevice.send_encrypted(
            alice.client, bob.user_id, bob.client.device_id, KEYS_TYPE, CONTENT
        )
        event = await wait_until(
            lambda: next(
                (e for e in bob.to_device if isinstance(e, todevice.DecryptedToDeviceEvent)), None
            ),
            what="the decrypted to-device event",
        )
        assert event.type == KEYS_TYPE
        assert event.content == CONTENT
        assert event.sender == alice.user_id
        assert event.sender_device == alice.client.device_id
        # bob shares no room with alice and has never fetched her device keys: the claim
        # cannot be checked until they are fetched.
        assert not event.keys_match
        assert await todevice.check_sender_device(bob.client, event)
        assert event.keys_match
        assert event.sender_key == alice.client.olm.account.identity_keys["curve25519"]


async def test_plaintext_custom_event_is_not_mistaken_for_encrypted(
    synapse: Synapse, tmp_path: Path
) -> None:
    todevice.install()
    async with peer(synapse, tmp_path, "alice") as alice, peer(synapse, tmp_path, "bob") as bob:
        msg = nio.ToDeviceMessage(KEYS_TYPE, bob.user_id, bob.client.device_id, CONTENT)
        assert isinstance(await alice.client.to_device(msg), nio.ToDeviceResponse)
        event = await wait_until(
            lambda: next((e for e in bob.to_device if getattr(e, "type", "") == KEYS_TYPE), None),
            what="the plaintext to-device event",
        )
        assert isinstance(event, nio.UnknownToDeviceEvent)
        assert not isinstance(event, todevice.DecryptedToDeviceEvent)


async def test_unknown_device_is_a_clear_error(synapse: Synapse, tmp_path: Path) -> None:
    async with peer(synapse, tmp_path, "alice") as alice, peer(synapse, tmp_path, "bob") as bob:
        try:
            await todevice.send_encrypted(alice.client, bob.user_id, "NOSUCHDEV", KEYS_TYPE, {})
        except Exception as e:
            assert f"unknown device NOSUCHDEV of {bob.user_id}" in str(e)
        else:
            raise AssertionError("sending to an unknown device should fail")


SPEC_CONTENT = {
    "room_id": "!room:localhost",
    "member_id": "m",
    "media_key": {"index": 3, "key": "q83vEjRWeJBvXqkzHq1bAKrN7xI0VniQb16pMx6tWwA", "format": 0},
}


@pytest.mark.parametrize(
    ("event_type", "content"), [(KEYS_TYPE, CONTENT), ("m.rtc.encryption_key", SPEC_CONTENT)]
)
async def test_a_forged_device_claim_does_not_match(
    synapse: Synapse, tmp_path: Path, event_type: str, content: dict
) -> None:
    """A payload claiming another device of the sender is caught by the key check, in the
    Element Call and the spec key form alike (the spec form's device is this claim only)."""
    todevice.install()
    async with peer(synapse, tmp_path, "alice") as alice, peer(synapse, tmp_path, "bob") as bob:
        other = nio.AsyncClient(synapse.url, alice.user_id, store_path=str(tmp_path / "other"))
        (tmp_path / "other").mkdir()
        login = await other.login(alice.account.password, device_name="alice-other")
        await other.keys_upload()
        await other.close()
        real_device = alice.client.olm.device_id
        alice.client.olm.device_id = login.device_id  # what a tampering client would claim
        try:
            await todevice.send_encrypted(
                alice.client, bob.user_id, bob.client.device_id, event_type, content
            )
        finally:
            alice.client.olm.device_id = real_device
        event = await wait_until(
            lambda: next(
                (e for e in bob.to_device if isinstance(e, todevice.DecryptedToDeviceEvent)), None
            ),
            what="the decrypted to-device event",
        )
        assert (event.type, event.sender_device) == (event_type, login.device_id)
        assert not await todevice.check_sender_device(bob.client, event)
        # The claimed device exists and is known now: it is the keys that do not match.
        assert login.device_id in bob.client.olm.device_store[alice.user_id]


async def test_key_queries_for_unknown_devices_are_coalesced_and_rate_limited() -> None:
    """Issue 19: every event from an unknown device ran a /keys/query of its own; a flood of
    made-up devices was a flood of requests."""
    now = [0.0]
    queries = todevice.KeyQueries(clock=lambda: now[0])
    olm = SimpleNamespace(users_for_key_query=set())
    sent: list[set[str]] = []

    async def keys_query() -> None:
        asked = set(olm.users_for_key_query)
        sent.append(asked)
        await asyncio.sleep(0.01)
        olm.users_for_key_query -= asked  # nio removes the users it got an answer for

    client = SimpleNamespace(olm=olm, keys_query=keys_query)
    await asyncio.gather(
        *(queries.refresh(client, u) for u in ["@mallory:x"] * 50 + ["@bob:x", "@carol:x"])
    )
    assert len(sent) <= 2 and set().union(*sent) == {"@mallory:x", "@bob:x", "@carol:x"}
    before = len(sent)
    await asyncio.gather(*(queries.refresh(client, "@mallory:x") for _ in range(50)))
    assert len(sent) == before  # asked a moment ago: not again
    now[0] += todevice.MIN_REQUERY_S
    await queries.refresh(client, "@mallory:x")
    assert len(sent) == before + 1
