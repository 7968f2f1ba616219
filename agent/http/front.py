"""The server's first stop for every request: the call operations, which Kamailio sends on every call, go
straight to their handler; every other request goes through the application (router, GraphQL, metrics).

An aiohttp application resolves each request through its router, builds and freezes match info and runs
the response-prepare signal: about a tenth of the CPU a do-nothing request costs (measured: 20,000 of
204,000 instructions per request, and about 10% more requests per second, for a fixed answer served by
aiohttp's low-level `web.Server` instead of an application). The front door uses only the public
low-level server API: it becomes the `request_handler` of the application runner's `web.Server`, and
hands what it does not serve itself to the handler it replaced. Both paths run the same endpoint code.

Overload: past its capacity a worker that takes every request lets each one wait longer, until Kamailio's
timeouts fail them all. So the front door counts the call requests in flight in this worker and, at
`--max-in-flight`, refuses new calls (authorization, record) at once with a 503 that costs neither JSON nor
Redis; Kamailio turns it into a quick SIP refusal. Begin, end and rollback are never refused for this: they
follow calls already admitted (their number is bounded by those), carry the charge and free the reservation
and call slot; Kamailio does not send a begin twice, and an end refused would wait for a retry seconds later.
They count towards the bound, so new calls yield to them.
"""

from __future__ import annotations

import logging
import time
from typing import Awaitable

from aiohttp import web

from ..keys import SETTINGS
from ..logs import Throttled
from ..metrics import ENDPOINTS
from . import rest
from .responses import detail

log = logging.getLogger(__name__)
_WARNINGS = Throttled(log)

# operations that start new work: refused at the bound (nothing of theirs is done, the client may retry)
SHEDDABLE = frozenset({"authorization", "record"})
OVERLOADED_DETAIL = ("Rating is not available: the agent is overloaded ({} call requests in flight in this worker,"
                     " --max-in-flight)")


class InFlight:
    """The call requests this worker has started and not yet answered, and its bound (0: none)."""

    __slots__ = ("limit", "count")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.count = 0


def install(server: web.Server, app: web.Application) -> InFlight:
    """Puts the front door before `app`'s own handler in `server` (an AppRunner's server, after its
    setup and before it accepts connections: each connection takes the handler when it opens).
    Returns the worker's in-flight count (for tests and probes)."""
    through_app = server.request_handler
    flight = InFlight(app[SETTINGS].max_in_flight)
    ENDPOINTS.in_flight = flight
    # bounded, each call endpoint counts itself in flight while it runs (rest.answer)
    endpoints = rest.direct(app, flight if flight.limit else None)
    if not flight.limit:
        get = endpoints.get

        def unbounded_front_door(request: web.BaseRequest) -> Awaitable[web.StreamResponse]:
            if request.method == "POST":
                endpoint = get(request.path)
                if endpoint is not None:
                    return endpoint(request)
            return through_app(request)

        server.request_handler = unbounded_front_door
        return flight

    limit = flight.limit
    routes = {path: (endpoints[path], operation, operation in SHEDDABLE)
              for path, (_, operation) in rest.ENDPOINTS_BY_PATH.items()}
    route_of = routes.get

    async def shed(request: web.BaseRequest, operation: str) -> web.StreamResponse:
        started = time.perf_counter()
        ENDPOINTS.shed(operation)
        _WARNINGS.warn("%s: overloaded, %d call requests in flight: refused", request.path, flight.count)
        response = detail(OVERLOADED_DETAIL.format(flight.count), 503)
        ENDPOINTS.observe(operation, 503, time.perf_counter() - started)
        return response

    def front_door(request: web.BaseRequest) -> Awaitable[web.StreamResponse]:
        if request.method == "POST":
            route = route_of(request.path)
            if route is not None:
                endpoint, operation, sheddable = route
                if sheddable and flight.count >= limit:
                    return shed(request, operation)
                return endpoint(request)
        return through_app(request)

    server.request_handler = front_door
    return flight
