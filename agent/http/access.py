"""Which clients may use the call endpoints: the REST routes and GraphQL's agent mutations.

`--agent-networks` lists the client networks admitted (403 to any other address; empty: all), `--agent-token`
a bearer token every request must carry (401 without it; empty: none), `--record-networks` the networks that
may also record calls (`/v1/record_transaction` charges without any call). Serving on a non-loopback address
needs a network list or a token (graphql/security.exposure_problem).
"""

from __future__ import annotations

import functools
import hmac
import ipaddress

from aiohttp import web

from ..config import Settings

# The client's address as a worker saw it, on requests it passes to the manager (http/forward.py); believed
# only from a Unix socket peer (a TCP client always has an address of its own).
FORWARDED_FOR = "X-Rating-Client"


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


@functools.lru_cache(maxsize=4096)
def address_allowed(spec: str, remote: str) -> bool:
    """Cached per client address: Kamailio keeps talking from the same few addresses."""
    try:
        address = ipaddress.ip_address(remote.split("%")[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in network for network in networks(spec) if network.version == address.version)


def client_address(request: web.BaseRequest) -> str:
    return request.remote or request.headers.get(FORWARDED_FOR, "")


def client_allowed(request: web.Request, settings: Settings) -> bool:
    spec = settings.agent_networks
    return not spec or not networks(spec) or address_allowed(spec, client_address(request))


def bearer(request: web.BaseRequest, token: str) -> bool:
    """Whether the request carries `Authorization: Bearer <token>` (compared in constant time)."""
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())


def guarded(settings: Settings) -> bool:
    """Whether the call endpoints check anything at all (most loopback deployments: no)."""
    return bool(settings.agent_networks or settings.agent_token or settings.record_networks)


def refusal(request: web.BaseRequest, settings: Settings, operation: str) -> tuple[int, str] | None:
    """(status, reason) when this client may not perform `operation` (a call endpoint's name), else None."""
    if settings.agent_token and not bearer(request, settings.agent_token):
        return 401, "Unauthorized: the agent endpoints need Authorization: Bearer <agent token>"
    if not client_allowed(request, settings):
        return 403, "Forbidden: this client may not use the agent endpoints"
    if operation == "record" and settings.record_networks \
            and not address_allowed(settings.record_networks, client_address(request)):
        return 403, "Forbidden: this client may not record calls (--record-networks)"
    return None
