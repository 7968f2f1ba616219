"""Which clients may use the call endpoints (`RATING_AGENT_NETWORKS`): the REST routes and GraphQL's agent
mutations answer 403 to any other address. An empty list allows every client."""

from __future__ import annotations

import functools
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
