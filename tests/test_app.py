"""The bot end to end on a real Synapse: invites, commands in encrypted rooms, permissions."""

from __future__ import annotations

import asyncio
from pathlib import Path

from bot import __version__
from tests.conftest import bot_config, peer, running_bot
from tests.peer import Peer, wait_until
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


async def test_permissions_are_enforced(synapse: Synapse, tmp_path: Path) -> None:
    bot_account = synapse.register("bot")
    async with (
        peer(synapse, tmp_path, "alice") as alice,
        peer(synapse, tmp_path, "bob") as bob,
        peer(synapse, tmp_path, "carol") as carol,
    ):
        config = bot_config(
            synapse,
            bot_account,
            tmp_path / "data",
            bot={"allowed_users": [alice.user_id, bob.user_id]},
            commands={"status": {"power_level": 50}},
        )
        async with running_bot(config):
            room = await _room_with_bot(alice, bot_account.user_id, [bob, carol])
            bot = bot_account.user_id
            # carol is not an allowed user: !status is refused, !help shows only !help.
            assert await carol.ask(room, "!status", bot) == (
                "You may not run !status: it is limited to the bot's allowed users."
            )
            help_text = await carol.ask(room, "!help", bot)
            assert "!help" in help_text and "!status" not in help_text
            # bob is allowed but has power level 0 in the room; alice created it (100).
            assert await bob.ask(room, "!status", bot) == (
                "You may not run !status: it needs power level 50 in this room (you have 0)."
            )
            assert "Uptime:" in await alice.ask(room, "!status", bot)
            assert "Unknown command !frobnicate." in await bob.ask(room, "!frobnicate", bot)


async def test_invites_only_from_allowed_users(synapse: Synapse, tmp_path: Path) -> None:
    bot_account = synapse.register("bot")
    async with peer(synapse, tmp_path, "alice") as alice, peer(synapse, tmp_path, "eve") as eve:
        config = bot_config(
            synapse, bot_account, tmp_path / "data", bot={"allowed_users": [alice.user_id]}
        )
        async with running_bot(config) as bot:
            eve_room = await eve.create_room(invite=[bot_account.user_id])
            alice_room = await alice.create_room(invite=[bot_account.user_id])
            await alice.wait_member(alice_room, bot_account.user_id)
            await wait_until(lambda: alice_room in bot.matrix.joined_rooms(), what="bot joined")

            async def bot_membership_in_eve_room() -> str:
                resp = await eve.client.room_get_state_event(
                    eve_room, "m.room.member", bot_account.user_id
                )
                return resp.content.get("membership")

            # The bot rejected eve's invite: its membership went from invite to leave.
            for _ in range(100):
                if await bot_membership_in_eve_room() == "leave":
                    break
                await asyncio.sleep(0.1)
            assert await bot_membership_in_eve_room() == "leave"
            assert bot.matrix.joined_rooms() == [alice_room]


async def test_odd_input_never_breaks_the_bot(synapse: Synapse, tmp_path: Path) -> None:
    bot_account = synapse.register("bot")
    config = bot_config(synapse, bot_account, tmp_path / "data")
    async with running_bot(config), peer(synapse, tmp_path, "alice") as alice:
        room = await _room_with_bot(alice, bot_account.user_id)
        bot = bot_account.user_id
        # Not commands: no answer. Sent first, so the answer checked below comes after them.
        await alice.send(room, "")
        await alice.send(room, "!")
        await alice.send(room, "hello ✓ 👋")
        await alice.send(room, "", format="org.matrix.custom.html", formatted_body="<b>!help</b>")
        long_reply = await alice.ask(room, "!" + "ü" * 5000, bot)
        assert long_reply == "That command is too long (over 4000 chars)."
        assert (await alice.ask(room, "!ßtatus", bot)).startswith("Unknown command !ßtatus.")
        assert "No closing quotation" in await alice.ask(room, '!help "status', bot)
        # HTML-formatted commands are read from the plain body.
        html_cmd = await alice.send(
            room, "!status", format="org.matrix.custom.html", formatted_body="<p>!<b>status</b></p>"
        )
        reply = await alice.next_reply(room, html_cmd, bot)
        assert "Uptime:" in reply.body
        answered = {
            ev.source["content"]["m.relates_to"]["m.in_reply_to"]["event_id"]
            for rid, ev in alice.messages
            if rid == room and ev.sender == bot
        }
        assert len(answered) == 4  # the four commands above, nothing for the non-commands


async def test_thread_reply_mode(synapse: Synapse, tmp_path: Path) -> None:
    bot_account = synapse.register("bot")
    config = bot_config(synapse, bot_account, tmp_path / "data", bot={"reply_mode": "thread"})
    async with running_bot(config), peer(synapse, tmp_path, "alice") as alice:
        room = await _room_with_bot(alice, bot_account.user_id)
        cmd = await alice.send(room, "!status")
        reply = await alice.next_reply(room, cmd, bot_account.user_id)
        rel = reply.source["content"]["m.relates_to"]
        assert rel["rel_type"] == "m.thread" and rel["event_id"] == cmd
        # A command inside that thread is answered in the same thread.
        in_thread = await alice.send(
            room,
            "!help",
            **{
                "m.relates_to": {
                    "rel_type": "m.thread",
                    "event_id": cmd,
                    "is_falling_back": True,
                    "m.in_reply_to": {"event_id": reply.event_id},
                }
            },
        )
        second = await alice.next_reply(room, in_thread, bot_account.user_id)
        rel = second.source["content"]["m.relates_to"]
        assert rel["rel_type"] == "m.thread" and rel["event_id"] == cmd
        assert rel["is_falling_back"] is False


async def test_files_are_posted_encrypted_in_encrypted_rooms(
    synapse: Synapse, tmp_path: Path
) -> None:
    import nio
    from nio.crypto import decrypt_attachment

    bot_account = synapse.register("bot")
    config = bot_config(synapse, bot_account, tmp_path / "data")
    data = bytes(range(256)) * 40
    report = tmp_path / "report.bin"
    report.write_bytes(data)
    async with running_bot(config) as bot, peer(synapse, tmp_path, "alice") as alice:
        room = await _room_with_bot(alice, bot_account.user_id)
        await wait_until(lambda: room in bot.matrix.joined_rooms(), what="bot joined")
        event_id = await bot.matrix.send_file(room, report, "application/octet-stream", "Report")
        event = await wait_until(
            lambda: next((e for r, e in alice.timeline if e.get("event_id") == event_id), None),
            what="the file event",
        )
        content = event["content"]
        assert content["msgtype"] == "m.file" and content["body"] == "Report"
        assert "url" not in content  # only the encrypted form
        file = content["file"]
        resp = await alice.client.download(file["url"])
        assert isinstance(resp, nio.DownloadResponse), resp
        assert resp.body != data  # the homeserver only ever saw ciphertext
        plain = decrypt_attachment(
            resp.body, file["key"]["k"], file["hashes"]["sha256"], file["iv"]
        )
        assert plain == data


async def test_a_burst_of_commands_between_two_syncs_is_answered_in_full(
    synapse: Synapse, tmp_path: Path
) -> None:
    # The real process, stopped (SIGSTOP) while 30 commands arrive: its next sync carries
    # them all. With Synapse's default of 10 timeline events per sync, 20 were never seen.
    import signal

    from tests.botproc import BotProcess, write_config

    account = synapse.register("bot")
    cfg = write_config(tmp_path / "config.toml", synapse.url, account)
    async with peer(synapse, tmp_path, "alice") as alice:
        bot = await BotProcess(cfg).start()
        assert bot.proc is not None
        try:
            room = await alice.create_room(invite=[account.user_id], encrypted=False)
            await wait_until(lambda: bot.logged("joined on invite"), 30, "bot in room")
            await alice.wait_member(room, account.user_id)
            await alice.ask(room, "!help", account.user_id, timeout=30)
            bot.proc.send_signal(signal.SIGSTOP)
            try:
                asked = [await alice.send(room, f"!help #{i}") for i in range(30)]
            finally:
                bot.proc.send_signal(signal.SIGCONT)
            for event_id in asked:
                await alice.next_reply(room, event_id, account.user_id, timeout=30)
            gaps = [e for e in bot.entries if e["msg"].startswith("more messages arrived")]
            assert gaps == []
        finally:
            await bot.stop()
