"""Access rules: the management token, the agent's client networks, and the refusal of unsafe exposure."""

from __future__ import annotations

import hmac
import ipaddress

from aiohttp import web

from ..config import Settings
from ..http.access import networks
from ..keys import SETTINGS

def token_ok(request: web.Request, settings: Settings) -> bool:
    """True when no token is configured, or the request carries `Authorization: Bearer <token>`."""
    if not settings.management_token:
        return True
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(given.strip().encode(), settings.management_token.encode())


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
