"""Consent: who opted out of being recorded or transcribed, per room.

Anyone in a room can ``!optout`` (and ``!optin`` again); plugins ask ``call.opted_out(user)``
before keeping anyone's audio or video. The choice survives restarts: it is kept in
``<data_dir>/optouts.json``, readable only by the bot's user, written atomically.
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

from bot.commands.registry import CommandContext, command
from bot.errors import CallbotError
from bot.files import write_private_json
from bot.log import context

log = logging.getLogger(__name__)


class OptOuts:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._rooms: dict[str, set[str]] | None = None  # read on first use
        self._saving = asyncio.Lock()

    def _load(self) -> dict[str, set[str]]:
        if self._rooms is None:
            self._rooms = self._read()
        return self._rooms

    def _read(self) -> dict[str, set[str]]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as e:
            # Never lose consent silently: fail rather than record people who opted out.
            raise CallbotError(f"cannot read the opt-outs in {self.path}: {e}") from None
        rooms = data.get("rooms", {}) if isinstance(data, dict) else {}
        return {
            room: {u for u in users if isinstance(u, str)}
            for room, users in rooms.items()
            if isinstance(room, str) and isinstance(users, list)
        }

    def opted_out(self, room_id: str, user_id: str) -> bool:
        return user_id in self._load().get(room_id, set())

    async def set(self, room_id: str, user_id: str, out: bool) -> bool:
        """Record a choice (in force at once; on disk when this returns); True if it changed
        anything."""
        users = self._load().setdefault(room_id, set())
        if (user_id in users) == out:
            return False
        if out:
            users.add(user_id)
        else:
            users.discard(user_id)
        # The write (with its fsync) in a thread, one at a time, each with the latest choices.
        async with self._saving:
            rooms = self._load()
            data = {"rooms": {room: sorted(users) for room, users in rooms.items() if users}}
            await asyncio.to_thread(write_private_json, self.path, data)
        return True


class ConsentCommands:
    def __init__(self, optouts: OptOuts) -> None:
        self.optouts = optouts

    @command(
        help="Keep your voice and video out of recordings and transcripts in this room",
        allowed_users_only=False,
    )
    async def optout(self, ctx: CommandContext) -> None:
        changed = await self.optouts.set(ctx.room_id, ctx.sender, True)
        log.info(
            "opted out" if changed else "already opted out",
            extra=context(room=ctx.room_id, user=ctx.sender),
        )
        await ctx.reply(
            "You are opted out: your voice and video are left out of recordings and "
            f"transcripts in this room. Type {ctx.prefix}optin to undo."
        )

    @command(
        help="Allow recordings and transcripts of you again in this room", allowed_users_only=False
    )
    async def optin(self, ctx: CommandContext) -> None:
        await self.optouts.set(ctx.room_id, ctx.sender, False)
        log.info("opted in", extra=context(room=ctx.room_id, user=ctx.sender))
        await ctx.reply(
            "You are opted in again: recordings and transcripts in this room may include you."
        )
