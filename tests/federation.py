"""Two real Synapses that federate with each other, each with its own dev SFU and JWT service,
inside the test network namespace (scripts/netns-run.sh).

Homeserver A is ``10.213.0.1:8448`` and B is ``10.213.0.2:8448``: IP literals with a port,
which the spec's server name resolution connects to directly (no .well-known, no SRV).
Federation is HTTPS with certificates of a CA made at run time (IP SANs); each Synapse trusts
only that CA, lets only the other's name through ``federation_domain_whitelist`` and blocks
every outgoing address but the two homeservers'. The client API stays on plain HTTP at
127.0.0.1 (``Homeserver.url``), as for the single-homeserver tests.

Each Synapse's ``/rtc/transports`` advertises its own JWT service, ``http://<address>:7880``;
the ``two_sfus`` fixture starts a :class:`DevSfu` there for each homeserver, checking its own
users' OpenID tokens at its Synapse and other users' at their homeserver's federation API
(over the test CA's TLS), and giving full tokens to its own users only.

Fixtures (registered in tests/conftest.py): ``federation_ca``, ``two_homeservers`` (session scope:
starting two Synapses costs seconds) and ``two_sfus`` (per test).
"""

from __future__ import annotations

import contextlib
import ipaddress
import time
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest

from bot.devsfu.server import DevSfu
from tests.synapse import Account, Synapse
from tests.testca import TestCa, write_signing_key

FEDERATION_PORT = 8448
SFU_PORT = 7880


@dataclass
class Homeserver:
    """One homeserver of the pair: its Synapse, Matrix server name and JWT service URL."""

    synapse: Synapse
    address: str  # the veth address its federation listener and its SFU are bound to
    server_name: str  # "10.213.0.1:8448": in every user ID, e.g. "@alice1:10.213.0.1:8448"
    ca: TestCa

    @property
    def url(self) -> str:
        """The client-server API base URL (plain HTTP on loopback)."""
        return self.synapse.url

    @property
    def federation_url(self) -> str:
        return f"https://{self.server_name}"

    @property
    def jwt_url(self) -> str:
        """The JWT service this homeserver's ``/rtc/transports`` advertises."""
        return f"http://{self.address}:{SFU_PORT}"

    @property
    def transport(self) -> dict[str, str]:
        """This homeserver's MatrixRTC transport, as ``/rtc/transports`` lists it."""
        return {"type": "livekit", "livekit_service_url": self.jwt_url}

    def register(self, prefix: str = "user", admin: bool = False) -> Account:
        return self.synapse.register(prefix, admin)

    def make_sfu(self, **kwargs: Any) -> DevSfu:
        """A dev SFU + JWT service for this homeserver (not started; see :meth:`start_sfu`).

        Without room auto-creation by default, as lk-jwt-service's README asks of LiveKit: a
        room exists once one of this homeserver's users got a token for it (or for 20 s after
        its last participant left), and remote users can only join it then.
        """
        kwargs.setdefault("auto_create", False)
        return DevSfu(
            homeserver=self.url,
            server_name=self.server_name,
            federation_ca=self.ca.cert_path,
            **kwargs,
        )

    async def start_sfu(self, **kwargs: Any) -> DevSfu:
        """A started one, on the address and port that ``/rtc/transports`` advertises (so a
        test can stop it and start a new one there, as an SFU restart)."""
        sfu = self.make_sfu(**kwargs)
        await sfu.start(self.address, SFU_PORT)
        return sfu


async def openid_token(hs: Homeserver, account: Account) -> dict[str, Any]:
    """A fresh OpenID token of ``account`` (as Element Call requests one), from a new login."""
    login = {
        "type": "m.login.password",
        "identifier": {"type": "m.id.user", "user": account.localpart},
        "password": account.password,
    }
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{hs.url}/_matrix/client/v3/login", json=login) as resp:
            assert resp.status == 200, await resp.text()
            session = await resp.json()
        url = f"{hs.url}/_matrix/client/v3/user/{quote(account.user_id)}/openid/request_token"
        headers = {"Authorization": f"Bearer {session['access_token']}"}
        async with http.post(url, json={}, headers=headers) as resp:
            assert resp.status == 200, await resp.text()
            return await resp.json()


async def sfu_get(
    jwt_url: str, token: dict[str, Any], room_id: str, device_id: str
) -> tuple[str, str]:
    """LiveKit URL and token from a JWT service's legacy ``/sfu/get`` (identity
    ``{user}:{device_id}``, what Element Call's compatibility mode uses), for ``device_id``:
    the service takes the device from the request, so a js peer's works with any login's
    OpenID token."""
    body = {"room": room_id, "openid_token": token, "device_id": device_id}
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{jwt_url}/sfu/get", json=body) as resp,
    ):
        answer = await resp.json()
        assert resp.status == 200, answer
        return answer["url"], answer["jwt"]


def federation_config(
    synapse: Synapse, address: str, server_name: str, peers: list[str], ca: TestCa
) -> dict[str, Any]:
    """The homeserver.yaml keys that replace bot.demo.synapse's for a federating Synapse."""
    cert = ca.issue(address)
    client_listener = {
        "port": synapse.port,
        "bind_addresses": ["127.0.0.1"],
        "type": "http",
        "tls": False,
        "x_forwarded": False,
        # federation here too: the JWT service checks its own users' OpenID tokens there
        "resources": [{"names": ["client", "federation"], "compress": False}],
    }
    federation_listener = {
        "port": FEDERATION_PORT,
        "bind_addresses": [address],
        "type": "http",
        "tls": True,
        "x_forwarded": False,
        "resources": [{"names": ["federation"], "compress": False}],  # includes /_matrix/key
    }
    return {
        "server_name": server_name,
        "listeners": [client_listener, federation_listener],
        "tls_certificate_path": str(cert.cert_path),
        "tls_private_key_path": str(cert.key_path),
        # Outgoing federation trusts the test CA only (Synapse then ignores the system's).
        "federation_verify_certificates": True,
        "federation_custom_ca_list": [str(ca.cert_path)],
        "federation_domain_whitelist": [server_name, *peers],
        # Synapse refuses private addresses for outgoing requests by default (10/8, 127/8).
        # Block every address but the two homeservers': its allow list alone is not enough,
        # as 1.163 checks IP-literal server names against the block list only (the
        # BlocklistingAgentWrapper of MatrixFederationHttpClient gets no allow list).
        "ip_range_blacklist": block_all_but([address, *[p.split(":")[0] for p in peers]]),
        "ip_range_whitelist": [address, *[p.split(":")[0] for p in peers]],
        # A request that fails while the other Synapse is busy (a loaded 2-core machine) would
        # otherwise stop federation with it for 10 minutes.
        "federation": {
            "destination_min_retry_interval": "1s",
            "destination_max_retry_interval": "5s",
        },
        "matrix_rtc": {
            "transports": [
                {"type": "livekit", "livekit_service_url": f"http://{address}:{SFU_PORT}"}
            ]
        },
    }


def block_all_but(allowed: list[str]) -> list[str]:
    """CIDR ranges covering every IPv4 and IPv6 address except ``allowed`` (IPv4 ones)."""
    ranges = [ipaddress.IPv4Network("0.0.0.0/0")]
    for address in allowed:
        host = ipaddress.IPv4Network(address)
        ranges = [
            part
            for net in ranges
            for part in (net.address_exclude(host) if host.subnet_of(net) else [net])
        ]
    return [str(net) for net in sorted(ranges)] + ["::/0"]


@pytest.fixture(scope="session")
def federation_ca(tmp_path_factory: pytest.TempPathFactory) -> TestCa:
    return TestCa(tmp_path_factory.mktemp("test-ca"))


@contextlib.contextmanager
def federating_homeservers(
    directory: Path, addrs: tuple[str, str], ca: TestCa
) -> Iterator[tuple[Homeserver, Homeserver]]:
    """Homeservers A (first address) and B (second), federating with each other, their
    data under ``directory`` (the fixture below; bench/federated_join.py)."""
    names = [f"{a}:{FEDERATION_PORT}" for a in addrs]
    servers: list[Homeserver] = []
    for i, address in enumerate(addrs):
        synapse = Synapse(directory / f"synapse-{'ab'[i]}")
        peers = [n for n in names if n != names[i]]
        synapse.extra_config = federation_config(synapse, address, names[i], peers, ca)
        synapse.dir.mkdir(parents=True, exist_ok=True)
        write_signing_key(synapse.dir / "signing.key")
        servers.append(Homeserver(synapse, address, names[i], ca))
    started = time.monotonic()
    # Both at once: each start is mostly a Python process importing Synapse.
    with ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(s.synapse.start) for s in servers]
        errors = [f.exception() for f in futures]
    if any(errors):
        for s in servers:
            s.synapse.stop()
        raise next(e for e in errors if e is not None)
    print(f"two federating Synapses up in {time.monotonic() - started:.1f} s")
    try:
        yield servers[0], servers[1]
    finally:
        for s in servers:
            s.synapse.stop()


@pytest.fixture(scope="session")
def two_homeservers(
    tmp_path_factory: pytest.TempPathFactory, netns_addrs: tuple[str, str], federation_ca: TestCa
) -> Iterator[tuple[Homeserver, Homeserver]]:
    """Homeservers A (first veth address) and B (second), federating with each other."""
    with federating_homeservers(
        tmp_path_factory.mktemp("synapses"), netns_addrs, federation_ca
    ) as pair:
        yield pair


@pytest.fixture
async def two_sfus(
    two_homeservers: tuple[Homeserver, Homeserver],
) -> AsyncIterator[tuple[DevSfu, DevSfu]]:
    """Each homeserver's dev SFU + JWT service, where its ``/rtc/transports`` points."""
    a, b = two_homeservers
    sfu_a = await a.start_sfu()
    try:
        sfu_b = await b.start_sfu()
    except BaseException:
        await sfu_a.stop()
        raise
    yield sfu_a, sfu_b
    await sfu_b.stop()
    await sfu_a.stop()


__all__ = [
    "FEDERATION_PORT",
    "SFU_PORT",
    "Homeserver",
    "federation_config",
    "openid_token",
    "sfu_get",
]
