"""`/graphql`: Canyan's management API and the agent's GraphQL operations (ariadne, schema first).

The schema is the checked-in SDL file `schema.graphql`; each resolver module binds one domain entity.
Envelope: success is HTTP 200 `{"data": ...}` without an `errors` key; any error is HTTP 400 with `errors`
(and whatever `data` was produced). Requests are bounded: body size and token count at parse; depth, fields,
expanded size and same-name field pairs (fragments expanded) on the parsed document, before validation, whose
cost is not linear (`limits.py`); an execution timeout; at most `graphql_max_in_flight` documents running at
once in this process, beyond which a document is refused at once with 503 and Retry-After (documents of only
the call mutations, which Kamailio may send here, are not counted, so management load cannot starve them).
Access: management fields need
`Authorization: Bearer <token>` when a token is configured; the agent's call mutations follow the same
client-network rule as the REST endpoints (a valid token also admits them); `version` and introspection
are open.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from importlib.resources import files
from typing import Any, Iterator

import orjson
from aiohttp import web
from ariadne import graphql, make_executable_schema
from graphql import (
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLError,
    InlineFragmentNode,
    OperationDefinitionNode,
    OperationType,
    parse,
)

from .. import metrics
from ..keys import SETTINGS
from . import (  # noqa: F401 - each module binds its resolvers on import
    accounts,
    agent,
    carriers,
    customers,
    invoices,
    pricelists,
    quote,
    rates,
    rerate,
    scalars,
    sellers,
    transactions,
)
from ..store.management import ManagementError
from .agent import AGENT_FIELDS
from .common import mutation, query
from . import explorer
from .limits import check_limits
from ..http.access import guarded, refusal
from .security import refuse_unsafe_exposure, token_ok

log = logging.getLogger(__name__)
ERRORS_LOGGER = "agent.graphql.errors"


class _ClientErrors(logging.Filter):
    """Keeps resolver crashes in the log, drops what is the client's doing (syntax, validation, refusals)."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, GraphQLError):
            original = error.original_error
            return original is not None and not isinstance(original, (ManagementError, ValueError, TypeError))
        return True


logging.getLogger(ERRORS_LOGGER).addFilter(_ClientErrors())

SDL = files(__package__).joinpath("schema.graphql").read_text()
schema = make_executable_schema(
    SDL, query, mutation,
    *scalars.bindables, *accounts.bindables, *carriers.bindables, *pricelists.bindables, *rates.bindables,
    *transactions.bindables, *customers.bindables, *sellers.bindables, *invoices.bindables,
)
routes = web.RouteTableDef()

OPEN_FIELDS = frozenset({"version", "__typename", "__schema", "__type"})
CALL_FIELDS = AGENT_FIELDS - {"version"}
# A document of only these is outside the in-flight bound: the call mutations are Kamailio's (admitted by
# --agent-networks / --agent-token like /v1/*), each one Redis call per field, the field limit bounding them.
UNCOUNTED = AGENT_FIELDS
RETRY_AFTER = "1"  # seconds: documents finish in milliseconds to seconds (at most graphql_timeout)


class InFlight:
    """Documents this process is running now; at most `limit` (0: no bound)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.running = 0

    def full(self) -> bool:
        return bool(self.limit) and self.running >= self.limit

    @contextlib.contextmanager
    def holding(self) -> Iterator[None]:
        self.running += 1
        metrics.GRAPHQL_IN_FLIGHT.inc()
        try:
            yield
        finally:
            self.running -= 1
            metrics.GRAPHQL_IN_FLIGHT.dec()


IN_FLIGHT = web.AppKey("graphql_in_flight", InFlight)
NO_QUERY = "No GraphQL query found in the request"


def _plain(text: str, status: int) -> web.Response:
    return web.Response(text=text, status=status, content_type="text/plain")


def _envelope(payload: dict, status: int) -> web.Response:
    return web.Response(body=orjson.dumps(payload), status=status, content_type="application/json")


def _failure(message: str, status: int = 400) -> web.Response:
    return _envelope({"data": None, "errors": [{"message": message}]}, status)


def root_fields(document, operation_name: str | None) -> set[str]:
    """Top-level field names of the operation that will run (of every operation when it is ambiguous)."""
    fragments = {d.name.value: d for d in document.definitions if isinstance(d, FragmentDefinitionNode)}
    operations = [d for d in document.definitions if isinstance(d, OperationDefinitionNode)]
    if operation_name is not None:
        operations = [d for d in operations if d.name is not None and d.name.value == operation_name] or operations
    names: set[str] = set()
    seen: set[str] = set()  # a fragment adds the same names wherever it is spread: walk each one once

    def collect(selection_set) -> None:
        for selection in selection_set.selections:
            if isinstance(selection, FieldNode):
                names.add(selection.name.value)
            elif isinstance(selection, InlineFragmentNode):
                collect(selection.selection_set)
            elif isinstance(selection, FragmentSpreadNode):
                name = selection.name.value
                if name in fragments and name not in seen:
                    seen.add(name)
                    collect(fragments[name].selection_set)

    for operation in operations:
        collect(operation.selection_set)
    return names


def _has_mutation(document, operation_name) -> bool:
    operations = [d for d in document.definitions if isinstance(d, OperationDefinitionNode)]
    if isinstance(operation_name, str):
        operations = [d for d in operations if d.name is not None and d.name.value == operation_name] or operations
    return any(d.operation == OperationType.MUTATION for d in operations)


# --- the endpoint ------------------------------------------------------------------------------------------------

class BadRequest(Exception):
    def __init__(self, response: web.Response) -> None:
        self.response = response


async def _request_data(request: web.Request, max_body: int) -> dict[str, Any]:
    if request.method == "GET" or "query" in request.query:
        variables = request.query.get("variables")
        try:
            variables = orjson.loads(variables) if variables else None
        except orjson.JSONDecodeError:
            raise BadRequest(_failure("variables must be a JSON object")) from None
        return {"query": request.query.get("query"), "variables": variables,
                "operationName": request.query.get("operationName")}
    content_type = request.headers.get("Content-Type", "")
    if "application/json" not in content_type and "application/graphql" not in content_type:
        raise BadRequest(_plain("Unsupported Media Type", 415))
    if request.content_length is not None and request.content_length > max_body:
        raise BadRequest(_failure(f"Request body too large (at most {max_body} bytes)", 413))
    body = await request.content.read(max_body + 1)
    if len(body) > max_body:
        raise BadRequest(_failure(f"Request body too large (at most {max_body} bytes)", 413))
    if "application/graphql" in content_type:
        return {"query": body.decode("utf-8", "replace")}
    try:
        data = orjson.loads(body) if body.strip() else {}
    except orjson.JSONDecodeError:
        raise BadRequest(_failure("The request body is not valid JSON")) from None
    if not isinstance(data, dict):
        raise BadRequest(_failure("The request body must be a JSON object"))
    return data


@routes.route("*", "/graphql")
async def graphql_endpoint(request: web.Request) -> web.Response:
    if request.method not in ("GET", "POST"):
        return _plain("Method Not Allowed", 405)
    settings = request.app[SETTINGS]
    if (request.method == "GET" and "query" not in request.query
            and "text/html" in request.headers.get("Accept", "")):
        return explorer.page()
    try:
        data = await _request_data(request, settings.graphql_max_body)
    except BadRequest as exc:
        return exc.response
    text = data.get("query")
    if not text:
        return _plain(NO_QUERY, 400)
    if not isinstance(text, str):
        return _failure("query must be a string")
    variables = data.get("variables")
    if variables is not None and not isinstance(variables, dict):
        return _failure("variables must be a JSON object")
    operation_name = data.get("operationName")
    try:
        document = parse(text, max_tokens=settings.graphql_max_tokens)
    except GraphQLError as exc:
        return _envelope({"data": None, "errors": [exc.formatted]}, 400)
    except RecursionError:
        return _failure("Query is too deeply nested")
    try:
        # Before validation (not linear in the document, see limits.py) and before root_fields walks it.
        check_limits(document, settings.graphql_max_depth, settings.graphql_max_fields, settings.graphql_max_tokens)
    except GraphQLError as exc:
        return _envelope({"data": None, "errors": [exc.formatted]}, 400)

    if ("query" in request.query or request.method == "GET") and _has_mutation(document, operation_name):
        # A query in the URL can come from any web page without a CORS preflight: no writes that way.
        return _failure("Mutations cannot be sent in the URL: POST them as JSON or application/graphql")
    fields = root_fields(document, operation_name if isinstance(operation_name, str) else None)
    authorized = token_ok(request, settings)
    if fields - AGENT_FIELDS - OPEN_FIELDS and not authorized:
        response = _failure("Unauthorized: management operations need Authorization: Bearer <token>", 401)
        response.headers["WWW-Authenticate"] = 'Bearer realm="rating-agent"'
        return response
    # the call mutations: the agent endpoints' rules, unless the management token itself was given
    if fields & CALL_FIELDS and guarded(settings) and not (settings.management_token and authorized):
        refused = refusal(request, settings, "record" if "recordTransaction" in fields else "call")
        if refused:
            response = _failure(refused[1], refused[0])
            if refused[0] == 401:
                response.headers["WWW-Authenticate"] = 'Bearer realm="rating-agent"'
            return response

    in_flight = request.app[IN_FLIGHT]
    counted = not fields or not fields <= UNCOUNTED  # no operation (fragments only): still validated
    if counted and in_flight.full():
        metrics.GRAPHQL_SHED.inc()
        response = _failure(f"Too many GraphQL documents running (at most {in_flight.limit}); try again", 503)
        response.headers["Retry-After"] = RETRY_AFTER
        return response
    try:
        with in_flight.holding() if counted else contextlib.nullcontext():
            async with asyncio.timeout(settings.graphql_timeout):
                _, result = await graphql(
                    schema,
                    {"query": text, "variables": variables, "operationName": operation_name},
                    query_document=document,
                    context_value={"request": request},
                    logger=ERRORS_LOGGER,
                    middleware=[bounded_arguments],
                )
    except TimeoutError:
        return _failure(f"Query took longer than {settings.graphql_timeout:g} s and was stopped")
    except RecursionError:
        return _failure("Query is too deeply nested")
    payload: dict[str, Any] = {"data": result.get("data")}
    if result.get("errors"):
        payload["errors"] = result["errors"]
        return _envelope(payload, 400)
    return _envelope(payload, 200)


_MAX_ARGUMENT = 4096  # characters of any string argument of a management field (call fields: MAX_TEXT)
_UNSTORABLE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")  # NUL and controls other than tab and line breaks


def _check_argument(path: str, value: Any) -> None:
    if isinstance(value, str):
        if len(value) > _MAX_ARGUMENT:
            raise GraphQLError(f"{path}: ensure this value has at most {_MAX_ARGUMENT} characters")
        if _UNSTORABLE.search(value):
            raise GraphQLError(f"{path}: control characters (NUL included) are not allowed")
    elif isinstance(value, dict):
        for name, item in value.items():
            _check_argument(f"{path}.{name}", item)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _check_argument(f"{path}[{index}]", item)


def bounded_arguments(resolve, parent, info, **arguments):
    """Every string argument of a top-level field is bounded and storable (PostgreSQL refuses NUL), whatever
    the field: refused with the argument's name before the resolver runs."""
    if parent is None:
        for name, value in arguments.items():
            _check_argument(name, value)
    return resolve(parent, info, **arguments)


def setup(app: web.Application) -> None:
    """Adds `/graphql`, the explorer's assets, the deck upload endpoint and the exposure check."""
    from .decks import routes as deck_routes

    app[IN_FLIGHT] = InFlight(app[SETTINGS].graphql_max_in_flight)
    app.add_routes(routes)
    app.add_routes(explorer.routes)
    app.add_routes(deck_routes)
    app.on_startup.insert(0, refuse_unsafe_exposure)
