"""The catalog change log (migration 003): written in the transaction of every catalog write, read by every
agent to apply changes one by one, and its position published in Redis for read-your-writes.

A writer appends its rows at the end of its transaction under an advisory lock held until commit, so a
row's sequence number is also its commit order: an agent that has applied every row up to N has missed
none below it. After commit the writer publishes N in Redis (`cache.publish_catalog`); every
authorization compares the version its worker rated with against it, atomically with the decision, and a
stale worker catches up before answering (agent/catalog_keeper.py).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Iterable

import asyncpg
import orjson

from .database import CATALOG_CHANNEL

_LOCK = 0x5241_5443  # "RATC"
KINDS = ("account", "carrier", "rate", "bulk", "deck")
# Changes a follower applies by reading their rows as they are now, outside any snapshot: a newer state of
# an account or carrier than the last change read is never older than what a writer answered, and a later
# change of it reads it again (a bulk change reads nothing: its deck follows as a deck change). Rates are
# read in one consistent cut with the deck they lie over.
READ_AS_THEY_ARE = frozenset({"account", "carrier", "bulk"})


@dataclass(frozen=True)
class Change:
    seq: int
    tenant: str
    kind: str
    subject: Any
    at: datetime | None = None


class Recorder:
    """Collects the changes of one transaction; `write` appends them just before commit."""

    def __init__(self) -> None:
        self._pending: dict[tuple[str, str], dict] = {}  # subjects by a hashable form, in order
        self._bulk: set[str] = set()  # kept past `write`, for the caller
        self._accounts: list[tuple[str, str]] | None = None  # likewise (accounts_alone)

    def add(self, tenant: str, kind: str, *subjects: Any) -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown change kind {kind!r}")
        found = self._pending.setdefault((tenant, kind), {})
        for subject in subjects:
            found.setdefault(json.dumps(subject, sort_keys=True), subject)

    def __bool__(self) -> bool:
        return bool(self._pending)

    def rows_of(self, tenant: str, kinds: Iterable[str] = ("rate", "bulk")) -> int:
        """How many rows `write` will append for `tenant` of these kinds (one per kind)."""
        return sum(1 for t, kind in self._pending if t == tenant and kind in kinds)

    @property
    def bulk(self) -> set[str]:
        """Tenants changed in bulk: their decks must be built again before the change is published."""
        return {tenant for tenant, kind in self._pending if kind == "bulk"} | self._bulk

    @property
    def accounts_alone(self) -> list[tuple[str, str]] | None:
        """The (tenant, account_tag) changed, when accounts are all that changed: published in those
        accounts only (cache.publish_catalog), so calls of other accounts need not catch up; else None."""
        if self._accounts is not None:
            return self._accounts
        if not self._pending or any(kind != "account" for _, kind in self._pending):
            return None
        return [(tenant, tag) for (tenant, _), found in self._pending.items() for tag in found.values()]

    async def write(self, connection: asyncpg.Connection) -> int:
        """Appends the rows (one per tenant and kind); returns the last sequence number, 0 if none."""
        if not self._pending:
            return 0
        self._bulk = self.bulk
        self._accounts = self.accounts_alone
        await connection.execute("SELECT pg_advisory_xact_lock($1)", _LOCK)
        last = 0
        for (tenant, kind), found in self._pending.items():
            subjects = list(found.values())
            subject = subjects[0] if kind == "deck" else subjects
            last = await connection.fetchval(
                "INSERT INTO catalog_changes (tenant, kind, subject, size) VALUES ($1, $2, $3::jsonb, $4)"
                " RETURNING seq", tenant, kind, json.dumps(subject), len(subjects) if kind == "rate" else 0)
        await connection.execute("SELECT pg_notify($1, $2)", CATALOG_CHANNEL, str(last))
        self._pending.clear()
        return last


def of_write(recorder: Recorder, table: str, record: dict | None, old: dict | None) -> None:
    """The changes rating must learn from one management write of a catalog table (`record` None: a delete)."""
    for state in (old, record):
        if state is None:
            continue
        tenant = state["tenant"]
        if table == "accounts":
            recorder.add(tenant, "account", state["account_tag"])
        elif table == "carriers":
            recorder.add(tenant, "carrier", state["carrier_tag"])
        elif table == "pricelist_rates":
            recorder.add(tenant, "rate", [state["pricelist_tag"], state["carrier_tag"], state["prefix"]])
    renamed_or_deleted = old is not None and (record is None or any(
        old[name] != record[name] for name in ("tenant", "carrier_tag", "pricelist_tag") if name in old))
    if table in ("carriers", "pricelists") and renamed_or_deleted:
        # the rates of the carrier or pricelist follow it (ON UPDATE/DELETE CASCADE): a new deck
        recorder.add(old["tenant"], "bulk")
        if record is not None:
            recorder.add(record["tenant"], "bulk")


async def record(connection: asyncpg.Connection, tenant: str, kind: str, *subjects: Any) -> int:
    """One change, appended now (the caller's transaction must end soon: the lock is held until commit)."""
    recorder = Recorder()
    recorder.add(tenant, kind, *subjects)
    return await recorder.write(connection)


async def lock_rates(connection: asyncpg.Connection) -> None:
    """In a repeatable-read transaction that reads rates, before its first query (which takes its snapshot):
    a large deck import swaps a pricelist's partition of pricelist_rates (migration 012), which is not
    MVCC-safe; holding this lock, the transaction's snapshot comes after any swap it could meet, and a swap
    waits for the transaction to end. ACCESS SHARE: it waits for no reader or row writer, only for a swap."""
    await connection.execute("LOCK TABLE pricelist_rates IN ACCESS SHARE MODE")


async def last_seq(connection: asyncpg.Connection) -> int:
    return await connection.fetchval("SELECT coalesce(max(seq), 0) FROM catalog_changes")


async def since(connection: asyncpg.Connection, seq: int, tenant: str | None = None,
                kinds: Iterable[str] = KINDS) -> list[Change]:
    rows = await connection.fetch(
        "SELECT seq, tenant, kind, subject, at FROM catalog_changes WHERE seq > $1"
        " AND ($2::text IS NULL OR tenant = $2) AND kind = ANY($3::text[]) ORDER BY seq",
        seq, tenant, list(kinds))
    return [Change(r["seq"], r["tenant"], r["kind"], orjson.loads(r["subject"]), r["at"]) for r in rows]
