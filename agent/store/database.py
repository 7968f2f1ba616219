"""Connecting to PostgreSQL and bringing its schema up to date.

Migrations are the numbered SQL files beside this module, applied in order, each in its own transaction,
under an advisory lock so that several agents starting together apply each one once.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from importlib.resources import files
from typing import Iterator

import asyncpg

from .. import scheduling

log = logging.getLogger(__name__)

CATALOG_CHANNEL = "rating_catalog"
_MIGRATION_LOCK = 0x5241_5449  # "RATI"


def migrations() -> list[tuple[int, str, str]]:
    folder = files(__package__).joinpath("migrations")
    found = []
    for entry in folder.iterdir():
        if entry.name.endswith(".sql"):
            number = int(entry.name.split("_", 1)[0])
            found.append((number, entry.name, entry.read_text()))
    return sorted(found)


async def migrate(connection: asyncpg.Connection) -> list[str]:
    """Applies the migrations this database lacks; returns their names."""
    applied: list[str] = []
    await connection.execute("SELECT pg_advisory_lock($1)", _MIGRATION_LOCK)
    try:
        await connection.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {row["version"] for row in await connection.fetch("SELECT version FROM schema_migrations")}
        for number, name, sql in migrations():
            if number in done:
                continue
            async with connection.transaction():
                await connection.execute(sql)
                await connection.execute(
                    "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", number, name
                )
            log.info("applied migration %s", name)
            applied.append(name)
    finally:
        await connection.execute("SELECT pg_advisory_unlock($1)", _MIGRATION_LOCK)
    return applied


@contextlib.contextmanager
def deadline(connection, seconds: float) -> Iterator[None]:
    """Drops `connection` if the block still runs after `seconds`. A query on a connection whose peer
    vanished without a word (half-open TCP) waits forever, and so would a cancellation or a ROLLBACK sent
    on it; once terminated, every await on it fails at once (asyncpg.InterfaceError) and the caller retries."""
    handle = asyncio.get_running_loop().call_later(seconds, connection.terminate)
    try:
        yield
    finally:
        handle.cancel()


async def _ranked_like_us(connection: asyncpg.Connection, nice: int) -> None:
    row = await connection.fetchrow("SELECT pid, backend_start FROM pg_stat_activity WHERE pid = pg_backend_pid()")
    if row is not None and row["backend_start"] is not None:
        scheduling.backend_apart(row["pid"], row["backend_start"], nice)


async def _nothing_to_reset(_connection: asyncpg.Connection) -> None:
    pass  # asyncpg still ends an open transaction and drops listeners; no statement is sent


async def create_pool(url: str, stateless: bool = False, **kwargs) -> asyncpg.Pool:
    """A pool whose backends, when the database is on this host, run at this process's nice (agent/scheduling.py):
    what the manager or a deck build asks of PostgreSQL waits for the workers as they do. `stateless`: its users
    leave no session state (no SET, LISTEN, cursor or session lock), so a connection goes back to the pool
    without the reset statement asyncpg sends by default (a round trip per use: a worker's catch-ups)."""
    nice = scheduling.own_nice()
    init = functools.partial(_ranked_like_us, nice=nice) if nice > 0 else None
    return await asyncpg.create_pool(url, min_size=1, max_size=kwargs.pop("max_size", 8), init=init,
                                     reset=_nothing_to_reset if stateless else None, **kwargs)
