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
