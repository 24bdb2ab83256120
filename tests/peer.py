"""A human-like Matrix user for tests: a plain matrix-nio client with E2EE, syncing."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nio

from bot.matrix.client import SYNC_FILTER
from bot.matrix.cross_signing import ensure_identity
from tests.synapse import Account


async def wait_until(pred: Callable[[], Any], timeout: float = 20.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        await asyncio.sleep(0.01)
    raise TimeoutError(f"timed out after {timeout} s waiting for {what or pred}")


class Peer:
    """``cross_signed``: the user sets up cross-signing and signs this device, as every
    current Element user has (bot.matrix.cross_signing does it); False is an insecure device."""

    def __init__(
        self, homeserver: str, account: Account, store: Path, cross_signed: bool = True
    ) -> None:
        store.mkdir(parents=True, exist_ok=True)
        self.account = account
        self.store = store
        self.cross_signed = cross_signed
        self.client = nio.AsyncClient(
            homeserver,
            account.user_id,
            store_path=str(store),
            config=nio.AsyncClientConfig(encryption_enabled=True, store_sync_tokens=True),
        )
        self.messages: list[tuple[str, nio.RoomMessage]] = []
        #: every room event as (room_id, source dict after decryption)
        self.timeline: list[tuple[str, dict[str, Any]]] = []
        self.to_device: list[nio.ToDeviceEvent] = []
        self._sync: asyncio.Task[None] | None = None

    @property
    def user_id(self) -> str:
        return self.account.user_id

    async def start(self) -> Peer:
        resp = await self.client.login(self.account.password, device_name="test-peer")
        assert isinstance(resp, nio.LoginResponse), resp
        if self.client.should_upload_keys:
            await self.client.keys_upload()
        if self.cross_signed:
            await ensure_identity(self.client, self.store, password=self.account.password)

        async def on_message(room: nio.MatrixRoom, event: nio.RoomMessage) -> None:
            self.messages.append((room.room_id, event))

        async def on_event(room: nio.MatrixRoom, event: nio.Event) -> None:
            source = dict(event.source)
            if isinstance(event, nio.UnknownEvent):
                source["type"] = event.type  # decrypted events keep the outer source
            self.timeline.append((room.room_id, source))

        async def on_to_device(event: nio.ToDeviceEvent) -> None:
            self.to_device.append(event)

        self.client.add_event_callback(on_message, nio.RoomMessage)
        self.client.add_event_callback(on_event, nio.Event)
        self.client.add_to_device_callback(on_to_device, nio.ToDeviceEvent)
        await self.client.sync(timeout=0, full_state=True)
        self._sync = asyncio.create_task(self._sync_forever())
        return self

    async def _sync_forever(self) -> None:
        # nio's sync loop queries device keys when it needs to; a send that queries them at
        # the same moment makes the loop's query raise "No key query required." and end the
        # loop (the bot's own client survives this: bot/matrix/client.py). Start it again.
        while True:
            try:
                await self.client.sync_forever(timeout=1000, sync_filter=SYNC_FILTER)
                return
            except nio.LocalProtocolError as e:
                if "No key query required" not in str(e):
                    raise
                await asyncio.sleep(0.1)

    async def stop(self) -> None:
        if self._sync is not None:
            self._sync.cancel()
            await asyncio.gather(self._sync, return_exceptions=True)
        await self.client.close()

    async def create_room(
        self,
        invite: list[str] = (),
        encrypted: bool = True,
        power_level_override: dict[str, Any] | None = None,
    ) -> str:
        initial_state = []
        if encrypted:
            initial_state.append(
                {
                    "type": "m.room.encryption",
                    "state_key": "",
                    "content": {"algorithm": "m.megolm.v1.aes-sha2"},
                }
            )
        resp = await self.client.room_create(
            preset=nio.RoomPreset.private_chat,
            invite=list(invite),
            initial_state=initial_state,
            power_level_override=power_level_override,
        )
        assert isinstance(resp, nio.RoomCreateResponse), resp
        await wait_until(lambda: resp.room_id in self.client.rooms, what="room in sync")
        return resp.room_id

    async def invite(self, room_id: str, user_id: str) -> None:
        resp = await self.client.room_invite(room_id, user_id)
        assert isinstance(resp, nio.RoomInviteResponse), resp

    async def join(self, room_id: str) -> None:
        resp = await self.client.join(room_id)
        assert isinstance(resp, nio.JoinResponse), resp
        await wait_until(lambda: room_id in self.client.rooms, what="joined room in sync")

    def membership(self, room_id: str, user_id: str) -> str | None:
        room = self.client.rooms.get(room_id)
        if room is None:
            return None
        user = room.users.get(user_id)
        if user is None:
            return None
        return "invite" if user.invited else "join"

    async def wait_member(self, room_id: str, user_id: str, timeout: float = 20.0) -> None:
        """Wait until user_id has joined, and know their devices so they get room keys."""
        await wait_until(
            lambda: self.membership(room_id, user_id) == "join",
            timeout,
            f"{user_id} to join {room_id}",
        )
        self.client.olm.users_for_key_query.add(user_id)
        await self.client.keys_query()
        await wait_until(
            lambda: self.client.olm.device_store[user_id], timeout, f"device keys of {user_id}"
        )

    async def send(self, room_id: str, body: str, **extra: Any) -> str:
        content = {"msgtype": "m.text", "body": body, **extra}
        resp = await self.client.room_send(
            room_id, "m.room.message", content, ignore_unverified_devices=True
        )
        assert isinstance(resp, nio.RoomSendResponse), resp
        return resp.event_id

    async def next_reply(
        self, room_id: str, to_event: str, sender: str, timeout: float = 20.0
    ) -> nio.RoomMessage:
        """The first message from ``sender`` that relates to ``to_event`` (reply or thread)."""

        def find() -> nio.RoomMessage | None:
            for rid, ev in self.messages:
                rel = ev.source.get("content", {}).get("m.relates_to", {})
                target = rel.get("m.in_reply_to", {}).get("event_id")
                if rid == room_id and ev.sender == sender and target == to_event:
                    return ev
            return None

        def find_while_syncing() -> nio.RoomMessage | None:
            if self._sync is not None and self._sync.done():
                raise RuntimeError(f"{self.user_id}'s sync loop ended: {self._sync!r}")
            return find()

        return await wait_until(find_while_syncing, timeout, f"a reply from {sender} to {to_event}")

    async def ask(self, room_id: str, body: str, bot: str, timeout: float = 20.0) -> str:
        """Send a message and return the body of the bot's reply to it."""
        event_id = await self.send(room_id, body)
        reply = await self.next_reply(room_id, event_id, bot, timeout)
        return reply.body
