"""Canyan's agent REST API: the five call operations Kamailio and OpenSIPS use."""

from __future__ import annotations

import logging
import time

from aiohttp import web

from cache import UNAVAILABLE

from ..keys import SETTINGS, TRANSACTIONS
from .access import client_allowed
from ..metrics import ENDPOINTS
from ..transaction import Conflict
from .responses import detail, json_response
from .validation import AUTHORIZATION, BEGIN, END, RECORD, ROLLBACK, Unparsable, ValidationFailed, parse_body, validate

log = logging.getLogger(__name__)
routes = web.RouteTableDef()

FORBIDDEN_DETAIL = "Forbidden: this client may not use the agent endpoints"
UNAVAILABLE_DETAIL = "Rating is not available: the live state store (Redis) cannot be reached"


def _endpoint(path: str, fields, operation: str) -> None:
    async def answer(request: web.Request) -> web.Response:
        app = request.app
        if not client_allowed(request, app[SETTINGS]):
            return detail(FORBIDDEN_DETAIL, 403)
        try:
            values = validate(parse_body(await request.read()), fields)
        except Unparsable as exc:
            return detail(str(exc), 400)
        except ValidationFailed as exc:
            return detail(exc.errors, 422)
        try:
            result = await getattr(app[TRANSACTIONS], operation)(values)
        except Conflict as exc:
            return detail(str(exc), 409)
        except UNAVAILABLE as exc:
            log.warning("%s: Redis unavailable: %r", path, exc)
            return detail(UNAVAILABLE_DETAIL, 503)
        if operation == "authorization":
            ENDPOINTS.authorization(result["authorized"], result["unauthorized_reason"])
        return json_response(result)

    async def handler(request: web.Request) -> web.Response:
        started = time.perf_counter()
        response = await answer(request)
        ENDPOINTS.observe(operation, response.status, time.perf_counter() - started)
        return response

    handler.__name__ = operation
    routes.post(path)(handler)


_endpoint("/v1/authorization", AUTHORIZATION, "authorization")
_endpoint("/v1/begin_transaction", BEGIN, "begin")
_endpoint("/v1/end_transaction", END, "end")
_endpoint("/v1/rollback_transaction", ROLLBACK, "rollback")
_endpoint("/v1/record_transaction", RECORD, "record")


