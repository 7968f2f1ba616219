"""A busy host's cores go to the workers first: PostgreSQL backends of a process that may wait are ranked like it, and
the processes of a host take turns at the work they all do on the same event."""

import asyncio
import os
import sys
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


_HOLDER = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
print("held", flush=True)
sys.stdin.readline()
"""


async def _holder(path: Path) -> asyncio.subprocess.Process:
    """Another process of the host, in its turn until told to finish."""
    holder = await asyncio.create_subprocess_exec(sys.executable, "-c", _HOLDER, str(path),
                                                  stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
    assert await holder.stdout.readline() == b"held\n"
    return holder


async def test_processes_sharing_a_turn_file_do_their_work_one_after_the_other(tmp_path):
    turns = tmp_path / ".turns"
    holder = await _holder(turns)
    entered = asyncio.Event()

    async def work():
        async with scheduling.one_at_a_time(turns, most=60) as held:
            entered.set()
            return held

    waiting = asyncio.create_task(work())
    for _ in range(20):  # however long it waits, it does not start while the other process has the turn
        await asyncio.sleep(scheduling._TURN_POLL)
        assert not entered.is_set()
    holder.stdin.write(b"done\n")
    await holder.wait()
    assert await waiting is True
    async with scheduling.one_at_a_time(turns) as held:  # given back: the next one gets it at once
        assert held


async def test_a_turn_that_does_not_come_in_time_or_cannot_be_taken_lets_the_work_run_anyway(tmp_path):
    turns = tmp_path / ".turns"
    holder = await _holder(turns)
    try:
        async with scheduling.one_at_a_time(turns, most=0.05) as held:
            assert held is False
    finally:
        holder.stdin.write(b"done\n")
        await holder.wait()
    async with scheduling.one_at_a_time(tmp_path / "missing" / ".turns") as held:
        assert held is False
