"""Handing our delayed leave to the MatrixRTC authorization service (lk-jwt-service).

lk-jwt-service's ``POST /delegate_delayed_leave`` takes ``{room_id, slot_id, openid_token,
member: {id, claimed_user_id, claimed_device_id}, delay_id, delay_timeout,
delay_cs_api_url}`` (lk-jwt-service ``requests.go`` ``DelegateDelayedLeaveRequest``).
While the member's LiveKit identity is on the SFU the service restarts the delayed event
(every 80 % of ``delay_timeout``); when it leaves the SFU, or its connection drops, the
service sends it at once (``delayedEventManager.go``). So a crashed bot leaves the call as
soon as the SFU notices, not when its homeserver's timer runs out, and it still leaves if
its own restarts stop reaching a slow homeserver. The bot keeps restarting the event itself
too: the two are harmless together, and the service is only a second line.

Only sticky (MSC4143) memberships can be delegated: the service finds the member on the SFU
by the hashed identity of ``/get_token``. A service without the endpoint (404/405, an older
lk-jwt-service) or that refuses the bot's homeserver (M_FORBIDDEN: "full access" users
only) is simply not used; nothing the service answers reaches a room.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import nio

from bot import outbound
from bot.log import context
from bot.outbound import OutboundError, OutboundPolicy, display_host
from bot.rtc.focus import RtcError, openid_token

log = logging.getLogger(__name__)

PATH = "/delegate_delayed_leave"


@dataclass(frozen=True)
class DelayedLeave:
    """Our scheduled leave, as the service needs it."""

    room_id: str
    slot_id: str
    member_id: str
    delay_id: str
    delay_ms: int


def request_body(
    client: nio.AsyncClient, leave: DelayedLeave, token: dict[str, object]
) -> dict[str, object]:
    return {
        "room_id": leave.room_id,
        "slot_id": leave.slot_id,
        "openid_token": token,
        "member": {
            "id": leave.member_id,
            "claimed_user_id": client.user_id,
            "claimed_device_id": client.device_id,
        },
        "delay_id": leave.delay_id,
        "delay_timeout": leave.delay_ms,
        "delay_cs_api_url": client.homeserver,
    }


async def delegate(
    client: nio.AsyncClient,
    service_url: str,
    leave: DelayedLeave,
    policy: OutboundPolicy | None = None,
) -> bool:
    """Ask the service at ``service_url`` to watch our leave; True if it took it.

    Only for the service the bot got its LiveKit token from: ``focus.sfu_access`` has
    checked that the bot's OpenID token may go there."""
    host = display_host(service_url)
    ctx = context(room=leave.room_id)
    try:
        token = await openid_token(client)
        resp = await outbound.fetch(
            "POST",
            service_url.rstrip("/") + PATH,
            json=request_body(client, leave, token),
            policy=policy,
        )
    except Exception as e:  # never fatal: the bot restarts the event itself
        if not isinstance(e, OutboundError | RtcError | OSError | TimeoutError):
            log.exception("handing the delayed leave over failed", extra=ctx)
        log.info("could not hand the delayed leave to %s: %s", host, type(e).__name__, extra=ctx)
        return False
    if resp.status == 200:
        log.info("the authorization service %s watches our delayed leave", host, extra=ctx)
        return True
    if resp.status in (404, 405):
        log.info("the authorization service %s does not take delayed leaves", host, extra=ctx)
    else:
        log.info(
            "the authorization service %s refused our delayed leave: HTTP %d",
            host,
            resp.status,
            extra=ctx,
        )
    return False
