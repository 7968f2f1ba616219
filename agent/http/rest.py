"""Canyan's agent REST API: the five call operations Kamailio and OpenSIPS use."""

from __future__ import annotations

import logging
import time
from typing import Any, Awaitable, Callable

from aiohttp import web

from redis.exceptions import ResponseError

from cache import UNAVAILABLE

from ..config import Settings
from ..keys import SETTINGS, TRANSACTIONS
from ..logs import Throttled
from ..metrics import ENDPOINTS
from ..transaction import CatalogBehind, Conflict, Invalid, Transactions
from . import openapi
from .access import guarded, refusal
from .responses import detail, json_response
from .validation import (
    AUTHORIZATION, BEGIN, END, RECORD, ROLLBACK, Field, Unparsable, ValidationFailed, field_error, parse_body, validate,
)

log = logging.getLogger(__name__)
routes = web.RouteTableDef()

UNAVAILABLE_DETAIL = "Rating is not available: the live state store (Redis) cannot be reached"
REFUSED_DETAIL = "Rating is not available: the live state store (Redis) refused the request ({})"


_WARNINGS = Throttled(log)

# path -> (request fields, Transactions method)
ENDPOINTS_BY_PATH: dict[str, tuple[tuple[Field, ...], str]] = {
    "/v1/authorization": (AUTHORIZATION, "authorization"),
    "/v1/begin_transaction": (BEGIN, "begin"),
    "/v1/end_transaction": (END, "end"),
    "/v1/rollback_transaction": (ROLLBACK, "rollback"),
    "/v1/record_transaction": (RECORD, "record"),
}

Endpoint = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]


async def answer(request: web.BaseRequest, settings: Settings, operate: Callable[[dict], Awaitable[dict[str, Any]]],
                 fields: tuple[Field, ...], operation: str, flight: Any = None) -> web.Response:
    """One call operation: the request validated, performed, answered and counted. While it runs, it counts
    in `flight` (the front door's in-flight count, when bounded): here rather than in a coroutine around this one."""
    started = time.perf_counter()
    if flight is not None:
        flight.count += 1
    try:
        refused = guarded(settings) and refusal(request, settings, operation)  # most deployments guard nothing
        if refused:
            response = detail(refused[1], refused[0])
            if refused[0] == 401:
                response.headers["WWW-Authenticate"] = 'Bearer realm="rating-agent"'
        else:
            try:
                result = await operate(validate(parse_body(await request.read()), fields))
            except Unparsable as exc:
                response = detail(str(exc), 400)
            except ValidationFailed as exc:
                response = detail(exc.errors, 422)
            except Conflict as exc:
                response = detail(str(exc), 409)
            except Invalid as exc:
                response = detail([field_error(exc.field, exc.message)], 422)
            except CatalogBehind as exc:
                _WARNINGS.warn("%s: %s", request.path, exc)
                response = detail(f"Rating is not available: {exc}", 503)
            except UNAVAILABLE as exc:
                _WARNINGS.warn("%s: Redis unavailable: %r", request.path, exc)
                response = detail(UNAVAILABLE_DETAIL, 503)
            except ResponseError as exc:  # LOADING, BUSY, OOM, READONLY, a script error: nothing was done
                reason = str(exc).split(" ", 1)[0] or "error"
                _WARNINGS.warn("%s: Redis refused: %s", request.path, exc)
                response = detail(REFUSED_DETAIL.format(reason), 503)
            else:
                if operation == "authorization":
                    ENDPOINTS.authorization(result["authorized"], result["unauthorized_reason"])
                response = json_response(result)
    finally:
        if flight is not None:
            flight.count -= 1
    ENDPOINTS.observe(operation, response.status, time.perf_counter() - started)
    return response


def _bound(settings: Settings, transactions: Transactions, fields: tuple[Field, ...], operation: str,
           flight: Any) -> Endpoint:
    operate = getattr(transactions, operation)

    def endpoint(request: web.BaseRequest) -> Awaitable[web.Response]:
        return answer(request, settings, operate, fields, operation, flight)

    return endpoint


def direct(app: web.Application, flight: Any = None) -> dict[str, Endpoint]:
    """The endpoints by path, bound to the state of `app` (started), for the front door (front.py); each
    counts in `flight` while it runs (see answer)."""
    return {path: _bound(app[SETTINGS], app[TRANSACTIONS], fields, operation, flight)
            for path, (fields, operation) in ENDPOINTS_BY_PATH.items()}


def _route(path: str, fields: tuple[Field, ...], operation: str) -> None:
    async def handler(request: web.Request) -> web.Response:
        app = request.app
        return await answer(request, app[SETTINGS], getattr(app[TRANSACTIONS], operation), fields, operation)

    handler.__name__ = operation
    routes.post(path)(handler)


for _path, (_fields, _operation) in ENDPOINTS_BY_PATH.items():
    _route(_path, _fields, _operation)


_OPENAPI = openapi.document_bytes(ENDPOINTS_BY_PATH)


@routes.get("/v1/openapi.json")
async def openapi_document(_request: web.Request) -> web.Response:
    """The call endpoints described for clients and fuzzers (made from the validation's field sets)."""
    return web.Response(body=_OPENAPI, content_type="application/json")
