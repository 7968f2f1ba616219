"""The OpenAPI document of the call endpoints (`GET /v1/openapi.json`), made from the same field sets that
validate their requests (validation.py), so the two cannot drift apart. The fuzz tests drive it."""

from __future__ import annotations

from typing import Any

import orjson

from .validation import MAX_TAGS, MAX_TEXT, Field, as_bool, as_datetime, as_str_list, as_text

_TEXT = {"type": "string", "maxLength": MAX_TEXT, "pattern": "^[^\\u0000-\\u001f\\u007f]*$",
         "description": "numbers and booleans are taken as their text; no control characters"}
_MOMENT = {"oneOf": [
    {"type": "string", "pattern": "^\\d{4}-\\d{2}-\\d{2}[T ]\\d{2}:\\d{2}", "description": "ISO 8601; UTC without an offset"},
    {"type": "number", "description": "Unix time, seconds"},
]}
_TYPES = {
    as_text: _TEXT,
    as_str_list: {"type": "array", "maxItems": MAX_TAGS, "items": _TEXT},
    as_datetime: _MOMENT,
    as_bool: {"type": "boolean"},
}
_DETAIL = {"type": "object", "required": ["detail"], "properties": {"detail": {}}}


def _body(fields: tuple[Field, ...]) -> dict[str, Any]:
    properties = {}
    for field in fields:
        schema = dict(_TYPES[field.coerce])
        if field.default is not None:
            schema["default"] = field.default
        properties[field.name] = schema
    return {"type": "object", "properties": properties,
            "required": [field.name for field in fields if field.required]}


def _operation(name: str, fields: tuple[Field, ...], summary: str) -> dict[str, Any]:
    errors = {
        "400": "the body is not JSON", "401": "--agent-token set and not given",
        "403": "the client is not admitted (--agent-networks, --record-networks)",
        "409": "the transaction tag belongs to a call in another state", "422": "a field is missing or invalid",
        "503": "Redis, or PostgreSQL where it is needed, is unavailable: send it again",
    }
    responses: dict[str, Any] = {"200": {"description": "the call's answer (Canyan's fields)", "content": {
        "application/json": {"schema": {"type": "object"}}}}}
    responses.update({code: {"description": text, "content": {"application/json": {"schema": _DETAIL}}}
                      for code, text in errors.items()})
    return {"post": {
        "operationId": name, "summary": summary,
        "requestBody": {"required": True, "content": {"application/json": {"schema": _body(fields)}}},
        "responses": responses,
    }}


def document(endpoints: dict[str, tuple[tuple[Field, ...], str]]) -> dict[str, Any]:
    """OpenAPI 3.0 for `endpoints` (path -> (fields, operation name))."""
    summaries = {
        "authorization": "may this caller make this call, for how long, through which carriers",
        "begin": "the call was answered", "end": "the call ended: charge it",
        "rollback": "the call was not set up: release what its authorization holds",
        "record": "a whole call at once, charged from its own begin and end",
    }
    return {
        "openapi": "3.0.3",
        "info": {"title": "rating-agent call endpoints", "version": "1"},
        "paths": {path: _operation(operation, fields, summaries[operation])
                  for path, (fields, operation) in endpoints.items()},
    }


def document_bytes(endpoints: dict[str, tuple[tuple[Field, ...], str]]) -> bytes:
    return orjson.dumps(document(endpoints))
