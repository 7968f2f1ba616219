"""How a destination is read and how a rate prefix is matched against it.

Kamailio sends the To-URI verbatim (`sip:39040123456@domain:5060`); API users send bare numbers
(`39040123123`). A prefix is matched in one of two ways:

* a *number prefix* (`39`, `+39`, or a URI prefix that is only a scheme and digits such as `sip:39` or
  `tel:+39`) is compared with the destination's number: the user part of the URI with the scheme, a
  leading `+`, URI parameters, the domain and visual separators removed;
* any other URI prefix (`sip:alice@`, `sip:39040@example.com`) is compared with the raw destination string.

When prefixes of both kinds match, the one with more characters after its scheme wins.
"""

from __future__ import annotations

import re

SCHEMES = ("sips:", "sip:", "tel:")
_VISUAL_SEPARATORS = str.maketrans("", "", "-.() ")


def scheme_length(text: str) -> int:
    """Length of the URI scheme (with its colon) that `text` starts with, or 0."""
    head = text[:5].lower()
    for scheme in SCHEMES:
        if head.startswith(scheme):
            return len(scheme)
    return 0


# The common shapes, `39040123`, `+39040123`, `sip:39040123@host;params`, `tel:+39040123;phone-context=...`,
# read in one step; anything else (separators, letters, other schemes) takes the general path below.
_PLAIN_NUMBER = re.compile(r"(?:[sS][iI][pP][sS]?:|[tT][eE][lL]:)?\+?([0-9]+)(?:[@;]|\Z)")
_plain_number = _PLAIN_NUMBER.match  # bound once: an attribute lookup less per call


def number_of(destination: str) -> str:
    """The dialled number (or user) of a destination URI or bare number."""
    plain = _plain_number(destination)
    if plain is not None:
        return plain.group(1)
    return read_number(destination)


def read_number(destination: str) -> str:
    """`number_of` for any destination (the general path, which the common shapes skip)."""
    text = destination.strip()
    text = text[scheme_length(text):]
    user = text.split("@", 1)[0].split(";", 1)[0]
    if user.startswith("+"):
        user = user[1:]
    compact = user.translate(_VISUAL_SEPARATORS)
    return compact if compact.isdigit() else user


def prefix_key(prefix: str) -> tuple[bool, str, int]:
    """(is_raw, key, specificity) of a rate prefix.

    Raw keys are compared with the raw destination; the others with `number_of(destination)`.
    """
    skip = scheme_length(prefix)
    rest = prefix[skip:]
    digits = rest[1:] if rest.startswith("+") else rest
    compact = digits.translate(_VISUAL_SEPARATORS)
    if compact.isdigit():
        return False, compact, len(compact)
    if skip == 0:
        return False, digits, len(digits)
    return True, prefix, len(rest)


def source_prefix_of(text: str | None, limit: int) -> str:
    """A rate's source prefix as stored: the digits the caller's number (`number_of(source)`) must start
    with, written as a number prefix is (`+39`, `sip:39`, `39 06` are `39`, `3906`); "" (or None): any
    origin. ValueError unless it is at most `limit` digits once normalized."""
    if text is None or not text.strip():
        return ""
    is_raw, key, _ = prefix_key(text.strip())
    if is_raw or not (key.isascii() and key.isdigit()):
        raise ValueError(f"source_prefix must be digits (a number prefix such as 39 or +39), got {text!r}")
    if len(key) > limit:
        raise ValueError(f"source_prefix must be at most {limit} digits, got {text!r}")
    return key
