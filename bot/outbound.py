"""The one policy for every URL the bot fetches that someone else chose.

A room member chooses the focus (JWT service) URL of a call, a user chooses what ``!play``
fetches, a homeserver chooses what its ``.well-known`` and ``/rtc/transports`` advertise, and
every server chooses where it redirects. Without a policy each of these makes the bot a proxy
into the network it runs in (the metadata service, a database on loopback) and a port scanner.

The rules:

- http and https only, no ``user:password@``;
- the address a host name resolves to is checked when the connection is made (the resolver
  of the connection checks it, so a name that answers a public address to a first look-up
  and a private one later gains nothing), and again for every redirect hop;
- loopback, private, link-local (the cloud metadata address 169.254.169.254 among them),
  shared, multicast and reserved addresses are refused unless ``[outbound] allow`` names
  the network or the host name; the IPv4 address inside IPv4-mapped, 6to4, Teredo and NAT64
  IPv6 addresses counts as well;
- the origins (scheme, host, port) the operator wrote in the config (the homeserver,
  ``rtc.livekit_service_url``, ``outbound.openid_services``) are the operator's choice and
  are allowed wherever they point; a redirect away from them is checked like any other URL;
- times and response sizes are bounded.

Error messages name the host only: never the path, the query, user info, the resolved
address, or anything the server answered.

The process has one policy, built from the config by ``CallBot`` (``configure``); code that
fetches asks ``current()``. Until configured it is the strictest one.
"""

from __future__ import annotations

import ipaddress
import socket
import ssl
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from bot.errors import CallbotError

if TYPE_CHECKING:
    import aiohttp
    from aiohttp.abc import ResolveResult

    from bot.config import Config

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

DEFAULT_PORTS = {"http": 80, "https": 443}
#: The most a JSON answer (a JWT service, .well-known) may be: they are a few hundred bytes.
MAX_RESPONSE_BYTES = 1024 * 1024
MAX_REDIRECTS = 5
#: 64:ff9b::/96 (RFC 6052) carries an IPv4 address in its last 32 bits.
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


class OutboundError(CallbotError):
    """A URL the policy refuses, or a fetch that failed; the message names the host only
    and is fit to show in a room."""

    def __init__(self, message: str, host: str = "") -> None:
        super().__init__(message)
        self.host = host


class Unreachable(OutboundError):
    """No connection could be made to an allowed address; ``reason``: "refused",
    "timed out" or "" (for callers that may say so: the music plugin)."""

    def __init__(self, message: str, host: str = "", reason: str = "") -> None:
        super().__init__(message, host)
        self.reason = reason


@dataclass(frozen=True)
class CheckedUrl:
    """A URL that passed the syntax checks; ``trusted``: an origin the operator configured."""

    url: str
    scheme: str
    host: str  # lower case, IPv6 without brackets
    port: int
    trusted: bool

    @property
    def origin(self) -> tuple[str, str, int]:
        return (self.scheme, self.host, self.port)

    @property
    def display(self) -> str:
        return display_host(self.url)


@dataclass(frozen=True)
class OutboundPolicy:
    #: Networks whose addresses may be contacted although they are not global.
    allow_networks: tuple[IPNetwork, ...] = ()
    #: Host names that may resolve to such addresses: exact, or "*.example.org".
    allow_hosts: tuple[str, ...] = ()
    #: (scheme, host, port) the operator wrote in the config: allowed wherever they point.
    trusted_origins: frozenset[tuple[str, str, int]] = frozenset()
    #: JWT service base URLs (normalized) the bot's OpenID token may go to, besides those
    #: its own homeserver advertises.
    openid_services: tuple[str, ...] = ()
    #: Send the OpenID token to any JWT service a call uses.
    openid_any_service: bool = False
    #: Send it to a member's JWT service on that member's own homeserver's domain.
    openid_member_homeservers: bool = True
    #: Every address allowed (the music plugin's allow_private_urls).
    allow_private: bool = False
    timeout_s: float = 20.0
    max_response_bytes: int = MAX_RESPONSE_BYTES
    max_redirects: int = MAX_REDIRECTS

    @classmethod
    def from_config(cls, config: Config) -> OutboundPolicy:
        out = config.outbound
        networks, hosts = parse_allow(out.allow)
        configured = [config.matrix.homeserver, f"https://{config.matrix.server_name}"]
        openid = [*out.openid_services]
        if config.rtc.livekit_service_url:
            openid.append(config.rtc.livekit_service_url)
        origins = {o for u in (*configured, *openid) if (o := _origin(u)) is not None}
        return cls(
            allow_networks=networks,
            allow_hosts=hosts,
            trusted_origins=frozenset(origins),
            openid_services=tuple(dict.fromkeys(s for u in openid if (s := service_key(u)))),
            openid_any_service=out.openid_any_service,
            openid_member_homeservers=out.openid_member_homeservers,
            timeout_s=out.timeout_s,
            max_response_bytes=out.max_response_bytes,
        )

    def allowing_private(self) -> OutboundPolicy:
        return replace(self, allow_private=True)

    # ------------------------------------------------------------------ checks

    def check_url(self, url: str) -> CheckedUrl:
        """The URL's parts if its form is allowed (scheme, no user info, a host; an address
        written as a literal is checked here, a name when it is resolved)."""
        shown = display_host(url)
        try:
            parts = urlsplit(url)
            port = parts.port
            host = parts.hostname
        except (ValueError, TypeError):
            raise OutboundError(f"{shown} is not a valid URL", shown) from None
        scheme = parts.scheme.lower()
        if scheme not in DEFAULT_PORTS:
            what = f"{scheme[:20]}://" if scheme.isascii() and scheme.isalnum() else "this"
            raise OutboundError(f"only http and https URLs are fetched, not {what}", shown)
        if "@" in parts.netloc:
            raise OutboundError(f"URLs with a user name or password are refused ({shown})", shown)
        if not host or any(c.isspace() or ord(c) < 32 for c in url):
            raise OutboundError(f"{shown} is not a valid URL", shown)
        checked = CheckedUrl(
            url=url,
            scheme=scheme,
            host=host.lower().rstrip("."),
            port=port or DEFAULT_PORTS[scheme],
            trusted=False,
        )
        checked = replace(checked, trusted=checked.origin in self.trusted_origins)
        if not checked.trusted:
            literal = _literal_address(checked.host)
            if literal is not None:
                self.check_address(checked.host, literal)
        return checked

    def host_allowed(self, host: str) -> bool:
        host = host.lower().rstrip(".")
        return self.allow_private or any(
            host == h or (h.startswith("*.") and host.endswith(h[1:])) for h in self.allow_hosts
        )

    def check_address(self, host: str, address: str | IPAddress) -> None:
        """Raise OutboundError if ``host``'s resolved ``address`` may not be contacted."""
        if self.host_allowed(host):
            return
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            raise OutboundError(f"{show_host(host)} has an unusable address", host) from None
        if any(ip in net for net in self.allow_networks):
            return
        if (kind := refusal(ip)) is not None:
            raise OutboundError(
                f"{show_host(host)} is an address inside a private network ({kind}); "
                "I do not connect there",
                host,
            )

    def check_addresses(self, host: str, addresses: Iterable[str]) -> list[str]:
        """The addresses that may be contacted; OutboundError if none may."""
        allowed, first_error = [], None
        for a in addresses:
            try:
                self.check_address(host, a)
                allowed.append(a)
            except OutboundError as e:
                first_error = first_error or e
        if not allowed:
            raise first_error or OutboundError(f"{show_host(host)} could not be found", host)
        return allowed

    def trusts_openid(
        self, service_url: str, advertised: Iterable[str] = (), member_server: str | None = None
    ) -> bool:
        """May the bot's OpenID token go to this JWT service? ``advertised``: the services
        the bot's own homeserver names (rtc/transports, .well-known); ``member_server``: the
        homeserver of the member who publishes there (multi-SFU)."""
        if self.openid_any_service:
            return True
        key = service_key(service_url)
        if key is None:
            return False
        if key in {*self.openid_services, *map(service_key, advertised)}:
            return True
        return (
            member_server is not None
            and self.openid_member_homeservers
            and _within(urlsplit(service_url).hostname or "", member_server)
        )


def _within(host: str, server_name: str) -> bool:
    """Is ``host`` the host of ``server_name`` (which may carry a port) or a subdomain of it?"""
    server_host = urlsplit(f"https://{server_name}").hostname or ""
    host, server_host = host.lower().rstrip("."), server_host.lower().rstrip(".")
    return bool(server_host) and (host == server_host or host.endswith("." + server_host))


def refusal(ip: IPAddress) -> str | None:
    """Why ``ip`` is not a public address (a word for the room), or None if it is."""
    if isinstance(ip, ipaddress.IPv6Address):
        inner = ip.ipv4_mapped or ip.sixtofour or (ip.teredo[1] if ip.teredo else None)
        if inner is None and ip in _NAT64:
            inner = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if inner is not None:
            return refusal(inner)
    if ip.is_loopback:
        return "loopback"
    if ip.is_link_local:
        return "link-local"
    if ip.is_unspecified:
        return "unspecified"
    if ip.is_multicast:
        return "multicast"
    if ip.is_private or not ip.is_global or ip.is_reserved:
        return "private"
    return None


def _literal_address(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def parse_allow(entries: Iterable[str]) -> tuple[tuple[IPNetwork, ...], tuple[str, ...]]:
    """``[outbound] allow``: networks ("10.0.0.0/8", "127.0.0.1", "fd00::/8") and host names
    ("jwt.lan", "*.lan"). ValueError names a bad entry."""
    networks: list[IPNetwork] = []
    hosts: list[str] = []
    for entry in entries:
        text = entry.strip()
        try:
            networks.append(ipaddress.ip_network(text, strict=False))
            continue
        except ValueError:
            pass
        name = text.lower().rstrip(".")
        label = name.removeprefix("*.")
        if not label or not all(
            part and part.replace("-", "").isalnum() for part in label.split(".")
        ):
            raise ValueError(f"{entry!r} is neither a network (CIDR) nor a host name")
        hosts.append(name)
    return tuple(networks), tuple(hosts)


def _origin(url: str) -> tuple[str, str, int] | None:
    try:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in DEFAULT_PORTS or not parts.hostname:
            return None
        return (scheme, parts.hostname.lower().rstrip("."), parts.port or DEFAULT_PORTS[scheme])
    except ValueError:
        return None


def service_key(url: str) -> str | None:
    """A JWT service URL in one spelling (for comparing): scheme://host:port/path."""
    origin = _origin(url)
    if origin is None:
        return None
    scheme, host, port = origin
    host = f"[{host}]" if ":" in host else host
    return f"{scheme}://{host}:{port}{urlsplit(url).path.rstrip('/')}"


def display_host(url: str) -> str:
    """The host (and port) of ``url`` for messages: never user info, path or query."""
    try:
        parts = urlsplit(url if "//" in url else f"//{url}")
        host = parts.hostname or "?"
        port = parts.port
    except (ValueError, TypeError):
        return "an invalid URL"
    host = show_host(host)
    return f"{host}:{port}" if port else host


def show_host(host: str) -> str:
    """A bare host name or address for messages (IPv6 in brackets, printable, short)."""
    host = "".join(c for c in host if c.isprintable() and not c.isspace())[:100] or "?"
    return f"[{host}]" if ":" in host else host


def display_origin(url: str) -> str:
    """``scheme://host:port`` of ``url`` for messages (never user info, path or query)."""
    scheme = url.partition("://")[0].lower() if "://" in url else ""
    host = display_host(url)
    return f"{scheme}://{host}" if scheme in DEFAULT_PORTS else host


# --------------------------------------------------------------------------- the policy in use

_current = OutboundPolicy()


def configure(policy: OutboundPolicy) -> None:
    """Make ``policy`` the process's policy (``CallBot`` does, from ``[outbound]``)."""
    global _current
    _current = policy


def current() -> OutboundPolicy:
    return _current


# --------------------------------------------------------------------------- asyncio (aiohttp)


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes = field(repr=False)
    url: str

    def json(self) -> Any:
        import json

        return json.loads(self.body)


class _CheckingResolver:
    """An aiohttp resolver that hands the connector only addresses the policy allows: the
    connection is made to exactly what was checked (no second look-up to rebind)."""

    def __init__(self, policy: OutboundPolicy, trusted: bool) -> None:
        import aiohttp

        self.policy, self.trusted = policy, trusted
        self._inner = aiohttp.ThreadedResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        if self.trusted:
            return results
        allowed = set(self.policy.check_addresses(host, [r["host"] for r in results]))
        return [r for r in results if r["host"] in allowed]

    async def close(self) -> None:
        await self._inner.close()


async def fetch(
    method: str,
    url: str,
    *,
    json: Any = None,
    headers: Mapping[str, str] | None = None,
    policy: OutboundPolicy | None = None,
) -> Response:
    """One request under the policy, following redirects (each hop checked; a POST is not
    re-sent to another origin). Raises OutboundError naming the host only."""
    import aiohttp

    policy = policy or current()
    timeout = aiohttp.ClientTimeout(total=policy.timeout_s)
    first = policy.check_url(url)
    checked = first
    for _ in range(policy.max_redirects + 1):
        connector = aiohttp.TCPConnector(
            resolver=_CheckingResolver(policy, checked.trusted),  # type: ignore[arg-type]
            use_dns_cache=False,
            force_close=True,
        )
        try:
            async with (
                aiohttp.ClientSession(
                    connector=connector, timeout=timeout, trust_env=False
                ) as http,
                http.request(
                    method, checked.url, json=json, headers=headers, allow_redirects=False
                ) as resp,
            ):
                location = resp.headers.get("Location")
                if resp.status in (301, 302, 303, 307, 308) and location:
                    target = str(resp.url.join(_yarl(location)))
                else:
                    body = await _read_bounded(resp, policy.max_response_bytes, checked)
                    return Response(resp.status, body, checked.url)
        except OutboundError:
            raise
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError):
            raise OutboundError(f"{checked.display} could not be reached", checked.host) from None
        nxt = policy.check_url(target)
        if method.upper() != "GET" and nxt.origin != checked.origin:
            raise OutboundError(f"{checked.display} redirected elsewhere", checked.host)
        checked = nxt
    raise OutboundError(f"{first.display} redirected too often", first.host)


def _yarl(location: str) -> Any:
    from yarl import URL

    return URL(location)


async def _read_bounded(resp: aiohttp.ClientResponse, limit: int, checked: CheckedUrl) -> bytes:
    chunks, total = [], 0
    async for chunk in resp.content.iter_chunked(65536):
        total += len(chunk)
        if total > limit:
            raise OutboundError(f"{checked.display} answered more than {limit} bytes", checked.host)
        chunks.append(chunk)
    return b"".join(chunks)


# --------------------------------------------------------------------------- blocking (threads)


def connect(
    checked: CheckedUrl, policy: OutboundPolicy, timeout: float
) -> socket.socket | ssl.SSLSocket:
    """A socket to ``checked``'s host, connected to an address the policy allowed (looked up
    once, here), TLS-wrapped and verified for https."""
    try:
        infos = socket.getaddrinfo(checked.host, checked.port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        raise OutboundError(f"{checked.display} could not be found", checked.host) from None
    addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    if not checked.trusted:
        addresses = policy.check_addresses(checked.host, addresses)
    sock: socket.socket | None = None
    reason = ""
    for address in addresses:
        try:
            sock = socket.create_connection((address, checked.port), timeout=timeout)
            break
        except ConnectionRefusedError:
            reason = "refused"
        except TimeoutError:
            reason = "timed out"
        except OSError:
            continue
    if sock is None:
        raise Unreachable(f"{checked.display} could not be reached", checked.host, reason)
    if checked.scheme == "https":
        try:
            context = ssl.create_default_context()
            return context.wrap_socket(sock, server_hostname=checked.host)
        except (OSError, ssl.SSLError):
            sock.close()
            raise OutboundError(
                f"{checked.display} could not be reached securely (TLS)", checked.host
            ) from None
    return sock
