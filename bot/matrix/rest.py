"""Client-server API calls nio 0.26 does not offer: delayed events (MSC4140), state events
with a delay, unstable feature flags, and the MatrixRTC transports endpoint (MSC4143).

Paths and fallbacks follow what matrix-js-sdk sends (``src/client.ts``,
``src/@types/requests.ts``).
"""

from __future__ import annotations

import json
import logging
from typing import Any
from urllib.parse import quote, urlencode

import nio

from bot.errors import MatrixError

log = logging.getLogger(__name__)

MSC4140 = "/_matrix/client/unstable/org.matrix.msc4140"
#: MSC4519's stable path first, then MSC4143's unstable one (what Synapse serves today)
TRANSPORTS_PATHS = (
    "/_matrix/client/v1/rtc/transports",
    "/_matrix/client/unstable/org.matrix.msc4143/rtc/transports",
)
#: the path Synapse 1.163 serves (the unstable one)
TRANSPORTS_PATH = TRANSPORTS_PATHS[1]


class MatrixHttpError(MatrixError):
    """A non-2xx answer from the homeserver, with its Matrix error code."""

    def __init__(self, status: int, body: Any, what: str) -> None:
        self.status = status
        self.body = body if isinstance(body, dict) else {}
        self.errcode = self.body.get("errcode", "")
        message = self.body.get("error", str(body)[:200])
        super().__init__(f"{what}: HTTP {status} {self.errcode} {message}".rstrip())


class DelayIgnored(MatrixError):
    """The homeserver answered a delayed send without a ``delay_id``: it ignored the delay
    parameter and sent the event at once (MSC4140 unsupported there)."""


def delay_id_of(answer: Any, what: str) -> str:
    """The ``delay_id`` of a delayed send's answer; DelayIgnored if there is none."""
    delay_id = answer.get("delay_id") if isinstance(answer, dict) else None
    if not isinstance(delay_id, str) or not delay_id:
        raise DelayIgnored(f"{what}: the homeserver sent it at once (no delay_id)")
    return delay_id


async def request(
    client: nio.AsyncClient,
    method: str,
    path: str,
    body: Any = None,
    *,
    query: dict[str, Any] | None = None,
    auth: bool = True,
    what: str = "",
) -> Any:
    """One authenticated JSON request; the parsed answer, or MatrixHttpError."""
    headers = {"Authorization": f"Bearer {client.access_token}"} if auth else {}
    data = None
    if body is not None:
        data = json.dumps(body)
        headers["Content-Type"] = "application/json"
    if query:
        path = f"{path}?{urlencode(query)}"
    resp = await client.send(method, path, data, headers=headers)
    try:
        payload = await resp.json(content_type=None)
    except (ValueError, UnicodeDecodeError):
        payload = None
    if resp.status >= 300:
        raise MatrixHttpError(resp.status, payload, what or f"{method} {path.split('?')[0]}")
    return payload


async def unstable_features(client: nio.AsyncClient) -> dict[str, bool]:
    versions = await request(client, "GET", "/_matrix/client/versions", auth=False)
    features = versions.get("unstable_features") if isinstance(versions, dict) else None
    return {k: v for k, v in (features or {}).items() if isinstance(v, bool)}


def _state_path(room_id: str, event_type: str, state_key: str) -> str:
    return (
        f"/_matrix/client/v3/rooms/{quote(room_id, safe='')}/state/"
        f"{quote(event_type, safe='')}/{quote(state_key, safe='')}"
    )


async def put_state(
    client: nio.AsyncClient, room_id: str, event_type: str, state_key: str, content: dict
) -> str:
    """Send a state event; returns its event ID."""
    answer = await request(
        client,
        "PUT",
        _state_path(room_id, event_type, state_key),
        content,
        what=f"sending {event_type}",
    )
    return answer["event_id"]


async def put_delayed_state(
    client: nio.AsyncClient,
    room_id: str,
    event_type: str,
    state_key: str,
    content: dict,
    delay_ms: int,
) -> str:
    """Schedule a state event to be sent after ``delay_ms`` unless restarted; its delay ID.

    The delay is a query parameter on the normal v3 endpoint (what js and Synapse use).
    """
    answer = await request(
        client,
        "PUT",
        _state_path(room_id, event_type, state_key),
        content,
        query={"org.matrix.msc4140.delay": delay_ms},
        what=f"scheduling a delayed {event_type}",
    )
    return delay_id_of(answer, f"scheduling a delayed {event_type}")


async def delayed_event_action(client: nio.AsyncClient, delay_id: str, action: str) -> None:
    """``restart``, ``send`` or ``cancel`` a delayed event.

    js first uses ``…/delayed_events/{id}/{action}`` and falls back to the older
    ``…/delayed_events/{id}`` with ``{"action": …}`` on M_UNRECOGNIZED.
    """
    base = f"{MSC4140}/delayed_events/{quote(delay_id, safe='')}"
    what = f"{action} of a delayed event"
    try:
        await request(client, "POST", f"{base}/{action}", {}, what=what)
    except MatrixHttpError as e:
        unrecognised = e.errcode == "M_UNRECOGNIZED" or (
            e.status in (404, 405) and e.errcode != "M_NOT_FOUND"
        )
        if not unrecognised:
            raise
        await request(client, "POST", base, {"action": action}, what=what)


async def rtc_transports(client: nio.AsyncClient) -> list[dict[str, Any]]:
    """The homeserver's advertised MatrixRTC transports (MSC4143); [] if it has none.

    The stable path is asked first; a server that does not know it (400/404/405, or
    M_UNRECOGNIZED) is asked at the unstable one."""
    for path in TRANSPORTS_PATHS:
        try:
            answer = await request(client, "GET", path, what="rtc transports")
        except MatrixHttpError as e:
            if e.status in (400, 404, 405):
                continue
            raise
        items = answer.get("rtc_transports") if isinstance(answer, dict) else None
        return [t for t in items or [] if isinstance(t, dict) and isinstance(t.get("type"), str)]
    return []
