from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from bot.consent import OptOuts
from bot.errors import CallbotError
from tests.conftest import bot_config, peer, running_bot
from tests.peer import wait_until
from tests.synapse import Synapse


def test_opt_outs_persist_privately(tmp_path: Path) -> None:
    path = tmp_path / "data" / "optouts.json"
    store = OptOuts(path)
    assert not store.opted_out("!r:x", "@a:x")
    assert store.set("!r:x", "@a:x", True)
    assert not store.set("!r:x", "@a:x", True)  # no change
    assert store.opted_out("!r:x", "@a:x") and not store.opted_out("!other:x", "@a:x")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = OptOuts(path)
    assert again.opted_out("!r:x", "@a:x")
    again.set("!r:x", "@a:x", False)
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
