"""The outbound-URL policy (bot.outbound): what may be fetched of URLs others chose, checked
when the connection is made and at every redirect; real HTTP servers on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import re
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from aiohttp import web

from bot import outbound
from bot.config import parse_config
from bot.errors import CallbotError, ConfigError
from bot.outbound import OutboundError, OutboundPolicy, display_host, refusal, service_key
from bot.rtc.focus import check_transport
from plugins.music.config import MusicConfig
from plugins.music.decoder import Decoder, Failed, Opened
from plugins.music.plugin import MusicPlayer
from plugins.music.remote import RemoteFile
from plugins.music.sources import SourceError, SourcePolicy, check_address, classify
from tests.music_files import write_tones

STRICT = OutboundPolicy()
PUBLIC = "93.184.216.34"


class Listener:
    """An HTTP server on loopback that records every request it gets."""

    def __init__(self) -> None:
        self.requests: list[str] = []
        self.base = ""
        self.port = 0


@contextlib.asynccontextmanager
async def listener(routes: dict[str, web.StreamResponse | bytes | Path]) -> AsyncIterator[Listener]:
    seen = Listener()
    app = web.Application()

    async def handle(request: web.Request) -> web.StreamResponse:
        seen.requests.append(f"{request.method} {request.path_qs}")
        answer = routes.get(request.path)
        if isinstance(answer, Path):
            return web.FileResponse(answer)  # serves ranges
        if isinstance(answer, bytes):
            return web.Response(body=answer)
        if answer is None:
            raise web.HTTPNotFound()
        return answer

    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    seen.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    seen.base = f"http://127.0.0.1:{seen.port}"
    try:
        yield seen
    finally:
        await runner.cleanup()


@pytest.fixture
def policy_in_use() -> Iterator[None]:
    """Tests that set the process's policy put the previous one back."""
    saved = outbound.current()
    yield
    outbound.configure(saved)


class Lookups(list):
    #: how many look-ups get the public address before loopback comes
    public = 1


@pytest.fixture
def rebinding(monkeypatch: pytest.MonkeyPatch) -> Lookups:
    """``rebind.test`` answers a public address to the first look-up(s), loopback to later
    ones (a DNS rebinding attack); the list of addresses it answered."""
    real = socket.getaddrinfo
    lookups = Lookups()

    def fake(host, port, *args, **kwargs):
        if host != "rebind.test":
            return real(host, port, *args, **kwargs)
        address = PUBLIC if len(lookups) < lookups.public else "127.0.0.1"
        lookups.append(address)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, int(port or 0)))]

    monkeypatch.setattr(socket, "getaddrinfo", fake)
    return lookups


# --------------------------------------------------------------------------- URLs and addresses


def test_only_http_and_https_without_user_info() -> None:
    assert STRICT.check_url("https://sfu.example.org/x?y").host == "sfu.example.org"
    for url, words in [
        ("ftp://example.org/x", "only http and https URLs are fetched, not ftp://"),
        ("file:///etc/passwd", "not file://"),
        ("gopher://127.0.0.1:6379/_SET", "not gopher://"),
        ("http://user:pw@example.org/", "user name or password are refused (example.org)"),
        ("http://user@example.org/", "user name or password"),
        ("http://[::1/", "not a valid URL"),
        ("http:///nohost", "not a valid URL"),
        ("http://exa mple.org/", "not a valid URL"),
        ("http://example.org:99999/", "not a valid URL"),
    ]:
        with pytest.raises(OutboundError, match=re.escape(words)) as e:
            STRICT.check_url(url)
        assert "pw" not in str(e.value) and isinstance(e.value, CallbotError)


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "127.8.9.10",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",  # the cloud metadata service
        "100.100.100.200",  # Alibaba's, in shared address space
        "0.0.0.0",  # noqa: S104
        "224.0.0.1",
        "255.255.255.255",
        "::1",
        "::",
        "fe80::1",
        "fd00:ec2::254",  # AWS's IPv6 metadata service
        "::ffff:127.0.0.1",
        "::ffff:169.254.169.254",
        "64:ff9b::7f00:1",
        "2002:7f00:1::",  # 6to4 of 127.0.0.1
        "2001:0:4136:e378:8000:63bf:80ff:fffe",  # Teredo of 127.0.0.1
    ],
)
def test_non_public_addresses_are_refused(address: str) -> None:
    url = f"http://[{address}]:8080/x" if ":" in address else f"http://{address}:8080/x"
    with pytest.raises(OutboundError, match="inside a private network") as e:
        STRICT.check_url(url)
    assert "/x" not in str(e.value)
    with pytest.raises(OutboundError, match="inside a private network"):
        STRICT.check_addresses("some.name", [address])
    assert STRICT.allowing_private().check_url(url).host


def test_public_addresses_pass() -> None:
    for address in (PUBLIC, "8.8.8.8", "2606:4700:4700::1111", "::ffff:8.8.8.8"):
        assert refusal(ipaddress.ip_address(address)) is None
        STRICT.check_addresses("x.example", [address])


def test_allowed_networks_and_host_names() -> None:
    networks, hosts = outbound.parse_allow(["10.213.0.0/24", "::1", "sfu.lan", "*.corp.example"])
    policy = OutboundPolicy(allow_networks=networks, allow_hosts=hosts)
    policy.check_url("http://10.213.0.1:7880/")
    policy.check_url("http://[::1]:7880/")
    policy.check_addresses("sfu.lan", ["192.168.7.7"])
    policy.check_addresses("jwt.corp.example", ["10.9.9.9"])
    for url in ("http://10.213.1.1/", "http://127.0.0.1/", "http://169.254.169.254/"):
        with pytest.raises(OutboundError):
            policy.check_url(url)
    with pytest.raises(OutboundError):
        policy.check_addresses("corp.example.evil", ["10.9.9.9"])
    with pytest.raises(ValueError, match="neither a network"):
        outbound.parse_allow(["not a host!"])


def test_the_operators_own_urls_are_allowed_exactly(tmp_path: Path) -> None:
    config = parse_config(
        {
            "matrix": {"homeserver": "http://127.0.0.1:8008", "user_id": "@b:x", "password": "p"},
            "bot": {"data_dir": str(tmp_path)},
            "rtc": {"livekit_service_url": "http://10.213.0.1:7880/jwt"},
            "outbound": {"openid_services": ["https://jwt.partner.example/"]},
        },
        base_dir=tmp_path,
        environ={},
    )
    policy = OutboundPolicy.from_config(config)
    assert policy.check_url("http://127.0.0.1:8008/_matrix").trusted
    assert policy.check_url("http://10.213.0.1:7880/jwt/sfu/get").trusted
    # The same host on another port (a database on loopback) is not the operator's choice.
    for url in ("http://127.0.0.1:6379/", "http://10.213.0.1:22/", "https://127.0.0.1:8008/"):
        with pytest.raises(OutboundError, match="private network"):
            policy.check_url(url)
    assert policy.trusts_openid("http://10.213.0.1:7880/jwt/")
    assert policy.trusts_openid("https://JWT.partner.example:443")
    assert not policy.trusts_openid("http://10.213.0.1:7880/evil")
    assert policy.trusts_openid("https://jwt.other.example", ["https://jwt.other.example/"])
    assert OutboundPolicy(openid_any_service=True).trusts_openid("https://anything.example")


def test_outbound_config_problems_name_the_key_and_no_password(tmp_path: Path) -> None:
    raw = {
        "matrix": {"homeserver": "https://m.example", "user_id": "@b:x", "password": "p"},
        "bot": {"data_dir": str(tmp_path)},
        "outbound": {
            "allow": ["10.0.0.0/8", "bad host!"],
            "openid_services": ["https://u:hunter2@jwt.example"],
            "openid_any_servise": True,
        },
    }
    with pytest.raises(ConfigError) as e:
        parse_config(raw, base_dir=tmp_path, environ={})
    problems = e.value.problems
    assert any(p.startswith("outbound.allow: entries must be networks") for p in problems)
    assert any(
        p.startswith("outbound.openid_services: must not hold a user name") for p in problems
    )
    assert any("did you mean 'openid_any_service'" in p for p in problems)
    assert "hunter2" not in str(e.value)


def test_messages_show_the_host_only() -> None:
    assert display_host("http://user:pw@127.0.0.1:9/evil?token=x") == "127.0.0.1:9"
    assert display_host("https://[::1]/x") == "[::1]"
    assert display_host("http://[::1") == "an invalid URL"
    assert service_key("HTTP://Jwt.Example:80/a/") == "http://jwt.example:80/a"


# --------------------------------------------------------------------------- asyncio fetches


async def test_redirects_are_checked_at_every_hop() -> None:
    async with listener({"/inside": b"secret"}) as inside:
        hop = web.Response(status=302, headers={"Location": f"{inside.base}/inside"})
        async with listener({"/start": hop}) as first:
            policy = OutboundPolicy(allow_hosts=("localhost",))
            with pytest.raises(OutboundError, match=r"127\.0\.0\.1.* private network") as e:
                await outbound.fetch("GET", f"http://localhost:{first.port}/start", policy=policy)
            assert "secret" not in str(e.value) and "/inside" not in str(e.value)
            assert first.requests == ["GET /start"]
    assert inside.requests == []


async def test_a_name_that_rebinds_after_the_check_is_refused_at_connect(
    rebinding: Lookups,
) -> None:
    async with listener({"/sfu/get": b"{}"}) as target:
        url = f"http://rebind.test:{target.port}"
        policy = OutboundPolicy(openid_services=(service_key(url) or "",))
        # The first look sees a public address ...
        await check_transport(None, {"type": "livekit", "livekit_service_url": url}, policy)  # type: ignore[arg-type]
        # ... the connection's own look-up sees loopback, and is refused before connecting.
        with pytest.raises(OutboundError, match=r"rebind\.test is an address inside a private"):
            await outbound.fetch("POST", f"{url}/sfu/get", json={"x": 1}, policy=policy)
        assert rebinding == [PUBLIC, "127.0.0.1"]
    assert target.requests == []


async def test_answers_are_bounded_and_post_is_not_redirected_elsewhere() -> None:
    policy = OutboundPolicy(allow_networks=(ipaddress.ip_network("127.0.0.1"),))
    async with listener({"/big": b"x" * 2_000_000, "/small": b'{"a": 1}'}) as big:
        with pytest.raises(OutboundError, match="answered more than 1048576 bytes"):
            await outbound.fetch("GET", f"{big.base}/big", policy=policy)
        assert (await outbound.fetch("GET", f"{big.base}/small", policy=policy)).json() == {"a": 1}
        away = web.Response(status=307, headers={"Location": f"http://localhost:{big.port}/small"})
        async with listener({"/post": away}) as post:
            with pytest.raises(OutboundError, match="redirected elsewhere"):
                await outbound.fetch("POST", f"{post.base}/post", json={}, policy=policy)
    assert "POST /small" not in big.requests


# --------------------------------------------------------------------------- the music plugin


async def test_music_redirect_to_loopback_is_refused(policy_in_use: None, tmp_path: Path) -> None:
    """`!play` of a URL its config allows, which redirects to loopback: refused, in words,
    and the loopback server is never asked (FFmpeg used to follow the redirect)."""
    tone = write_tones(tmp_path / "t.flac", [(440, 1.0)])
    outbound.configure(OutboundPolicy(allow_hosts=("localhost",)))
    async with listener({"/t.flac": tone}) as inside:
        hop = web.Response(status=302, headers={"Location": f"{inside.base}/t.flac"})
        async with listener({"/song.flac": hop}) as first:
            from bot.testing import FakeCall, PluginHarness
            from tests.test_music_plugin import Replies, until

            call = FakeCall()
            plugin = MusicPlayer(MusicConfig(network_timeout_s=5))
            h = PluginHarness(plugin, call)
            await h.start()
            url = f"http://localhost:{first.port}/song.flac"
            await plugin.play(Replies().ctx(), url)
            await until(lambda: any(p.startswith("⚠") for p in call.posts))
            (warning,) = [p for p in call.posts if p.startswith("⚠")]
            assert warning == (
                f"⚠ Could not play {url}: 127.0.0.1 is an address inside a "
                "private network (loopback); I do not connect there (outbound.allow, "
                "plugins.music.allow_private_urls). Skipping it."
            )
            assert first.requests == ["GET /song.flac"]
            await h.end()
    assert inside.requests == []


async def test_music_refuses_a_name_that_rebinds(rebinding: Lookups) -> None:
    rebinding.public = 2  # !play's first look, and prepare's; then the connection's
    async with listener({"/x.mp3": b"ID3"}) as target:
        policy = SourcePolicy(None, timeout_s=5, outbound=STRICT)
        url = f"http://rebind.test:{target.port}/x.mp3"
        check_address(url, policy)  # the first look: public
        items = await asyncio.to_thread(_drain, Decoder(classify(url, policy), policy).start())
        assert items == [
            Failed(
                "rebind.test is an address inside a private network (loopback); I do not "
                "connect there (outbound.allow, plugins.music.allow_private_urls)"
            )
        ]
        assert rebinding == [PUBLIC, PUBLIC, "127.0.0.1"]
    assert target.requests == []


async def test_music_urls_with_user_info_are_refused() -> None:
    with pytest.raises(SourceError, match="user name or password are refused") as e:
        check_address("http://dj:hunter2@radio.example/live", SourcePolicy(None, outbound=STRICT))
    assert "hunter2" not in str(e.value)


async def test_music_seeks_by_range_requests(tmp_path: Path) -> None:
    tone = write_tones(tmp_path / "t.flac", [(440, 4.0)])
    policy = SourcePolicy(None, allow_private_urls=True, timeout_s=5, outbound=STRICT)
    async with listener({"/t.flac": tone}) as server:
        url = f"{server.base}/t.flac"
        f = await asyncio.to_thread(RemoteFile, url, policy.network())
        assert f.seekable() and f.length == tone.stat().st_size
        await asyncio.to_thread(f.seek, 100)
        assert await asyncio.to_thread(f.read, 4) == tone.read_bytes()[100:104]
        f.close()
        items = await asyncio.to_thread(
            _drain, Decoder(classify(url, policy), policy, start=3.0).start()
        )
        assert isinstance(items[0], Opened) and items[0].duration == 4.0
        assert 45 <= len(items) - 2 <= 55  # 1 s of 20 ms frames after the seek


def _drain(decoder: Decoder) -> list:
    items = []
    while True:
        item = decoder.get(timeout=10)
        items.append(item)
        if item is None or isinstance(item, Failed):
            return items
