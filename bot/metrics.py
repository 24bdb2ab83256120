"""Prometheus metrics and a health check, over HTTP on ``[metrics] address``.

Everything is read from the bot's state when scraped (no counters threaded through the media
path): calls, participants, per-plugin frames delivered, dropped and queued, participants whose
media does not decrypt, and what each plugin reports through ``Plugin.metrics()`` (the
recorder's bytes written, the transcriber's caption latency and queue).
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from bot.commands.dispatch import Dispatcher
    from bot.fleet.worker import FleetWorker
    from bot.matrix.client import MatrixClient
    from bot.media.calls import CallMediaManager
    from bot.rtc.manager import MatrixRTCSessionManager

log = logging.getLogger(__name__)

#: /health says "unhealthy" when the last sync is older than this (syncs long-poll 30 s).
SYNC_STALE_S = 90.0


class _Collector(Collector):
    def __init__(self, metrics: BotMetrics) -> None:
        self.m = metrics

    def collect(self) -> Iterator[Metric]:
        media, rtc = self.m.media, self.m.rtc
        own = self.m.matrix.user_id if self.m.matrix.started else None
        sessions = rtc.joined_sessions()
        calls = GaugeMetricFamily("callbot_calls", "Calls the bot is in")
        calls.add_metric([], len(sessions))
        people = GaugeMetricFamily(
            "callbot_participants", "Other participants in each call", labels=["room"]
        )
        for s in sessions:
            people.add_metric([s.room_id], sum(m.user_id != own for m in s.memberships))
        undecryptable = GaugeMetricFamily(
            "callbot_participants_undecryptable",
            "Participants whose media the bot cannot decrypt",
            labels=["room"],
        )
        families: dict[str, Any] = {
            name: kind(f"callbot_plugin_{name}", text, labels=["room", "plugin"])
            for name, kind, text in (
                ("frames_delivered", CounterMetricFamily, "Frames and events a plugin took"),
                ("frames_dropped", CounterMetricFamily, "Frames a plugin lost (queue full)"),
                ("errors", CounterMetricFamily, "Exceptions a plugin raised"),
                ("queue_length", GaugeMetricFamily, "Frames waiting for a plugin"),
            )
        }
        reported: dict[str, GaugeMetricFamily] = {}
        for room in media.rooms():
            engine = media.media(room)
            if engine is not None:
                undecryptable.add_metric([room], engine.undecryptable())
            for runner in media.runners(room):
                labels = [room, runner.name]
                families["frames_delivered"].add_metric(labels, runner.stats.delivered)
                families["frames_dropped"].add_metric(labels, runner.stats.dropped)
                families["errors"].add_metric(labels, runner.stats.errors)
                families["queue_length"].add_metric(labels, runner.queued)
                try:
                    values = runner.plugin.metrics()
                except Exception:
                    log.exception("plugin %s failed to report metrics", runner.name)
                    continue
                for key, value in values.items():
                    name = _metric_name(f"callbot_{runner.name}_{key}")
                    family = reported.setdefault(
                        name,
                        GaugeMetricFamily(
                            name, f"Reported by the {runner.name} plugin", labels=["room"]
                        ),
                    )
                    family.add_metric([room], float(value))
        slots = rtc.slots
        limit = GaugeMetricFamily(
            "callbot_calls_limit", "Calls the bot takes at once (rtc.max_calls)"
        )
        limit.add_metric([], slots.max_calls)
        waiting = GaugeMetricFamily("callbot_joins_waiting", "Joins waiting for a free call slot")
        waiting.add_metric([], len(slots.waiting))
        refused = CounterMetricFamily("callbot_joins_refused", "Joins refused: calls limit reached")
        refused.add_metric([], slots.refused)
        commands = CounterMetricFamily(
            "callbot_commands_dropped",
            "Commands answered 'busy' because too many were running (bot.commands.dispatch)",
        )
        commands.add_metric([], self.m.dispatcher.dropped if self.m.dispatcher else 0)
        gaps = CounterMetricFamily(
            "callbot_sync_timeline_gaps",
            "Syncs whose room timeline was cut (messages in between were never seen)",
        )
        gaps.add_metric([], self.m.matrix.timeline_gaps)
        to_device = CounterMetricFamily(
            "callbot_to_device_dropped",
            "To-device events (media keys) dropped because too many were waiting",
        )
        to_device.add_metric([], self.m.matrix.to_device_dropped)
        outage = GaugeMetricFamily(
            "callbot_matrix_unreachable", "1 while the homeserver cannot be reached"
        )
        outage.add_metric([], 1 if self.m.matrix.down_since is not None else 0)
        yield from (calls, limit, waiting, refused, people, undecryptable, commands, gaps)
        yield from (to_device, outage)
        yield from (*families.values(), *reported.values())
        if self.m.fleet is not None:
            yield from _fleet_metrics(self.m.fleet)


def _fleet_metrics(fleet: FleetWorker) -> Iterator[Metric]:
    """This worker's view of its fleet (each worker serves its own /metrics)."""
    snap = fleet.snapshot
    leader = GaugeMetricFamily("callbot_fleet_leader", "1 while this worker is the leader")
    leader.add_metric([], 1 if fleet.is_leader else 0)
    workers = GaugeMetricFamily("callbot_fleet_workers", "Live workers of the fleet")
    workers.add_metric([], len(snap.workers))
    assigned = GaugeMetricFamily(
        "callbot_fleet_assigned_calls", "Calls the fleet assigns to each worker", labels=["worker"]
    )
    for w in snap.workers:
        assigned.add_metric([w.device_id], sum(a.worker == w.device_id for a in snap.assignments))
    yield from (leader, workers, assigned)


def _metric_name(raw: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_]", "_", raw)


class BotMetrics:
    def __init__(
        self,
        matrix: MatrixClient,
        rtc: MatrixRTCSessionManager,
        media: CallMediaManager,
        fleet: FleetWorker | None = None,
    ) -> None:
        self.matrix, self.rtc, self.media = matrix, rtc, media
        #: a fleet's worker (bot.fleet): its leadership and the fleet it sees are exported
        self.fleet = fleet
        #: set by the app once it has one (its dropped commands are exported)
        self.dispatcher: Dispatcher | None = None
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Collector(self))
        self._runner: web.AppRunner | None = None

    def render(self) -> bytes:
        """The Prometheus text exposition of everything, now."""
        return generate_latest(self.registry)

    def health(self) -> tuple[bool, dict[str, Any]]:
        """(healthy, details): the Matrix sync is running and recent."""
        task = self.matrix.sync_task if self.matrix.started else None
        last = self.matrix.last_sync
        age = None if last is None else round(time.monotonic() - last, 1)
        alive = task is not None and not task.done()
        down = self.matrix.down_since if self.matrix.started else None
        # An outage the sync loop is riding out is "degraded", not dead (200): restarting the
        # bot would end its calls, which go on over the SFU meanwhile.
        ok = alive and age is not None and (age < SYNC_STALE_S or down is not None)
        status = "unhealthy" if not ok else "degraded" if down is not None else "ok"
        details = {
            "status": status,
            "matrix_sync_age_s": age,
            "matrix_unreachable_s": None if down is None else round(time.monotonic() - down, 1),
            "calls": len(self.rtc.joined_sessions()) if self.matrix.started else 0,
        }
        return ok, details

    async def serve(self, address: str) -> None:
        host, _, port = address.rpartition(":")
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/health", self._health)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, host.strip("[]"), int(port)).start()
        log.info("metrics and health on http://%s/metrics and /health", address)

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=self.render(), content_type="text/plain", charset="utf-8")

    async def _health(self, request: web.Request) -> web.Response:
        ok, details = self.health()
        return web.Response(
            text=json.dumps(details), status=200 if ok else 503, content_type="application/json"
        )
