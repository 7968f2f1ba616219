"""The agent's own GraphQL operations: `version` and the five call mutations, the same operations as REST.

Each mutation builds the request dict the REST validator would (every field present, defaults filled in) and
calls the shared `Transactions` object. Unlike the original, `authorization` takes `tags` and
`recordTransaction` prices the call from its own begin and end timestamps.
"""

from __future__ import annotations

import time
from typing import Any

from redis.exceptions import ResponseError

from cache import UNAVAILABLE

from ..http.rest import REFUSED_DETAIL, UNAVAILABLE_DETAIL
from ..http.validation import AUTHORIZATION, BEGIN, END, RECORD, ROLLBACK, Field, checked
from ..keys import TRANSACTIONS
from ..metrics import ENDPOINTS
from ..store.management import ManagementError
from ..transaction import CatalogBehind, Conflict, Invalid
from .common import app_of, mutation, query

AGENT_FIELDS = frozenset({
    "version", "authorization", "beginTransaction", "endTransaction", "rollbackTransaction", "recordTransaction",
})


@query.field("version")
def resolve_version(*_):
    return 1


def request_of(fields: tuple[Field, ...], args: dict[str, Any]) -> dict[str, Any]:
    request = {}
    for field in fields:
        value = args.get(field.name)
        try:
            if value is None:
                value = field.default
            elif field.name == "tags":
                value = [checked(str(tag)) for tag in value if tag is not None]
            elif isinstance(value, str):
                value = checked(value)
        except ValueError as exc:
            raise ValueError(f"{field.name}: {exc.args[0]}") from None
        request[field.name] = value
    return request


def _operation(name: str, fields: tuple[Field, ...], operation: str) -> None:
    endpoint = f"graphql_{operation}"  # counted beside the REST endpoints, with the status REST would answer

    async def resolve(_, info, **args):
        started = time.perf_counter()
        request = request_of(fields, args)
        status = 200
        try:
            result = await getattr(app_of(info)[TRANSACTIONS], operation)(request)
        except Conflict as exc:
            status = 409
            raise ManagementError(str(exc)) from None
        except Invalid as exc:
            status = 422
            raise ManagementError(str(exc)) from None
        except CatalogBehind as exc:
            status = 503
            raise ManagementError(f"Rating is not available: {exc}") from None
        except UNAVAILABLE:
            status = 503
            raise ManagementError(UNAVAILABLE_DETAIL) from None
        except ResponseError as exc:
            status = 503
            raise ManagementError(REFUSED_DETAIL.format(str(exc).split(" ", 1)[0])) from None
        finally:
            ENDPOINTS.observe(endpoint, status, time.perf_counter() - started)
        if operation == "authorization":
            ENDPOINTS.authorization(result["authorized"], result["unauthorized_reason"])
        return result

    mutation.set_field(name, resolve)


_operation("authorization", AUTHORIZATION, "authorization")
_operation("beginTransaction", BEGIN, "begin")
_operation("endTransaction", END, "end")
_operation("rollbackTransaction", ROLLBACK, "rollback")
_operation("recordTransaction", RECORD, "record")

bindables: list = []
