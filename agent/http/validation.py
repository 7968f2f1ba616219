"""Request bodies of the /v1 endpoints: Canyan's fields, defaults and lenient coercions, with its error shapes.

Kamailio sends every value as a JSON string, other clients send numbers and booleans; both are accepted
the way the original (pydantic 1) accepted them. A bad value gives a 422 whose `detail` names the field.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable

import orjson

_TRUE = {"1", "true", "t", "yes", "y", "on"}
_FALSE = {"0", "false", "f", "no", "n", "off"}
_ISO = re.compile(r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}")
_EPOCH = re.compile(r"^[+-]?\d+(\.\d+)?$")
MAX_TEXT = 1024  # characters of any string field
MAX_TAGS = 64
# NUL cannot be stored by PostgreSQL (one such record stopped every durable write); other control
# characters have no business in a tag or a URI.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class ValidationFailed(Exception):
    """A 422 with FastAPI's `detail` list."""

    def __init__(self, errors: list[dict]) -> None:
        super().__init__(errors)
        self.errors = errors


class Unparsable(Exception):
    """A 400: the body is not JSON."""


def field_error(field: str, msg: str) -> dict:
    """One entry of a 422's `detail` list, for a check made past validation."""
    return _error(field, msg, "value_error")


def _error(field: str | None, msg: str, kind: str) -> dict:
    loc = ["body", "request"] if field is None else ["body", "request", field]
    return {"loc": loc, "msg": msg, "type": kind}


def as_str(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "True" if value else "False"
    if isinstance(value, (int, float)):
        return str(value)
    raise ValueError("str type expected", "type_error.str")


def as_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        lowered = value.strip().lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
    raise ValueError("value could not be parsed to a boolean", "type_error.bool")


def as_datetime(value: Any) -> datetime:
    """ISO-8601 with `T` or space, optional seconds, fraction and offset; or Unix epoch seconds.

    A value without an offset is UTC. Date-only and basic-format values are refused.
    """
    if isinstance(value, bool):
        raise ValueError("invalid datetime format", "value_error.datetime")
    if isinstance(value, (int, float)) or (isinstance(value, str) and _EPOCH.match(value.strip())):
        try:
            return datetime.fromtimestamp(float(value), tz=timezone.utc)
        except (OverflowError, OSError, ValueError):
            raise ValueError("invalid datetime format", "value_error.datetime") from None
    if isinstance(value, str) and _ISO.match(value.strip()):
        text = value.strip()
        if text.endswith(("Z", "z")):
            text = text[:-1] + "+00:00"
        try:
            parsed = datetime.fromisoformat(text)
        except ValueError:
            raise ValueError("invalid datetime format", "value_error.datetime") from None
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)
    raise ValueError("invalid datetime format", "value_error.datetime")


def checked(text: str) -> str:
    """`text` when it is short enough and free of control characters."""
    if len(text) > MAX_TEXT:
        raise ValueError(f"ensure this value has at most {MAX_TEXT} characters", "value_error.any_str.max_length")
    if _CONTROL.search(text) is not None:
        raise ValueError("control characters (NUL included) are not allowed", "value_error.str.control")
    return text


def as_text(value: Any) -> str:
    return checked(as_str(value))


def as_str_list(value: Any) -> list[str]:
    if not isinstance(value, (list, tuple)):
        raise ValueError("value is not a valid list", "type_error.list")
    if len(value) > MAX_TAGS:
        raise ValueError(f"ensure this value has at most {MAX_TAGS} items", "value_error.list.max_items")
    return [as_text(item) for item in value]


@dataclass(frozen=True, slots=True)
class Field:
    name: str
    coerce: Callable[[Any], Any]
    required: bool = False
    default: Any = None


def _fields(*spec: tuple) -> tuple[Field, ...]:
    return tuple(Field(*item) for item in spec)


_COMMON = (("tenant", as_text, False, "default"), ("transaction_tag", as_text, True),
           ("account_tag", as_text), ("destination_account_tag", as_text))
_CALL = (("source", as_text), ("source_ip", as_text), ("destination", as_text),
         ("carrier_ip", as_text), ("tags", as_str_list))

AUTHORIZATION = _fields(*_COMMON, *_CALL, ("timestamp_auth", as_datetime))
BEGIN = _fields(*_COMMON, *_CALL, ("timestamp_begin", as_datetime))
# an end may repeat the call's fields: what rates it should Redis have lost the call (transaction.end)
END = _fields(*_COMMON, *_CALL, ("timestamp_end", as_datetime), ("timestamp_begin", as_datetime))
ROLLBACK = _fields(*_COMMON)
RECORD = _fields(
    *_COMMON, *_CALL, ("authorized", as_bool, False, False), ("unauthorized_reason", as_text),
    ("timestamp_auth", as_datetime), ("timestamp_begin", as_datetime), ("timestamp_end", as_datetime),
)


def parse_body(body: bytes) -> Any:
    if not body.strip():
        return None
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        raise Unparsable("There was an error parsing the body") from None


_MISSING = object()


def validate(data: Any, fields: tuple[Field, ...]) -> dict[str, Any]:
    """The request as a dict with every field present (defaults filled in), or ValidationFailed.

    Only the fields the body carries are read (a Kamailio request carries about half of them); strings,
    which is what Kamailio sends, pass without a conversion call. Errors come in field order.
    """
    if data is None:
        raise ValidationFailed([_error(None, "field required", "value_error.missing")])
    if not isinstance(data, dict):
        raise ValidationFailed([_error(None, "value is not a valid dict", "type_error.dict")])
    schema = _SCHEMAS.get(id(fields)) or _schema(fields)
    values = schema.defaults.copy()
    errors: list[tuple[int, dict]] = []
    for name in schema.required:
        if name not in data:
            errors.append((schema.position[name], _error(name, "field required", "value_error.missing")))
    index = schema.index
    for name, raw in data.items():
        field = index.get(name)
        if field is None:
            continue  # unknown fields are ignored
        if raw.__class__ is str and field.coerce is as_text and len(raw) <= MAX_TEXT \
                and _CONTROL.search(raw) is None:  # what Kamailio sends, without a conversion call
            values[name] = raw
        elif raw is None:
            if field.required or field.default is not None:
                errors.append((schema.position[name],
                               _error(name, "none is not an allowed value", "type_error.none.not_allowed")))
        else:
            try:
                values[name] = field.coerce(raw)
            except ValueError as exc:
                msg, kind = exc.args if len(exc.args) == 2 else (str(exc), "value_error")
                errors.append((schema.position[name], _error(name, msg, kind)))
    if errors:
        errors.sort(key=lambda item: item[0])
        raise ValidationFailed([error for _, error in errors])
    return values


@dataclass(frozen=True, slots=True)
class _Schema:
    index: dict[str, Field]
    position: dict[str, int]
    defaults: dict[str, Any]
    required: tuple[str, ...]


def _schema(fields: tuple[Field, ...]) -> _Schema:
    """The lookups `validate` needs for one set of fields."""
    return _Schema(
        index={f.name: f for f in fields},
        position={f.name: n for n, f in enumerate(fields)},
        defaults={f.name: f.default for f in fields},
        required=tuple(f.name for f in fields if f.required),
    )


# Made once for the endpoints' field sets (module constants, so their ids stay theirs).
_SCHEMAS = {id(fields): _schema(fields) for fields in (AUTHORIZATION, BEGIN, END, ROLLBACK, RECORD)}
