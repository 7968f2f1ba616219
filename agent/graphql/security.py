"""Access rules: the management token, the agent's client networks, and the refusal of unsafe exposure."""

from __future__ import annotations

import ipaddress

from aiohttp import web

from ..config import Settings
from ..http.access import bearer, networks
from ..keys import SETTINGS

def token_ok(request: web.Request, settings: Settings) -> bool:
    """True when no token is configured, or the request carries `Authorization: Bearer <token>`."""
    return not settings.management_token or bearer(request, settings.management_token)


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
    networks(settings.record_networks)
    if not settings.management_token and not is_loopback(settings.host):
        return (f"refusing to serve the management API on {settings.host!r} without a token:"
                " set --management-token (RATING_MANAGEMENT_TOKEN) or bind to a loopback address")
    if not (settings.agent_networks or settings.agent_token) and not is_loopback(settings.host):
        return (f"refusing to serve the agent endpoints (/v1/*) on {settings.host!r} to every client:"
                " set --agent-networks (RATING_AGENT_NETWORKS, e.g. Kamailio's address) or --agent-token"
                " (RATING_AGENT_TOKEN), or bind to a loopback address")
    return None


async def refuse_unsafe_exposure(app: web.Application) -> None:
    problem = exposure_problem(app[SETTINGS])
    if problem:
        raise RuntimeError(problem)
