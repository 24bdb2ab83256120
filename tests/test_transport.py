"""LiveKit transports in their forms (bot.rtc.transport), and discovery on a real Synapse."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given, settings

from bot.matrix import rest
from bot.rtc import transport
from bot.rtc.focus import own_transports
from tests.conftest import peer
from tests.fixtures import fixture
from tests.strategies import json_values
from tests.synapse import Synapse

JS_FORM = {"type": "livekit", "livekit_service_url": "https://rtc.example.org/livekit/jwt"}


def test_both_forms_read_as_the_js_form() -> None:
    (synapse_form,) = fixture("transports", "synapse_rtc_transports")["answer"]["rtc_transports"]
    spec, both, mesh = fixture("transports", "msc4195_rtc_transports")["answer"]["rtc_transports"]
    assert transport.normalize(synapse_form) == JS_FORM
    assert transport.normalize(spec) == JS_FORM  # js would not read "url": it is dropped
    assert transport.normalize(both) == JS_FORM
    assert transport.normalize(mesh) == mesh and not transport.is_livekit(mesh)
    aliased = {**spec, "livekit_alias": "!r:x"}
    assert transport.normalize(aliased) == {**JS_FORM, "livekit_alias": "!r:x"}
    assert transport.service_url({"type": "m.livekit", "url": ""}) is None
    assert transport.service_url({"type": "livekit", "url": 3}) is None


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_never_raises(value) -> None:
    if isinstance(value, dict):
        out = transport.normalize(value)
        assert transport.normalize(out) == out  # idempotent
        for kind in ("livekit", "m.livekit"):
            transport.normalize({**value, "type": kind})


async def test_discovery_falls_back_from_the_stable_path(synapse: Synapse, tmp_path: Path):
    """Synapse 1.163 serves only the unstable MSC4143 path: the stable MSC4519 one is asked
    first, answered 404, and the unstable one gives the transport."""
    async with peer(synapse, tmp_path, "disco") as p:
        try:
            await rest.request(p.client, "GET", rest.TRANSPORTS_PATHS[0])
        except rest.MatrixHttpError as e:
            assert e.status in (400, 404, 405)
        else:
            raise AssertionError("this Synapse serves the stable path: update the test")
        found = await own_transports(p.client)
        assert found and found[0]["type"] == "livekit"
        assert found[0]["livekit_service_url"].startswith("http://127.0.0.1:")
