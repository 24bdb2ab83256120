"""From an incoming message to a command run: parse, check permission, run, reply.

Knows nothing of Matrix libraries: the client hands it ``IncomingMessage`` and a way to
reply. Every failure ends in a short reply to the caller, never in an exception that could
stop the sync loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from bot.commands.executor import Invocation, execute
from bot.commands.parsing import MAX_COMMAND_LENGTH, parse_command
from bot.commands.permissions import UserPatterns
from bot.commands.registry import Command, CommandRegistry
from bot.errors import CommandError
from bot.log import context
from bot.matrix.messages import IncomingMessage

log = logging.getLogger(__name__)

#: At most this many commands run at once; more are refused ("drop_newest") with a reply.
MAX_RUNNING_COMMANDS = 32
#: ... that reply goes to a room at most this often: a flood must not become a flood of
#: replies (each refusal is counted in /metrics all the same).
BUSY_NOTICE_INTERVAL_S = 10.0
BUSY_REPLY = "I am busy, please try again shortly."
#: A device the trust policy refuses is told why at most this often (then ignored).
INSECURE_NOTICE_INTERVAL_S = 3600.0
INSECURE_DEVICE_REPLY = (
    "I don't act on commands from this session: it is not verified by you (not "
    "cross-signed), and I exclude insecure devices as Element does. Verify it from another "
    "of your sessions (Element: Settings → Sessions), then try again."
)


ReplyFn = Callable[[IncomingMessage, str, str | None], Awaitable[str]]
PowerLevelFn = Callable[[str, str], Awaitable[int]]
#: the sending device's ID when the trust policy refuses it, else None
InsecureDeviceFn = Callable[[IncomingMessage], Awaitable[str | None]]


class Dispatcher:
    def __init__(
        self,
        registry: CommandRegistry,
        *,
        prefix: str,
        allowed: UserPatterns,
        power_level_of: PowerLevelFn,
        reply: ReplyFn,
        max_age_s: float,
        insecure_device: InsecureDeviceFn | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.registry = registry
        self.prefix = prefix
        self.allowed = allowed
        self.power_level_of = power_level_of
        self._reply = reply
        self.max_age_s = max_age_s
        self._running: set[asyncio.Task[None]] = set()
        #: commands refused as "busy" (past MAX_RUNNING_COMMANDS), told or not: /metrics
        self.dropped = 0
        #: room → when it was last told "busy"
        self._told_busy: dict[str, float] = {}
        #: "busy" replies being sent: not commands, so they take no command slot
        self._busy_replies: set[asyncio.Task[None]] = set()
        self._insecure_device = insecure_device
        self._clock = clock
        #: (user, device) → when that insecure device was last told why it is ignored
        self._told_insecure: dict[tuple[str, str], float] = {}

    def submit(self, msg: IncomingMessage) -> None:
        """Handle a message in the background so the sync loop never waits on a command."""
        if parse_command(msg.body, self.prefix) is None:
            return  # chat, not a command: nothing to run, and no reason to say "busy"
        if len(self._running) >= MAX_RUNNING_COMMANDS:
            self._refuse_busy(msg)
            return
        task = asyncio.create_task(self.handle(msg))
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    def _refuse_busy(self, msg: IncomingMessage) -> None:
        self.dropped += 1
        ctx = context(room=msg.room_id, user=msg.sender)
        now = self._clock()
        told = self._told_busy.get(msg.room_id)
        if told is not None and now - told < BUSY_NOTICE_INTERVAL_S:
            log.debug("too many running commands, dropping one (room told already)", extra=ctx)
            return
        log.warning("too many running commands, dropping one", extra=ctx)
        if len(self._told_busy) > 10_000:  # bounded: only recent notices matter
            self._told_busy = {
                r: t for r, t in self._told_busy.items() if now - t < BUSY_NOTICE_INTERVAL_S
            }
        self._told_busy[msg.room_id] = now
        task = asyncio.create_task(self._say(msg, BUSY_REPLY))
        self._busy_replies.add(task)
        task.add_done_callback(self._busy_replies.discard)

    async def drain(self) -> None:
        """Wait for running commands and replies (used at shutdown)."""
        pending = self._running | self._busy_replies
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)

    async def handle(self, msg: IncomingMessage) -> None:
        parsed = parse_command(msg.body, self.prefix)
        if parsed is None:
            return
        ctx = context(room=msg.room_id, user=msg.sender)
        age_s = time.time() - msg.timestamp_ms / 1000
        if age_s > self.max_age_s:
            log.info("ignoring a command sent %.0f s ago", age_s, extra=ctx)
            return
        if self._insecure_device is not None:
            device = await self._insecure_device(msg)
            if device is not None:
                await self._refuse_insecure(msg, device)
                return
        shown = f"{self.prefix}{_shorten(parsed.name)}"
        if len(msg.body) > MAX_COMMAND_LENGTH:
            await self._say(msg, f"That command is too long (over {MAX_COMMAND_LENGTH} chars).")
            return
        cmd = self.registry.get(parsed.name)
        if cmd is None:
            log.info("unknown command %s", shown, extra=ctx)
            await self._say(
                msg, f"Unknown command {shown}. Type {self.prefix}help to see what you can run."
            )
            return
        try:
            await self._run(cmd, parsed.argtext, msg)
        except CommandError as e:
            await self._say(msg, str(e))
        except Exception:
            log.exception("command %s failed", shown, extra=ctx)
            await self._say(
                msg,
                f"{self.prefix}{cmd.name} failed with an internal error; "
                "the bot's log has the details.",
            )

    async def _run(self, cmd: Command, argtext: str, msg: IncomingMessage) -> None:
        async def reply(text: str, html: str | None = None) -> str:
            return await self._reply(msg, text, html)

        level = await self.power_level_of(msg.room_id, msg.sender)
        invocation = Invocation(msg.room_id, msg.sender, level, self.prefix, reply, msg.event_id)
        await execute(cmd, argtext, invocation, self.allowed)

    async def _refuse_insecure(self, msg: IncomingMessage, device: str) -> None:
        ctx = context(room=msg.room_id, user=msg.sender)
        log.info("ignoring a command from a device not cross-signed by its owner", extra=ctx)
        now = self._clock()
        told = self._told_insecure.get((msg.sender, device))
        if told is not None and now - told < INSECURE_NOTICE_INTERVAL_S:
            return
        if len(self._told_insecure) > 10_000:  # bounded: forget the oldest notices
            self._told_insecure = dict(list(self._told_insecure.items())[5_000:])
        self._told_insecure[(msg.sender, device)] = now
        await self._say(msg, INSECURE_DEVICE_REPLY)

    async def _say(self, msg: IncomingMessage, text: str) -> None:
        try:
            await self._reply(msg, text, None)
        except Exception:
            log.exception("could not send a reply", extra=context(room=msg.room_id))


def _shorten(name: str, limit: int = 32) -> str:
    return name if len(name) <= limit else name[: limit - 1] + "…"
