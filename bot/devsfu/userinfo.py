"""Whose an OpenID token is: the federation ``openid/userinfo`` of the homeserver it names.

As lk-jwt-service (``helper.go`` ``exchangeOpenIdUserInfo``: gomatrixserverlib's
``LookupUserInfo``), the token is checked at the homeserver that its ``matrix_server_name``
names, found by the spec's server name resolution and reached over verified TLS, and the user
it names must belong to that server. So a member of another homeserver is checked at *their*
homeserver. The dev service's own homeserver is reached at its configured URL instead (in the
tests and the demo that is plain HTTP on loopback, where a real deployment has a proxy).
"""

from __future__ import annotations

import ipaddress
import logging
import ssl
from dataclasses import dataclass
from typing import Any

import aiohttp

log = logging.getLogger(__name__)

TIMEOUT = aiohttp.ClientTimeout(total=10)
DEFAULT_FEDERATION_PORT = 8448
USERINFO_PATH = "/_matrix/federation/v1/openid/userinfo"


class OpenIdRefused(Exception):
    """The token was refused, or its homeserver could not be asked (the message says why;
    it never holds the token)."""


def _split(server_name: str) -> tuple[str, int | None]:
    """Host and explicit port of a server name (``host``, ``host:port``, ``[v6]:port``)."""
    if server_name.startswith("["):
        host, bracket, rest = server_name[1:].partition("]")
        sep, port = rest[:1], rest[1:]
        ok = bool(bracket) and sep in ("", ":")
    else:
        host, sep, port = server_name.partition(":")
        ok = True
    if not ok or not host or (sep and not port.isdigit()):
        raise OpenIdRefused(f"not a server name: {server_name!r}")
    return host, int(port) if port else None


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _netloc(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class FederationResolver:
    """Server name -> federation base URL, by the spec's "Resolving server names" (server-server
    API §2.1) without the SRV steps (aiohttp has no SRV lookup): an IP literal or an explicit
    port is used as it is; otherwise ``/.well-known/matrix/server`` may delegate; else 8448."""

    def __init__(self, tls: ssl.SSLContext | None) -> None:
        self.tls: ssl.SSLContext | bool = tls if tls is not None else True

    async def base_url(self, http: aiohttp.ClientSession, server_name: str) -> str:
        host, port = _split(server_name)
        if _is_ip(host) or port is not None:
            return f"https://{_netloc(host, port or DEFAULT_FEDERATION_PORT)}"
        delegated = await self._well_known(http, host)
        if delegated:
            d_host, d_port = _split(delegated)
            return f"https://{_netloc(d_host, d_port or DEFAULT_FEDERATION_PORT)}"
        return f"https://{_netloc(host, DEFAULT_FEDERATION_PORT)}"

    async def _well_known(self, http: aiohttp.ClientSession, host: str) -> str | None:
        try:
            async with http.get(
                f"https://{host}/.well-known/matrix/server", ssl=self.tls, allow_redirects=True
            ) as resp:
                if resp.status != 200:
                    return None
                body = await resp.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return None
        server = body.get("m.server") if isinstance(body, dict) else None
        return server if isinstance(server, str) and server else None


@dataclass(frozen=True)
class OpenIdVerifier:
    """Checks OpenID tokens for one dev JWT service.

    ``server_name`` is its own homeserver's name, whose users are checked at ``homeserver``
    (a base URL); any other ``matrix_server_name`` is checked over federation. Without a
    ``server_name`` (a single-homeserver setup whose name it was not told) every token is
    checked at ``homeserver``.
    """

    homeserver: str
    server_name: str | None = None
    federation_tls: ssl.SSLContext | None = None  # the CAs federation TLS must chain to

    async def user_id(self, token: dict[str, Any]) -> str:
        """The Matrix user ID the token belongs to; OpenIdRefused otherwise."""
        named = token["matrix_server_name"]
        async with aiohttp.ClientSession(timeout=TIMEOUT) as http:
            tls: ssl.SSLContext | bool = True
            if self.server_name is None or named == self.server_name:
                base = self.homeserver.rstrip("/")
            else:
                resolver = FederationResolver(self.federation_tls)
                base, tls = await resolver.base_url(http, named), resolver.tls
            params = {"access_token": token["access_token"]}
            try:
                async with http.get(f"{base}{USERINFO_PATH}", params=params, ssl=tls) as resp:
                    if resp.status != 200:
                        raise OpenIdRefused(f"refused by {base} (HTTP {resp.status})")
                    info = await resp.json(content_type=None)
            except (aiohttp.ClientError, TimeoutError, ValueError) as e:
                # The exception text may hold the URL with its query (the token): not logged.
                raise OpenIdRefused(f"userinfo request to {base} failed: {type(e).__name__}") from e
        sub = info.get("sub") if isinstance(info, dict) else None
        # As gomatrixserverlib's LookupUserInfo: the user must be on the named server.
        if not isinstance(sub, str) or sub.partition(":")[2] != named:
            raise OpenIdRefused(f"OpenID user {sub!r} is not on {named!r}")
        return sub


def federation_tls(ca_file: str | None) -> ssl.SSLContext | None:
    """A TLS context trusting only ``ca_file`` (tests), or None for the system's CAs."""
    return ssl.create_default_context(cafile=ca_file) if ca_file else None
