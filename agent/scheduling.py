"""Where a busy host's cores go first: to the workers answering Kamailio.

Processes whose work may wait (the manager, deck builds) run at a higher nice. Where the kernel groups
processes by session (autogroups: a host without a service manager's cgroups), a nice value ranks a process
only within its session, so each of ours leads a session of its own (`apart`). PostgreSQL makes every
backend a session of its own too: a backend busy with a deck import for the manager would otherwise take
as much CPU as all the workers together. When the database runs on this host and we may, the backends of a
process that may wait are ranked like it (`backend_apart`); elsewhere (another host, another user without
CAP_SYS_NICE) they are left as they are, and the service manager's CPU weights are the operator's tool.

Work that every process of a host does on the same event (each one's catch-up of a catalog change) takes
turns host-wide (`one_at_a_time`), so a change does not put every process on the cores at the same moment.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import time
from datetime import datetime
from pathlib import Path
from typing import AsyncIterator

log = logging.getLogger(__name__)
_SAME_START = 1.5  # seconds: a local process and a backend started this close together are the same one


def own_nice() -> int:
    return os.getpriority(os.PRIO_PROCESS, 0)


def _set_nice(pid: int, nice: int) -> bool:
    """`pid` (0: this process) and its autogroup at `nice`; whether the process's own nice could be set."""
    try:
        os.setpriority(os.PRIO_PROCESS, pid, nice)
    except OSError:
        return False
    with contextlib.suppress(OSError):
        Path(f"/proc/{pid or 'self'}/autogroup").write_text(str(nice))
    return True


def apart(nice: int = 0) -> None:
    """Makes this process a scheduling group of its own at `nice` (or the nice it has, if higher)."""
    with contextlib.suppress(OSError):
        os.setsid()
    nice = max(nice, own_nice())
    if nice:
        _set_nice(0, nice)


def _started(pid: int) -> tuple[str, float] | None:
    """(command name, start as Unix time) of local process `pid`, None if there is none."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        boot = next(int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime "))
        name, rest = stat[stat.index("(") + 1:stat.rindex(")")], stat[stat.rindex(")") + 2:].split()
        return name, boot + int(rest[19]) / os.sysconf("SC_CLK_TCK")  # field 22: start time, in clock ticks
    except (OSError, StopIteration, ValueError, IndexError):  # no such process, or no Linux /proc
        return None


def backend_apart(pid: int, started: datetime, nice: int) -> bool:
    """Ranks PostgreSQL backend `pid` (its `backend_start`: `started`) at `nice` if it runs on this host;
    whether it did. The start time tells a backend of a database elsewhere (whose pid means nothing here, or
    another process) from one of this host's."""
    if nice <= 0:
        return False
    local = _started(pid)
    if local is None or not local[0].startswith(("postgres", "postmaster")) \
            or abs(local[1] - started.timestamp()) > _SAME_START:
        return False
    try:
        if os.getpriority(os.PRIO_PROCESS, pid) >= nice:
            return True
    except OSError:  # gone meanwhile
        return False
    done = _set_nice(pid, nice)
    if not done:
        log.debug("could not set the nice of PostgreSQL backend %d (not permitted): left as it is", pid)
    return done


_TURN_POLL = 0.002  # seconds between two tries at a turn another process holds


@contextlib.asynccontextmanager
async def one_at_a_time(path: str | os.PathLike, most: float = 1.0) -> AsyncIterator[bool]:
    """The body runs while this process holds the host-wide lock file `path` (created if missing), so the
    processes that share it run theirs one after the other; whether it got the lock. A turn is a courtesy,
    never a condition: after `most` seconds of waiting, or without the file (a folder it may not write), the
    body runs all the same."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError:
        fd = None
    held = False
    try:
        deadline = time.monotonic() + most
        while fd is not None and not held and time.monotonic() < deadline:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # the kernel lets go of it if the process dies
                held = True
            except BlockingIOError:
                await asyncio.sleep(_TURN_POLL)
        yield held
    finally:
        if fd is not None:
            os.close(fd)  # and the lock with it
