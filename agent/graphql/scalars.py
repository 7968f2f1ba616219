"""The custom scalars: BigInt (never a float), DateTime (ISO-8601 in, naive UTC out) and Date."""

from __future__ import annotations

import re
from datetime import date, datetime, timezone
from decimal import Decimal
from typing import Any

from ariadne import ScalarType
from graphql import IntValueNode, StringValueNode

bigint = ScalarType("BigInt")
datetime_scalar = ScalarType("DateTime")
date_scalar = ScalarType("Date")

_INTEGER = re.compile(r"^[+-]?\d+$")
# Extended (2019-08-15T21:26:15.5+02:00) and basic (20190815T212615Z) ISO-8601; a `T` is required.
_EXTENDED = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}(:\d{2}(:\d{2}([.,]\d+)?)?)?(Z|[+-]\d{2}(:?\d{2})?)?$")
_BASIC = re.compile(r"^\d{8}T\d{2}(\d{2}(\d{2}([.,]\d+)?)?)?(Z|[+-]\d{2}(\d{2})?)?$")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


@bigint.serializer
def serialize_bigint(value: Any) -> int:
    if isinstance(value, bool):
        raise TypeError(f"BigInt cannot represent a boolean: {value!r}")
    if isinstance(value, (int, Decimal)):
        return int(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and _INTEGER.match(value):
        return int(value)
    raise TypeError(f"BigInt cannot represent {value!r}")


@bigint.value_parser
def parse_bigint(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError("BigInt cannot represent a boolean")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and _INTEGER.match(value.strip()):
        return int(value)
    raise ValueError(f"BigInt cannot represent {value!r}")


@bigint.literal_parser
def parse_bigint_literal(node, variables=None) -> int:
    if isinstance(node, (IntValueNode, StringValueNode)):
        return parse_bigint(node.value)
    raise ValueError("BigInt must be an integer")


def parse_moment(text: Any) -> datetime:
    if not isinstance(text, str):
        raise ValueError(f"DateTime must be an ISO-8601 string, got {text!r}")
    value = text.strip()
    if not (_EXTENDED.match(value) or _BASIC.match(value)):
        raise ValueError(f"not an ISO-8601 date and time: {text!r}")
    if value[-1] in "zZ":
        value = value[:-1] + "+00:00"
    try:
        moment = datetime.fromisoformat(value.replace(",", "."))
    except ValueError as exc:
        raise ValueError(f"not an ISO-8601 date and time: {text!r} ({exc})") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def format_moment(value: datetime) -> str:
    if value.tzinfo is not None:
        value = value.astimezone(timezone.utc).replace(tzinfo=None)
    return value.isoformat()


@datetime_scalar.serializer
def serialize_datetime(value: Any) -> str:
    if isinstance(value, datetime):
        return format_moment(value)
    if isinstance(value, str):
        return format_moment(parse_moment(value))
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return format_moment(datetime.fromtimestamp(value / 1000, tz=timezone.utc))
    raise TypeError(f"DateTime cannot represent {value!r}")


@datetime_scalar.value_parser
def parse_datetime(value: Any) -> datetime:
    return parse_moment(value)


@datetime_scalar.literal_parser
def parse_datetime_literal(node, variables=None) -> datetime:
    if isinstance(node, StringValueNode):
        return parse_moment(node.value)
    raise ValueError("DateTime must be a string")


@date_scalar.serializer
def serialize_date(value: Any) -> str:
    if isinstance(value, datetime):
        return value.date().isoformat()
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, str):
        return parse_date(value).isoformat()
    raise TypeError(f"Date cannot represent {value!r}")


@date_scalar.value_parser
def parse_date(value: Any) -> date:
    if isinstance(value, str) and _DATE.match(value.strip()):
        return date.fromisoformat(value.strip())
    raise ValueError(f"Date must be YYYY-MM-DD, got {value!r}")


@date_scalar.literal_parser
def parse_date_literal(node, variables=None) -> date:
    if isinstance(node, StringValueNode):
        return parse_date(node.value)
    raise ValueError("Date must be a string")


bindables = [bigint, datetime_scalar, date_scalar]
