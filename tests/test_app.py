"""The bot end to end on a real Synapse: invites, commands in encrypted rooms, permissions."""

from __future__ import annotations

from pathlib import Path

from bot import __version__
from tests.conftest import bot_config, peer, running_bot
from tests.peer import Peer
from tests.synapse import Synapse


async def _room_with_bot(owner: Peer, bot_user: str, others: list[Peer] = ()) -> str:
    room = await owner.create_room(invite=[bot_user, *(p.user_id for p in others)])
    for p in others:
        await p.join(room)
    await owner.wait_member(room, bot_user)
    for p in others:
        await p.wait_member(room, bot_user)
    return room


async def test_help_and_status_in_encrypted_room(synapse: Synapse, tmp_path: Path) -> None:
    bot_account = synapse.register("bot")
    config = bot_config(synapse, bot_account, tmp_path / "data")
    async with running_bot(config) as bot, peer(synapse, tmp_path, "alice") as alice:
        room = await _room_with_bot(alice, bot_account.user_id)
        assert alice.client.rooms[room].encrypted

        help_id = await alice.send(room, "!help")
        reply = await alice.next_reply(room, help_id, bot_account.user_id)
        assert reply.source["content"]["msgtype"] == "m.notice"
        assert "!help [<command>]" in reply.body
        assert "!status" in reply.body
        # It travelled encrypted: the room is encrypted and nio decrypted it for us.
        assert reply.decrypted

        status = await alice.ask(room, "!status", bot_account.user_id)
        assert f"matrix-callbot {__version__}" in status
        assert "Uptime: " in status
        assert "Calls: none" in status
        assert bot.matrix.joined_rooms() == [room]
