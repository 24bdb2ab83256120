"""The composition root: builds the bot from its config and runs it until told to stop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from typing import TYPE_CHECKING, Any

from bot import outbound
from bot.commands.core import CoreCommands
from bot.commands.dispatch import Dispatcher
from bot.commands.parsing import parse_command
from bot.commands.permissions import UserPatterns
from bot.commands.registry import CommandRegistry
from bot.config import Config
from bot.consent import ConsentCommands, OptOuts
from bot.fleet import FleetLost
from bot.fleet.setup import (
    fleet_call_commands,
    fleet_optouts,
    fleet_store_url,
    fleet_timezones,
    fleet_worker,
)
from bot.log import context
from bot.matrix.client import MatrixClient
from bot.matrix.messages import IncomingMessage, notice
from bot.matrix.trust import IdentityChanged
from bot.media.calls import CallMediaManager
from bot.metrics import BotMetrics
from bot.outbound import OutboundPolicy
from bot.plugin import Plugin
from bot.plugin_loader import LoadedPlugin, load_plugins
from bot.rtc.autoleave import AutoLeave, AutoLeavePolicy
from bot.rtc.commands import CallCommands
from bot.rtc.manager import MatrixRTCSessionManager
from bot.rtc.resume import JoinedCalls
from bot.schedule.commands import ScheduleCommands
from bot.schedule.runner import ScheduledCalls
from bot.schedule.scheduler import JobScheduler, default_store_url
from bot.schedule.timezones import RoomTimezones

if TYPE_CHECKING:
    from bot.fleet.worker import FleetWorker

log = logging.getLogger(__name__)

REJOINED_NOTICE = (
    "My call membership had disappeared (the homeserver was unreachable for longer than my "
    "delayed leave, or it was removed), so I re-joined the call."
)
RESUMED_NOTICE = "I was restarted while in this call, so I re-joined it."

#: a notice the bot must get across (re-joined, identity changed) is tried this often
NOTICE_TRIES = 12
NOTICE_RETRY_S = 10.0

#: How long a plugin command waits for the plugins of a call the bot has just joined.
PLUGIN_START_WAIT_S = 15.0


class CallBot:
    """One bot account: its Matrix connection, commands, calls and their plugins.

    Constructing it does no I/O and validates everything the config names (e.g. the
    ``[commands.<name>]`` sections), so ``callbot check-config`` can build one to check.
    """

    def __init__(
        self, config: Config, extra_plugins: dict[str, type[Plugin]] | None = None
    ) -> None:
        self.config = config
        self.matrix = MatrixClient(config.matrix, config.bot.data_dir)
        self.rtc = MatrixRTCSessionManager(self.matrix, config.rtc)
        self.joined_calls = JoinedCalls(config.bot.data_dir, self.rtc)
        #: one worker of several sharing a database ([fleet]); None: the one bot process
        self.fleet = fleet_worker(config, self.rtc, self._post) if config.fleet.enabled else None
        local_optouts = config.bot.data_dir / "optouts.json"
        self.optouts = (
            fleet_optouts(self.fleet, local_optouts) if self.fleet else OptOuts(local_optouts)
        )
        self.media = CallMediaManager(
            self.matrix,
            self.rtc,
            self.optouts,
            call_folder=self.fleet.folder_for if self.fleet else self.joined_calls.folder_for,
            calls_dir=config.fleet.calls_dir,
        )
        self.metrics = BotMetrics(self.matrix, self.rtc, self.media, self.fleet)
        self.call_commands = (
            fleet_call_commands(
                self.rtc, self.fleet, self.media.e2ee_state, self.media.plugin_lines
            )
            if self.fleet
            else CallCommands(self.rtc, self.media.e2ee_state, self.media.plugin_lines)
        )
        self.auto_leave = (
            AutoLeave(
                self.rtc,
                AutoLeavePolicy(config.rtc.auto_leave_grace, config.rtc.wait_for_participants),
                self._post,
            )
            if config.rtc.auto_leave
            else None
        )
        self._plugin_classes: list[type[Plugin]] = []
        self.registry = CommandRegistry()
        self.registry.register(CoreCommands(self.registry, active_calls=self.active_calls))
        self.registry.register(self.call_commands)
        self.registry.register(ConsentCommands(self.optouts))
        for plugin in load_plugins(config.plugins, extra_plugins):
            self.add_plugin(plugin)
        self.allowed = UserPatterns(config.allowed_user_globs)
        self.jobs: JobScheduler | None = None
        self.scheduled: ScheduledCalls | None = None
        #: commands only the fleet's leader answers (the schedule's: its store is the leader's)
        self.leader_only: frozenset[str] = frozenset()
        if config.schedule.enabled:
            self._add_scheduling(config)
        config.check_command_names(self.registry.names())
        self.registry.apply_overrides(config.commands)
        self.dispatcher = Dispatcher(
            self.registry,
            prefix=config.bot.command_prefix,
            allowed=self.allowed,
            power_level_of=self.matrix.power_level,
            reply=self._reply,
            max_age_s=config.bot.command_max_age,
            insecure_device=self.matrix.insecure_sender_device,
        )
        self.metrics.dispatcher = self.dispatcher
        self.matrix.on_message(self._on_fleet_message if self.fleet else self.dispatcher.submit)
        self._routing: set[asyncio.Task[None]] = set()
        self.matrix.on_invite(self._on_invite)
        self.matrix.trust.identity_changed.connect(self._on_identity_changed)
        self.rtc.session_created.connect(
            lambda s: s.rejoined.connect(lambda _: self._tell(s.room_id, REJOINED_NOTICE))
        )

    def add_plugin(self, plugin: LoadedPlugin) -> None:
        """Run a plugin in calls, and make its commands available."""
        cls = plugin.cls
        self._plugin_classes.append(cls)
        self.media.add_plugin(plugin.make, plugin.rooms)
        self.registry.register_plugin_class(
            cls,
            lambda room_id: self._plugin_in_call(room_id, cls),
            f"I am not in this room's call; type {self.config.bot.command_prefix}join first.",
        )

    async def _plugin_in_call(self, room_id: str, cls: type[Plugin]) -> Plugin | None:
        """The plugin's instance in the room's call. Right after joining, plugins are still
        starting: wait for them, so "!join" then "!record start" just works."""
        session = self.rtc.existing_session(room_id)
        if session is not None and (session.is_joined or session.joining):
            await self.media.wait_ready(room_id, PLUGIN_START_WAIT_S)
        return self.media.instance(room_id, cls)

    def _add_scheduling(self, config: Config) -> None:
        sc = config.schedule
        default = default_store_url(config.bot.data_dir)
        if self.fleet is not None:
            default = fleet_store_url(self.fleet.db.url)  # the one store, run by the leader
        self.jobs = JobScheduler(
            sc.job_store or default,
            owner=config.matrix.user_id,
            timezone=sc.timezone,
            misfire_grace_s=sc.misfire_grace,
        )
        zones_file = config.bot.data_dir / "room_timezones.json"
        timezones = (
            fleet_timezones(self.fleet, zones_file, sc.timezone, sc.room_timezones)
            if self.fleet
            else RoomTimezones(zones_file, sc.timezone, sc.room_timezones)
        )
        added = self.registry.register(
            ScheduleCommands(
                self.jobs, timezones, self.registry, self.allowed, self.matrix.power_level
            )
        )
        self.leader_only = frozenset(cmd.name for cmd in added)
        self.scheduled = ScheduledCalls(
            rtc=self.rtc,
            registry=self.registry,
            allowed=self.allowed,
            prefix=config.bot.command_prefix,
            power_level_of=self.matrix.power_level,
            post=lambda room, text, html: self.matrix.send(room, notice(text, html)),
            joined_rooms=self.matrix.joined_rooms,
            media_ready=self.media.wait_ready,
        )

    def active_calls(self) -> list[str]:
        """Lines describing the calls the bot is in or sees, for !status."""
        return self.call_commands.status_lines()

    async def start(self) -> None:
        # One policy for every URL someone else chose (call foci, music), from [outbound].
        outbound.configure(OutboundPolicy.from_config(self.config))
        if self.fleet is not None:
            await self.fleet.connect()
        await self.matrix.start()
        if self.config.metrics.address:
            await self.metrics.serve(self.config.metrics.address)
        for cls in self._plugin_classes:
            try:
                await cls.on_bot_start(self.config.bot.data_dir, self._post)
            except Exception:
                log.exception("plugin %s failed at start-up", cls.name)
        if self.fleet is not None:
            await self._start_fleet(self.fleet)
        elif self.jobs is not None and self.scheduled is not None:
            # after the first sync, so jobs (and misfires) find their rooms
            self.jobs.start(self.scheduled, self.scheduled.missed)
        if self.fleet is not None:
            # the leader gives a dead worker's calls to another one; a restarted worker is new
            self.joined_calls.forget_earlier()
        elif self.config.rtc.rejoin_after_restart:
            # after the first sync: it tells which of those calls are still going on
            for room_id in await self.joined_calls.rejoin():
                await self._tell(room_id, RESUMED_NOTICE)
        else:
            self.joined_calls.forget_earlier()
        log.info(
            "ready: %d rooms, %d commands", len(self.matrix.joined_rooms()), len(self.registry)
        )

    async def _start_fleet(self, fleet: FleetWorker) -> None:
        jobs, scheduled = self.jobs, self.scheduled
        if jobs is not None and scheduled is not None:
            fleet.fire_here = scheduled.fire
            # only the leader runs the scheduler: a job store is never shared by two
            fleet.on_lead = lambda: jobs.start(fleet, scheduled.missed)
        device = self.matrix.nio.device_id
        assert device is not None
        await fleet.start(device)

    def _on_fleet_message(self, msg: IncomingMessage) -> None:
        task = asyncio.create_task(self._route(msg))
        self._routing.add(task)
        task.add_done_callback(self._routing.discard)

    async def _route(self, msg: IncomingMessage) -> None:
        """In a fleet, exactly one worker runs each command (bot.fleet.worker.answers)."""
        parsed = parse_command(msg.body, self.config.bot.command_prefix)
        assert self.fleet is not None
        if parsed is None:
            return
        try:
            if await self.fleet.answers(msg.room_id, parsed.name, self.leader_only):
                self.dispatcher.submit(msg)
        except FleetLost:
            return  # the worker is stopping (its loop ends with the same error)

    async def stop(self) -> None:
        await self.dispatcher.drain()
        if self.jobs is not None and self.jobs.running:
            self.jobs.shutdown()
        if self.scheduled is not None:
            await self.scheduled.stop()
        if self.auto_leave is not None:
            await self.auto_leave.stop()
        await self.media.stop()
        if self.matrix.started:
            await self.rtc.stop()
        if self.fleet is not None:
            await self.fleet.stop()
        await self.matrix.stop()
        await self.metrics.close()
        log.info("stopped")

    async def run(self) -> int:
        """Start, run until SIGINT/SIGTERM or a fatal sync error, stop. Returns an exit code."""
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            await self.start()
            sync = self.matrix.sync_task
            assert sync is not None
            stopper = asyncio.create_task(stop.wait())
            waited: set[asyncio.Task[Any]] = {sync, stopper}
            fleet = self.fleet.task if self.fleet is not None else None
            if fleet is not None:
                waited.add(fleet)
            await asyncio.wait(waited, return_when=asyncio.FIRST_COMPLETED)
            stopper.cancel()
            if sync.done() and not sync.cancelled() and sync.exception() is not None:
                log.error("the Matrix sync loop failed", exc_info=sync.exception())
                return 1
            if fleet is not None and fleet.done() and not fleet.cancelled():
                # its lock and its calls may be another worker's already: stop, be restarted
                log.error("this worker left the fleet: %s", fleet.exception())
                return 1
            return 0
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
            with contextlib.suppress(Exception):
                await self.stop()

    async def _post(self, room_id: str, text: str) -> str:
        return await self.matrix.send(room_id, notice(text))

    async def _reply(self, msg: IncomingMessage, text: str, html: str | None) -> str:
        return await self.matrix.reply(msg, text, html, self.config.bot.reply_mode)

    async def _tell(self, room_id: str, text: str) -> None:
        # Retried for a while: a notice about an outage may be posted as the next one starts.
        for attempt in range(NOTICE_TRIES):
            try:
                await self._post(room_id, text)
                return
            except Exception as e:
                if attempt == NOTICE_TRIES - 1:
                    log.error("could not post a notice: %s", e, extra=context(room=room_id))
                    return
                await asyncio.sleep(NOTICE_RETRY_S)

    async def _on_identity_changed(self, change: IdentityChanged) -> None:
        # Told once per change (the new key is pinned at once), in the encrypted rooms we share.
        if change.user_id == self.matrix.user_id:
            return
        text = (
            f"The cryptographic identity of {change.user_id} changed (new master key "
            f"{change.new_master[:8]}…). If they did not reset it themselves, someone else may "
            "be using their account. I trust the new identity from now on."
        )
        for room_id in self.matrix.encrypted_rooms_with(change.user_id):
            await self._tell(room_id, text)

    async def _on_invite(self, room_id: str, inviter: str) -> None:
        ctx = context(room=room_id, user=inviter)
        if not self.allowed.matches(inviter):
            log.info("rejecting an invite from a user not in bot.allowed_users", extra=ctx)
            await self.matrix.reject_invite(room_id)
            return
        await self.matrix.join(room_id)
        log.info("joined on invite", extra=ctx)
