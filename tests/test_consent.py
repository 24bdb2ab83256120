from __future__ import annotations

import asyncio
import json
import stat
from pathlib import Path

import pytest

from bot.consent import OptOuts
from bot.errors import CallbotError
from tests.conftest import bot_config, peer, running_bot
from tests.peer import wait_until
from tests.synapse import Synapse


async def test_opt_outs_persist_privately(tmp_path: Path) -> None:
    path = tmp_path / "data" / "optouts.json"
    store = OptOuts(path)
    assert not store.opted_out("!r:x", "@a:x")
    assert await store.set("!r:x", "@a:x", True)
    assert not await store.set("!r:x", "@a:x", True)  # no change
    assert store.opted_out("!r:x", "@a:x") and not store.opted_out("!other:x", "@a:x")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = OptOuts(path)
    assert again.opted_out("!r:x", "@a:x")
    await again.set("!r:x", "@a:x", False)
    assert json.loads(path.read_text()) == {"rooms": {}}
    assert not OptOuts(path).opted_out("!r:x", "@a:x")


def test_unreadable_opt_outs_are_an_error_not_a_blank_slate(tmp_path: Path) -> None:
    path = tmp_path / "optouts.json"
    path.write_text("{broken")
    with pytest.raises(CallbotError, match="cannot read the opt-outs"):
        OptOuts(path).opted_out("!r:x", "@a:x")


async def test_optout_and_optin_commands(synapse: Synapse, tmp_path: Path) -> None:
    account = synapse.register("bot")
    config = bot_config(synapse, account, tmp_path / "data")
    async with running_bot(config) as bot, peer(synapse, tmp_path, "alice") as alice:
        room = await alice.create_room(invite=[account.user_id])
        await alice.wait_member(room, account.user_id)
        await wait_until(lambda: room in bot.matrix.joined_rooms(), what="bot joined")
        reply = await alice.ask(room, "!optout", account.user_id)
        assert reply.startswith("You are opted out")
        assert bot.optouts.opted_out(room, alice.user_id)
        assert (await alice.ask(room, "!optin", account.user_id)).startswith("You are opted in")
        assert not bot.optouts.opted_out(room, alice.user_id)


async def test_an_opt_out_is_written_off_the_event_loop_and_in_force_at_once(
    tmp_path: Path, monkeypatch
) -> None:
    """Issue 19: !optout fsynced on the event loop, stalling every call's media meanwhile."""
    import threading

    import bot.consent

    store = OptOuts(tmp_path / "optouts.json")
    loop_thread = threading.get_ident()
    writers: list[int] = []
    real = bot.consent.write_private_json

    def watched(path: Path, data: object) -> None:
        writers.append(threading.get_ident())
        real(path, data)

    monkeypatch.setattr(bot.consent, "write_private_json", watched)
    saving = asyncio.create_task(store.set("!r:x", "@a:x", True))
    await asyncio.sleep(0)
    assert store.opted_out("!r:x", "@a:x")  # before the file is written
    await asyncio.gather(saving, store.set("!r:x", "@b:x", True))
    assert writers and loop_thread not in writers
    assert json.loads((tmp_path / "optouts.json").read_text()) == {
        "rooms": {"!r:x": ["@a:x", "@b:x"]}
    }
