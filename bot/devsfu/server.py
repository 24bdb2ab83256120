"""The HTTP side: one aiohttp application on one port for LiveKit signalling, the JWT
service, and a statistics endpoint; :class:`DevSfu` for tests, :func:`serve` for the CLI.

Routes:

- ``GET /rtc``: the signalling websocket (dual peer-connection mode).
- ``GET /rtc/v1``, ``/rtc/v1/validate``: 404, so that clients fall back to ``/rtc``. They
  carry CORS headers: livekit-client in a browser falls back only if it can read that 404.
- ``GET /rtc/validate``: 200 for a good token, 401 otherwise (the SDKs' diagnostics).
- ``POST /sfu/get``, ``POST /get_token``: the MatrixRTC JWT service (with a homeserver).
  With ``auto_create=False`` (what lk-jwt-service's README asks of LiveKit), only rooms its
  full-access tokens created can be joined.
- ``GET /debug/stats``: rooms, per-track packet counters, forwarding latency, CPU time.
- ``GET /healthz``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from aiohttp import web
from livekit.protocol import models as m
from livekit.protocol import rtc as lk

from bot.devsfu.aiortc_compat import check_aiortc, restrict_ice_to
from bot.devsfu.auth import (
    DEFAULT_API_KEY,
    DEFAULT_API_SECRET,
    TokenAuthority,
    TokenError,
    bearer_token,
)
from bot.devsfu.forwarding import LatencyStats
from bot.devsfu.jwt_service import JwtService
from bot.devsfu.participant import Participant
from bot.devsfu.room import Room
from bot.devsfu.signalling import SignalSettings, disconnect, refuse_resume, run_session
from bot.devsfu.userinfo import federation_tls

log = logging.getLogger(__name__)

CORS = {"Access-Control-Allow-Origin": "*"}
WILDCARDS = ("", "0.0.0.0", "::")  # noqa: S104 - compared against, not bound to
# What lk-jwt-service's CreateLiveKitRoom asks for: a room nobody joins closes after 300 s, and
# one everybody left after 20 s.
EMPTY_TIMEOUT_S = 300.0
DEPARTURE_TIMEOUT_S = 20.0


class DevSfu:
    """A LiveKit-compatible SFU for tests and the demo; production uses LiveKit.

    ``await sfu.start(host, port)`` (port 0 picks a free one), then clients connect to
    ``sfu.url`` and the JWT service answers at ``sfu.http_url``; ``await sfu.stop()``.
    ICE candidates use only the address the SFU is bound to (or ``ice_ip``), so media never
    takes another interface of the machine.
    """

    def __init__(
        self,
        *,
        api_key: str = DEFAULT_API_KEY,
        api_secret: str = DEFAULT_API_SECRET,
        homeserver: str | None = None,
        server_name: str | None = None,
        full_access_homeservers: Sequence[str] | None = None,
        federation_ca: Path | str | None = None,
        auto_create: bool = True,
        ice_ip: str | None = None,
        signal_settings: SignalSettings | None = None,
    ) -> None:
        """``homeserver``: the JWT service's own homeserver's base URL (no JWT service
        without one); ``server_name``, ``full_access_homeservers`` and ``federation_ca`` (the
        CA file federation TLS must chain to; default the system's): see
        :class:`~bot.devsfu.jwt_service.JwtService`."""
        self.authority = TokenAuthority(api_key, api_secret)
        self.homeserver = homeserver
        self.auto_create = auto_create
        self.created: dict[str, float] = {}  # room -> monotonic time it closes unless joined
        self.ice_ip = ice_ip
        self.signal_settings = signal_settings or SignalSettings()
        self.rooms: dict[str, Room] = {}
        self.latency = LatencyStats()
        self.host, self.port = "", 0
        self.started = time.time()
        self._runner: web.AppRunner | None = None
        self._undo_ice: Callable[[], None] | None = None
        self.app = web.Application()
        r = self.app.router
        r.add_get("/rtc", self._signal)
        r.add_get("/rtc/v1", self._no_single_pc)
        r.add_get("/rtc/v1/validate", self._no_single_pc)
        r.add_get("/rtc/validate", self._validate)
        r.add_get("/debug/stats", self._stats)
        r.add_get("/healthz", self._ok)
        r.add_get("/", self._ok)
        self.jwt: JwtService | None = None
        if homeserver:
            self.jwt = JwtService(
                homeserver,
                self.authority,
                self._livekit_url,
                server_name=server_name,
                full_access_homeservers=full_access_homeservers,
                federation_tls=federation_tls(str(federation_ca) if federation_ca else None),
                create_room=self.create_room,
                present=self._present,
            )
            self.jwt.add_routes(self.app)

    # -- life cycle -----------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The LiveKit URL clients connect to."""
        return f"ws://{self._netloc()}"

    @property
    def http_url(self) -> str:
        """The base URL of the JWT service (MatrixRTC ``livekit_service_url``)."""
        return f"http://{self._netloc()}"

    def _netloc(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    async def start(self, host: str, port: int = 0) -> None:
        await check_aiortc()
        ice_ip = self.ice_ip or (None if host in WILDCARDS else host)
        if ice_ip:
            self._undo_ice = restrict_ice_to(ice_ip)
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, host, port).start()
        self.host, self.port = host, self._runner.addresses[0][1]
        log.info(
            "dev SFU on %s (ICE on %s)%s",
            self.url,
            ice_ip or "all addresses",
            f", OpenID checked at {self.homeserver}" if self.homeserver else "",
        )

    def _present(self, room: str, identity: str) -> bool:
        """Whether ``identity`` is connected in LiveKit room ``room`` (for delayed leaves)."""
        found = self.rooms.get(room)
        return found is not None and any(
            p.identity == identity for p in found.participants.values()
        )

    async def stop(self) -> None:
        """Ask every client to leave, then shut down."""
        if self.jwt is not None:
            await self.jwt.delayed_leaves.close()
        for room in list(self.rooms.values()):
            for p in list(room.participants.values()):
                await disconnect(
                    p, m.DisconnectReason.SERVER_SHUTDOWN, tell=lk.LeaveRequest.DISCONNECT
                )
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._undo_ice is not None:
            self._undo_ice()
            self._undo_ice = None

    # -- for tests ------------------------------------------------------------------------

    def participants(self, identity: str | None = None) -> list[Participant]:
        return [
            p
            for room in self.rooms.values()
            for p in room.participants.values()
            if identity is None or p.identity == identity
        ]

    def create_room(self, name: str) -> None:
        """Open a room for joining (LiveKit's CreateRoom), as the JWT service does for
        full-access users; only matters without ``auto_create``."""
        if name not in self.rooms:
            self.created[name] = time.monotonic() + EMPTY_TIMEOUT_S

    def _may_join(self, name: str) -> bool:
        if self.auto_create or name in self.rooms:
            return True
        return self.created.get(name, 0.0) > time.monotonic()

    async def drop_signalling(self, identity: str) -> None:
        """Close the signalling websocket of ``identity`` without a LeaveRequest, as a network
        failure would: the client is expected to reconnect."""
        for p in self.participants(identity):
            await disconnect(p, m.DisconnectReason.SIGNAL_CLOSE)

    # -- handlers -------------------------------------------------------------------------

    def _livekit_url(self, request: web.Request) -> str:
        # Bound to a wildcard address, the right name is the one the client used.
        return f"ws://{request.host}" if self.host in WILDCARDS else self.url

    async def _ok(self, request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def _no_single_pc(self, request: web.Request) -> web.Response:
        return web.Response(
            status=404, text="single peer connection mode not supported", headers=CORS
        )

    async def _validate(self, request: web.Request) -> web.Response:
        try:
            self.authority.verify(bearer_token(request))
        except TokenError as e:
            return web.Response(status=401, text=str(e), headers=CORS)
        return web.Response(text="success", headers=CORS)

    async def _signal(self, request: web.Request) -> web.StreamResponse:
        try:
            grant = self.authority.verify(bearer_token(request))
        except TokenError as e:
            log.warning("refused a connection: %s", e)
            return web.Response(status=401, text=str(e), headers=CORS)
        if not self._may_join(grant.room):
            # livekit-server with room.auto_create off: ErrRoomNotFound, HTTP 404.
            log.warning("refused %s: room %s does not exist", grant.identity, grant.room)
            return web.Response(status=404, text="requested room does not exist", headers=CORS)
        ws = web.WebSocketResponse(max_msg_size=4 * 1024 * 1024)
        await ws.prepare(request)
        if request.query.get("reconnect") in ("1", "true"):
            log.info("%s tried to resume; asked to reconnect instead", grant.identity)
            await refuse_resume(ws)
            return ws
        room = self.rooms.get(grant.room)
        for old in room.by_identity(grant.identity) if room else []:
            # The newest connection of an identity wins, as in LiveKit.
            await disconnect(
                old, m.DisconnectReason.DUPLICATE_IDENTITY, tell=lk.LeaveRequest.DISCONNECT
            )
        room = self.rooms.get(grant.room)  # it is gone if that was its last participant
        if room is None:
            room = self.rooms[grant.room] = Room(grant.room, self._forget_room)
        auto_subscribe = request.query.get("auto_subscribe", "1") not in ("0", "false")
        if self.jwt is not None:
            self.jwt.delayed_leaves.participant_joined(grant.room, grant.identity)
        await run_session(
            ws,
            room,
            grant,
            auto_subscribe=auto_subscribe,
            settings=self.signal_settings,
            latency=self.latency,
        )
        return ws

    def _forget_room(self, room: Room) -> None:
        if self.rooms.get(room.name) is room:
            del self.rooms[room.name]
            self.created[room.name] = time.monotonic() + DEPARTURE_TIMEOUT_S

    async def _stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.stats())

    def stats(self) -> dict[str, Any]:
        """Rooms, per-track packet counters, forwarding latency and the process's CPU time."""
        rooms = {
            room.name: {
                p.identity: {
                    "sid": p.sid,
                    "published": {sid: f.stats() for sid, f in p.published.items()},
                    "pub_pc": p.pub.connectionState,
                    "sub_pc": p.sub.connectionState,
                }
                for p in room.participants.values()
            }
            for room in self.rooms.values()
        }
        t = os.times()
        return {
            "rooms": rooms,
            "cpu_s": round(t.user + t.system, 3),
            "threads": threading.active_count(),
            "uptime_s": round(time.time() - self.started, 1),
            "forward_latency": self.latency.summary(),
        }


async def serve(
    host: str,
    port: int,
    *,
    homeserver: str | None,
    api_key: str = DEFAULT_API_KEY,
    api_secret: str = DEFAULT_API_SECRET,
    server_name: str | None = None,
    full_access_homeservers: Sequence[str] | None = None,
    federation_ca: str | None = None,
    auto_create: bool = True,
) -> None:
    """Run a DevSfu until SIGINT or SIGTERM; then clients are told the server shuts down."""
    # aiortc and aioice log every packet at DEBUG, which costs more CPU than forwarding.
    for name in ("aiortc", "aioice"):
        logging.getLogger(name).setLevel(logging.WARNING)
    sfu = DevSfu(
        api_key=api_key,
        api_secret=api_secret,
        homeserver=homeserver,
        server_name=server_name,
        full_access_homeservers=full_access_homeservers,
        federation_ca=federation_ca,
        auto_create=auto_create,
    )
    await sfu.start(host, port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        log.info("shutting down")
        await sfu.stop()
