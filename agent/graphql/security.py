"""Access rules: the management token, the agent's client networks, and the refusal of unsafe exposure."""

from __future__ import annotations

import functools
import hmac
import ipaddress

from aiohttp import web

from ..config import Settings
from ..http.responses import detail
from ..keys import SETTINGS

AGENT_PREFIX = "/v1/"


@functools.lru_cache(maxsize=8)
def networks(spec: str) -> tuple:
    """`10.0.0.0/8, 192.168.1.7` as networks; a bad entry is a configuration error."""
    found = []
    for item in spec.replace(";", ",").split(","):
        item = item.strip()
        if item:
            try:
                found.append(ipaddress.ip_network(item, strict=False))
            except ValueError as exc:
                raise ValueError(f"agent_networks: {exc}") from None
    return tuple(found)


def client_allowed(request: web.Request, settings: Settings) -> bool:
    allowed = networks(settings.agent_networks)
    if not allowed:
        return True
    try:
        address = ipaddress.ip_address((request.remote or "").split("%")[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in network for network in allowed if network.version == address.version)


def token_ok(request: web.Request, settings: Settings) -> bool:
    """True when no token is configured, or the request carries `Authorization: Bearer <token>`."""
    if not settings.management_token:
        return True
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(given.strip().encode(), settings.management_token.encode())


@web.middleware
async def agent_networks(request: web.Request, handler):
    """The REST call endpoints answer 403 to clients outside the configured networks."""
    if request.path.startswith(AGENT_PREFIX) and not client_allowed(request, request.app[SETTINGS]):
        return detail("Forbidden: this client may not use the agent endpoints", 403)
    return await handler(request)


def is_loopback(host: str) -> bool:
    hosts = [h.strip() for h in host.split(",")] if host else [""]
    for name in hosts:
        if name == "localhost":
            continue
        try:
            if not ipaddress.ip_address(name.strip("[]")).is_loopback:
                return False
        except ValueError:
            return False
    return True


def exposure_problem(settings: Settings) -> str | None:
    """Why serving with these settings would be unsafe, or None."""
    networks(settings.agent_networks)  # a bad list fails at start, not at the first request
    if not settings.management_token and not is_loopback(settings.host):
        return (f"refusing to serve the management API on {settings.host!r} without a token:"
                " set --management-token (RATING_MANAGEMENT_TOKEN) or bind to a loopback address")
    return None


async def refuse_unsafe_exposure(app: web.Application) -> None:
    problem = exposure_problem(app[SETTINGS])
    if problem:
        raise RuntimeError(problem)
