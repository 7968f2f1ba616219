"""A busy host's cores go to the workers first: PostgreSQL backends of a process that may wait are ranked like it."""

import os
from datetime import datetime, timedelta, timezone
from pathlib import Path

import asyncpg

from agent import scheduling

_BACKEND = "SELECT pid, backend_start FROM pg_stat_activity WHERE pid = pg_backend_pid()"


def _autogroup_nice(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/autogroup").read_text().split("nice")[1])
    except (OSError, IndexError, ValueError):
        return None  # a kernel without autogroups


async def test_a_local_backend_is_ranked_at_the_nice_asked(postgres_server):
    connection = await asyncpg.connect(postgres_server.url)
    try:
        row = await connection.fetchrow(_BACKEND)
        assert scheduling.backend_apart(row["pid"], row["backend_start"], 7)
        assert os.getpriority(os.PRIO_PROCESS, row["pid"]) == 7
        assert _autogroup_nice(row["pid"]) in (7, None)
        assert await connection.fetchval("SELECT 1") == 1  # the backend serves on
    finally:
        await connection.close()


async def test_a_backend_that_is_not_the_local_process_of_that_pid_is_left_alone(postgres_server):
    """A database on another host: the pid names some other process here, or one started at another time."""
    connection = await asyncpg.connect(postgres_server.url)
    try:
        row = await connection.fetchrow(_BACKEND)
        before = os.getpriority(os.PRIO_PROCESS, row["pid"])
        assert not scheduling.backend_apart(row["pid"], row["backend_start"] - timedelta(hours=1), 7)
        assert os.getpriority(os.PRIO_PROCESS, row["pid"]) == before
    finally:
        await connection.close()
    started = scheduling._started(os.getpid())
    assert started is not None and not started[0].startswith("postgres")
    assert not scheduling.backend_apart(os.getpid(), datetime.fromtimestamp(started[1], timezone.utc), 7)
