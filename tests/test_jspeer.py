"""Smoke test of the matrix-js-sdk reference peer: two js peers in one call on a real Synapse."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.jspeer import JsPeer, js_peer
from tests.synapse import Synapse

FOCI = [{"type": "livekit", "livekit_service_url": "http://127.0.0.1:9/unused"}]
TIMEOUT = 30.0


def _members(event: dict[str, Any]) -> set[tuple[str, str]]:
    return {(m["user_id"], m["device_id"]) for m in event["members"]}


async def _wait_members(
    peer: JsPeer, room_id: str, want: set[tuple[str, str]], since: int = 0
) -> dict[str, Any]:
    return await peer.wait_event(
        lambda e: e["event"] == "memberships" and e["room_id"] == room_id and _members(e) == want,
        timeout=TIMEOUT,
        since=since,
    )


async def _wait_key(peer: JsPeer, room_id: str, sender: JsPeer) -> dict[str, Any]:
    return await peer.wait_event(
        lambda e: (
            e["event"] == "key"
            and e["room_id"] == room_id
            and not e["own"]
            and e["identity"] == sender.identity
        ),
        timeout=TIMEOUT,
    )


async def _wait_own_key(peer: JsPeer, room_id: str, index: int) -> dict[str, Any]:
    return await peer.wait_event(
        lambda e: (
            e["event"] == "key" and e["room_id"] == room_id and e["own"] and e["index"] == index
        ),
        timeout=TIMEOUT,
    )


async def test_two_js_peers_share_call_and_keys(synapse: Synapse, tmp_path: Path) -> None:
    async with (
        js_peer(synapse, tmp_path, "jsalice") as alice,
        js_peer(synapse, tmp_path, "jsbob") as bob,
    ):
        room_id = (await alice.call("create_room", invite=[bob.user_id], encrypted=True))["room_id"]
        await bob.call("join_room", room_id=room_id)

        await alice.call("rtc_join", room_id=room_id, foci=FOCI)
        await bob.call("rtc_join", room_id=room_id, foci=FOCI)

        both = {(alice.user_id, alice.device_id), (bob.user_id, bob.device_id)}
        for peer in (alice, bob):
            event = await _wait_members(peer, room_id, both)
            by_user = {m["user_id"]: m for m in event["members"]}
            for other in (alice, bob):
                member = by_user[other.user_id]
                assert member["rtc_backend_identity"] == f"{other.user_id}:{other.device_id}"
                assert member["transport"] == {"livekit_alias": room_id, **FOCI[0]}
                assert member["event_id"].startswith("$")
                assert member["created_ts"] > 0

        # Identities are "@user:localhost:DEVICE" for legacy (state event) memberships.
        assert alice.identity.startswith("@jsalice") and alice.identity.count(":") == 2

        # What EC's compatibility mode puts on the wire (seen from bob's client).
        state = (await bob.call("state_events", room_id=room_id))["events"]
        sent = {e["state_key"]: e for e in state if e["sender"] == alice.user_id}
        content = sent[f"_{alice.user_id}_{alice.device_id}_m.call"]["content"]
        assert content["application"] == "m.call" and content["call_id"] == ""
        assert content["device_id"] == alice.device_id
        assert content["focus_active"] == {"type": "livekit", "focus_selection": "multi_sfu"}
        assert content["foci_preferred"] == [{"livekit_alias": room_id, **FOCI[0]}]
        assert content["membershipID"] == alice.identity
        assert content["m.call.intent"] == "audio"

        from_alice = await _wait_key(bob, room_id, alice)
        from_bob = await _wait_key(alice, room_id, bob)
        assert (from_alice["user_id"], from_alice["device_id"]) == (alice.user_id, alice.device_id)
        assert (from_bob["user_id"], from_bob["device_id"]) == (bob.user_id, bob.device_id)

        alice_own = await _wait_own_key(alice, room_id, from_alice["index"])
        bob_own = await _wait_own_key(bob, room_id, from_bob["index"])
        assert from_alice["key"] == alice_own["key"]
        assert from_bob["key"] == bob_own["key"]
        assert alice_own["identity"] == alice.identity
        assert len(alice_own["key"]) == 24 and alice_own["key"].endswith("==")  # 16 bytes

        mark = alice.mark()
        assert (await bob.call("rtc_leave", room_id=room_id))["left"] is True
        await _wait_members(alice, room_id, {(alice.user_id, alice.device_id)}, since=mark)
        listed = await alice.call("memberships", room_id=room_id)
        assert [m["user_id"] for m in listed["members"]] == [alice.user_id]

        for peer in (alice, bob):  # unparseable stdout lines also show up as "error" events
            assert [e for e in peer.events if e["event"] == "error"] == []


# --- trust modes (MSC4153) ---------------------------------------------------------------------

# Decryption failures a late room key (or withheld notice) can still turn into another outcome.
PENDING_KEY = {"MEGOLM_UNKNOWN_INBOUND_SESSION_ID", "OLM_UNKNOWN_MESSAGE_INDEX"}


async def _wait_outcome(peer: JsPeer, event_id: str) -> dict[str, Any]:
    """The "message" event for event_id once decrypted, or failed for good."""
    return await peer.wait_event(
        lambda e: (
            e["event"] == "message"
            and e["event_id"] == event_id
            and e["decryption_failure"] not in PENDING_KEY
        ),
        timeout=TIMEOUT,
    )


async def test_strict_peers_are_cross_signed(synapse: Synapse, tmp_path: Path) -> None:
    async with (
        js_peer(synapse, tmp_path, "jsalice", trust="strict") as alice,
        js_peer(synapse, tmp_path, "jsbob", trust="strict") as bob,
        js_peer(synapse, tmp_path, "jseve", trust="insecure") as eve,
    ):
        assert alice.ready["trust"] == "strict" and eve.ready["trust"] == "insecure"
        assert alice.master_key and bob.master_key and alice.master_key != bob.master_key
        assert eve.master_key is None

        # What alice downloads for bob is what bob reported of himself.
        assert (await alice.user_identity(bob.user_id))["master_key"] == bob.master_key
        seen = await alice.device_status(bob.user_id, bob.device_id)
        assert seen["known"] and seen["signed_by_owner"] is True
        assert seen["cross_signing_verified"] is False  # alice never verified bob himself
        own = await alice.device_status(alice.user_id, alice.device_id)
        assert own["signed_by_owner"] is True and own["cross_signing_verified"] is True

        assert (await alice.user_identity(eve.user_id))["master_key"] is None
        unsigned = await alice.device_status(eve.user_id, eve.device_id)
        assert unsigned["known"] and unsigned["signed_by_owner"] is False
        assert unsigned["is_verified"] is False


async def test_strict_peer_decrypts_only_cross_signed_senders(
    synapse: Synapse, tmp_path: Path
) -> None:
    async with (
        js_peer(synapse, tmp_path, "jsalice", trust="strict") as alice,
        js_peer(synapse, tmp_path, "jsbob", trust="signed") as bob,
        js_peer(synapse, tmp_path, "jseve", trust="insecure") as eve,
    ):
        invite = [bob.user_id, eve.user_id]
        room_id = (await alice.call("create_room", invite=invite, encrypted=True))["room_id"]
        for peer in (bob, eve):
            await peer.call("join_room", room_id=room_id)
            # Alice knows the sender's device before its room key comes, so the key is judged
            # on the device's signature, not on "unknown device".
            await alice.device_status(peer.user_id, peer.device_id)

        signed = (await bob.call("send_text", room_id=room_id, body="from bob"))["event_id"]
        unsigned = (await eve.call("send_text", room_id=room_id, body="from eve"))["event_id"]

        from_bob = await _wait_outcome(alice, signed)
        assert from_bob["decryption_failure"] is None and from_bob["body"] == "from bob"
        from_eve = await _wait_outcome(alice, unsigned)
        assert from_eve["encrypted"] and from_eve["body"] is None
        assert from_eve["decryption_failure"] == "UNSIGNED_SENDER_DEVICE"

        # And the other way: alice's room key goes to bob's signed device only.
        sent = (await alice.call("send_text", room_id=room_id, body="from alice"))["event_id"]
        assert (await _wait_outcome(bob, sent))["body"] == "from alice"
        withheld = await _wait_outcome(eve, sent)
        assert withheld["body"] is None
        assert withheld["decryption_failure"] == "MEGOLM_KEY_WITHHELD_FOR_UNVERIFIED_DEVICE"


async def test_strict_peer_still_trades_call_keys_with_insecure_peer(
    synapse: Synapse, tmp_path: Path
) -> None:
    # js-sdk 43 applies the isolation mode to room messages only: it decrypts to-device messages
    # without a trust requirement (receiveSyncChanges gets no DecryptionSettings) and encrypts
    # them to any device, so MatrixRTC media keys still flow both ways. If this starts failing,
    # js-sdk has begun excluding insecure devices from calls too.
    async with (
        js_peer(synapse, tmp_path, "jsalice", trust="strict") as alice,
        js_peer(synapse, tmp_path, "jseve", trust="insecure") as eve,
    ):
        room_id = (await alice.call("create_room", invite=[eve.user_id], encrypted=True))["room_id"]
        await eve.call("join_room", room_id=room_id)
        await alice.call("rtc_join", room_id=room_id, foci=FOCI)
        await eve.call("rtc_join", room_id=room_id, foci=FOCI)

        from_eve = await _wait_key(alice, room_id, eve)
        from_alice = await _wait_key(eve, room_id, alice)
        assert (from_eve["user_id"], from_alice["user_id"]) == (eve.user_id, alice.user_id)
