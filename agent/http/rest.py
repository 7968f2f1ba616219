"""Canyan's agent REST API: the five call operations Kamailio and OpenSIPS use."""

from __future__ import annotations

import logging
import time

from aiohttp import web

from cache import UNAVAILABLE

from ..keys import SETTINGS, TRANSACTIONS
from ..metrics import ENDPOINTS
from ..transaction import Conflict
from .access import client_allowed
from .responses import detail, json_response
from .validation import AUTHORIZATION, BEGIN, END, RECORD, ROLLBACK, Unparsable, ValidationFailed, parse_body, validate

log = logging.getLogger(__name__)
routes = web.RouteTableDef()

FORBIDDEN_DETAIL = "Forbidden: this client may not use the agent endpoints"
UNAVAILABLE_DETAIL = "Rating is not available: the live state store (Redis) cannot be reached"


def _endpoint(path: str, fields, operation: str) -> None:
    async def handler(request: web.Request) -> web.Response:
        started = time.perf_counter()
        app = request.app
        if not client_allowed(request, app[SETTINGS]):
            response = detail(FORBIDDEN_DETAIL, 403)
        else:
            try:
                values = validate(parse_body(await request.read()), fields)
                result = await getattr(app[TRANSACTIONS], operation)(values)
            except Unparsable as exc:
                response = detail(str(exc), 400)
            except ValidationFailed as exc:
                response = detail(exc.errors, 422)
            except Conflict as exc:
                response = detail(str(exc), 409)
            except UNAVAILABLE as exc:
                log.warning("%s: Redis unavailable: %r", path, exc)
                response = detail(UNAVAILABLE_DETAIL, 503)
            else:
                if operation == "authorization":
                    ENDPOINTS.authorization(result["authorized"], result["unauthorized_reason"])
                response = json_response(result)
        ENDPOINTS.observe(operation, response.status, time.perf_counter() - started)
        return response

    handler.__name__ = operation
    routes.post(path)(handler)


_endpoint("/v1/authorization", AUTHORIZATION, "authorization")
_endpoint("/v1/begin_transaction", BEGIN, "begin")
_endpoint("/v1/end_transaction", END, "end")
_endpoint("/v1/rollback_transaction", ROLLBACK, "rollback")
_endpoint("/v1/record_transaction", RECORD, "record")


