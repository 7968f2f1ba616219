"""The state of a call in Redis, field by field: what cache/rating.lua writes and the agent reads (records,
the outbox writer, reconciliation, rerating, the management API). The two-letter names live here only, with
what each holds; tests/cache/test_call.py holds the library to them.

An open call (authorized, begun) is a hash of OPEN_FIELDS; a final one a hash of DOCUMENT (the library's
JSON document of the call, with DOCUMENT_KEYS) and META. Both keep META: the request fields the agent sent,
as one opaque JSON document (PARTY_DETAILS inside it). The outbox stream carries TXN entries (a final call:
DOCUMENT and META, and the balance moves it made: TXN_MOVE_FIELDS, read by `moves`) and LEDGER entries (a
balance move of its own, rating_balance: LEDGER_FIELDS).
"""

from __future__ import annotations

from typing import Any

import orjson

# --- an open call's hash, and the document's keys of the same meaning ------------------------------------
STATE = "st"  # authorized, begun, ended, refused, rolledback, cancelled, expired, recorded
CALL_ID = "ci"  # the call's identity (a transaction tag used again names a new call)
TENANT = "tn"
TAG = "tt"  # transaction_tag
AUTHORIZED_AT = "ta"  # ms
BEGUN_AT = "tb"  # ms
UNITS = "u"  # granted seconds
BALANCE = "bal"  # the caller's available balance when authorized
RESERVED = "rv"  # an open call's reservations, one per party, comma-separated (a party's RESERVED in documents)
PARTIES = "p"  # the parties as the agent sent them (PARTY_KEYS)
CLOCK_S, CLOCK_US = "ts", "tu"  # Redis' TIME when an open call's state was written
META = "meta"
OPEN_FIELDS = frozenset({STATE, CALL_ID, TENANT, TAG, AUTHORIZED_AT, BEGUN_AT, UNITS, BALANCE, RESERVED, PARTIES,
                         CLOCK_S, CLOCK_US, META})

# --- a final call -----------------------------------------------------------------------------------------
DOCUMENT = "doc"
ENDED_AT = "te"  # ms
DURATION = "d"  # billed seconds
REASON, REFUSED_TAG = "rs", "rt"  # refusal reason and the account it names
CALL_KEY = "ck"
RECORDED = "rec"  # 1: a one-shot record
LOST = "lost"  # 1: ended from PostgreSQL's last state after Redis lost the call
REMOVED = "removed"  # 1: a rolled-back record (gone for readers)
CLOCK_MS, CLOCK_MICROS = "cm", "cu"  # CLOCK_S/CLOCK_US in documents: ms, and the µs within it
AUTO_ENDED = "auto"  # 1: ended by the agent's timer (units and grace used up)
LOST_BEGIN = "lb"  # 1: the begin never came; charged from the begin its end carried
DOCUMENT_KEYS = frozenset({STATE, CALL_ID, TENANT, TAG, AUTHORIZED_AT, BEGUN_AT, UNITS, BALANCE, PARTIES, ENDED_AT,
                           DURATION, REASON, REFUSED_TAG, CALL_KEY, RECORDED, LOST, REMOVED, CLOCK_MS, CLOCK_MICROS,
                           AUTO_ENDED, LOST_BEGIN})

# --- a party (PARTIES) --------------------------------------------------------------------------------------
ACCOUNT_KEY, OPEN_KEY, OTHER_OPEN_KEY = "k", "o", "ox"  # its Redis keys: balance, open calls here / other way
ACCOUNT = "a"  # account_tag
CREDIT = "cr"
MAX_TOTAL, MAX_INBOUND, MAX_OUTBOUND = "mt", "mi", "mo"  # -1: no limit
INBOUND, PRIMARY, CHARGED = "i", "pr", "c"  # 0/1 each; CHARGED: its balance pays
SCHEDULE = "r"  # the kernel's price schedule (agent/pricing/rate.py)
FEE = "f"  # what the call charged it (final calls)
PARTY_KEYS = frozenset({ACCOUNT_KEY, OPEN_KEY, OTHER_OPEN_KEY, ACCOUNT, CREDIT, MAX_TOTAL, MAX_INBOUND, MAX_OUTBOUND,
                        INBOUND, PRIMARY, CHARGED, SCHEDULE, FEE, RESERVED})

# --- META --------------------------------------------------------------------------------------------------
PARTY_DETAILS = "pm"  # per party: {DETAIL_RATE: its rate snapshot, DETAIL_TAGS: its account's tags}
DETAIL_RATE, DETAIL_TAGS = "rate", "tg"
PLANNED_ON = "pv"  # the catalog version the call was planned on (records keep it in their rate snapshot)

# --- the outbox ---------------------------------------------------------------------------------------------
ENTRY = "e"
TXN, LEDGER = "txn", "ledger"
# a LEDGER entry: TENANT, ACCOUNT, MOVE (set, adjust, charge, ...), AMOUNT, BALANCE (after the move), TAG (the
# call's or the move's reference), MOVED_AT (ms)
MOVE, AMOUNT, MOVED_AT = "k", "amt", "at"
LEDGER_FIELDS = (ENTRY, TENANT, ACCOUNT, MOVE, AMOUNT, BALANCE, TAG, MOVED_AT)
# a TXN entry of a call that moved balances (charged, refunded) carries them, written with the call at once:
# TENANT, MOVES ([account_tag, move, amount, balance after] per move, JSON) and MOVED_AT
MOVES = "mv"
TXN_FIELDS = (ENTRY, DOCUMENT, META)
TXN_MOVE_FIELDS = (TENANT, MOVES, MOVED_AT)

_INTEGERS = (AUTHORIZED_AT, UNITS, BALANCE, BEGUN_AT)


def identity(doc: dict) -> tuple[str | None, str | None, str]:
    """(tenant, transaction_tag, call identity): what tells one call's records from another's."""
    return doc.get(TENANT), doc.get(TAG), doc.get(CALL_ID) or ""


def decode(fields: dict[str, str]) -> tuple[dict, dict]:
    """(document, meta) from a call hash or an outbox entry: a final call's document, or an open call's
    fields read into the same document."""
    meta = orjson.loads(fields.get(META) or "{}")
    if DOCUMENT in fields or STATE not in fields:
        return orjson.loads(fields.get(DOCUMENT) or "{}"), meta
    doc: dict[str, Any] = {STATE: fields[STATE], CALL_ID: fields.get(CALL_ID), TENANT: fields.get(TENANT),
                           TAG: fields.get(TAG), REASON: "", REFUSED_TAG: ""}
    for name in _INTEGERS:
        if fields.get(name):
            doc[name] = int(fields[name])
    if fields.get(CLOCK_S):
        seconds, micros = int(fields[CLOCK_S]), int(fields.get(CLOCK_US) or 0)
        doc[CLOCK_MS], doc[CLOCK_MICROS] = seconds * 1000 + micros // 1000, micros % 1000
    parties = orjson.loads(fields.get(PARTIES) or "[]")
    for party, reserved in zip(parties, (fields.get(RESERVED) or "").split(",")):
        if isinstance(party, dict) and reserved:
            party[RESERVED] = int(reserved)
    doc[PARTIES] = parties
    return doc, meta


def moves(fields: dict[str, str], doc: dict) -> list[dict[str, Any]]:
    """The balance moves a TXN entry carries (none for most states), each as a LEDGER entry's fields would
    say it (integers as ints), `doc` being the entry's document (its TAG)."""
    if not fields.get(MOVES):
        return []
    tenant, at = fields[TENANT], int(fields[MOVED_AT])
    return [{TENANT: tenant, ACCOUNT: account, MOVE: move, AMOUNT: int(amount), BALANCE: int(balance),
             TAG: doc.get(TAG), MOVED_AT: at} for account, move, amount, balance in orjson.loads(fields[MOVES])]
