"""Client-server calls nio lacks (bot.matrix.rest): delayed events on a real Synapse, and
the fallbacks js makes, with a stand-in homeserver for answers Synapse does not give."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from bot.matrix import rest
from tests.conftest import peer
from tests.synapse import Synapse

TYPE = "org.matrix.msc3401.call.member"


async def _state(client: Any, room: str, key: str) -> dict[str, Any]:
    path = f"/_matrix/client/v3/rooms/{quote(room)}/state/{TYPE}/{quote(key, safe='')}"
    return await rest.request(client, "GET", path)


async def test_split_delayed_event_actions_on_synapse(synapse: Synapse, tmp_path: Path) -> None:
    async with peer(synapse, tmp_path, "delay") as p:
        room = (await p.client.room_create()).room_id
        key = f"_{p.user_id}_{p.client.device_id}_m.call"
        await rest.put_state(p.client, room, TYPE, key, {"application": "m.call", "x": 1})
        delay_id = await rest.put_delayed_state(p.client, room, TYPE, key, {}, 60_000)
        assert delay_id  # the answer carried one: the server took the delay
        await rest.delayed_event_action(p.client, delay_id, "restart")
        assert await _state(p.client, room, key) == {"application": "m.call", "x": 1}
        await rest.delayed_event_action(p.client, delay_id, "send")
        assert await _state(p.client, room, key) == {}  # sent now, not in 60 s
        with pytest.raises(rest.MatrixHttpError) as e:
            await rest.delayed_event_action(p.client, delay_id, "restart")
        assert e.value.errcode == "M_NOT_FOUND"


class Answer:
    def __init__(self, status: int, body: Any) -> None:
        self.status, self._body = status, body

    async def json(self, content_type: Any = None) -> Any:
        return self._body


class StandIn:
    """A homeserver that answers from a script, and records what it was asked."""

    access_token = "t"

    def __init__(self, answers: list[tuple[int, Any]]) -> None:
        self.answers = answers
        self.asked: list[tuple[str, str, Any]] = []

    async def send(self, method: str, path: str, data: Any, headers: Any) -> Answer:
        self.asked.append((method, path, json.loads(data) if data else None))
        return Answer(*self.answers.pop(0))


async def test_the_older_delayed_event_form_is_the_fallback() -> None:
    """js: {id}/{action} first; on M_UNRECOGNIZED the older {id} with {"action": ...}."""
    old = StandIn([(404, {"errcode": "M_UNRECOGNIZED"}), (200, {})])
    await rest.delayed_event_action(old, "d1", "cancel")  # type: ignore[arg-type]
    assert [(m, p.rsplit("/", 2)[-2:], b) for m, p, b in old.asked] == [
        ("POST", ["d1", "cancel"], {}),
        ("POST", ["delayed_events", "d1"], {"action": "cancel"}),
    ]
    gone = StandIn([(404, {"errcode": "M_NOT_FOUND"})])  # not a missing endpoint: an answer
    with pytest.raises(rest.MatrixHttpError):
        await rest.delayed_event_action(gone, "d2", "send")  # type: ignore[arg-type]
    assert len(gone.asked) == 1


async def test_a_delayed_send_without_delay_id_was_sent_at_once() -> None:
    """A server that ignores org.matrix.msc4140.delay sends the event at once and answers
    with an event ID: that is no delayed leave."""
    server = StandIn([(200, {"event_id": "$sent-now"})])
    with pytest.raises(rest.DelayIgnored, match="no delay_id"):
        await rest.put_delayed_state(server, "!r:x", TYPE, "k", {}, 10_000)  # type: ignore[arg-type]
    assert "org.matrix.msc4140.delay=10000" in server.asked[0][1]
    for answer in (None, [], {"delay_id": ""}, {"delay_id": 7}):
        with pytest.raises(rest.DelayIgnored):
            rest.delay_id_of(answer, "x")
    assert rest.delay_id_of({"delay_id": "abc"}, "x") == "abc"


async def test_the_stable_transports_path_first() -> None:
    server = StandIn([(200, {"rtc_transports": [{"type": "m.livekit", "url": "https://a"}]})])
    found = await rest.rtc_transports(server)  # type: ignore[arg-type]
    assert found == [{"type": "m.livekit", "url": "https://a"}]
    assert server.asked[0][1] == "/_matrix/client/v1/rtc/transports"
    older = StandIn([(404, {"errcode": "M_UNRECOGNIZED"}), (200, {"rtc_transports": []})])
    assert await rest.rtc_transports(older) == []  # type: ignore[arg-type]
    assert [p for _, p, _ in older.asked] == list(rest.TRANSPORTS_PATHS)
    neither = StandIn([(404, {}), (405, {})])
    assert await rest.rtc_transports(neither) == []  # type: ignore[arg-type]
