"""Which catalog change each agent process has applied, so a writer can let them catch up before it publishes.

Read-your-writes is kept by publishing a committed change in Redis (`cache.publish_catalog`): an
authorization planned on an older catalog is refused as stale and its worker catches up first. If the
writer publishes as soon as it commits, every request arriving during the workers' catch-up waits for it.
So each process notes here the change it has applied (and when: a heartbeat at least every second), and
the writer waits, bounded, until every live process has reached its change, then publishes: the workers
catch up in the background, on the change's PostgreSQL notification, while they keep rating on the
previous catalog, which is still correct because the change has not been answered yet.

One hash, `rating:followers`: field `<host>:<pid>:<n>`, value `<version> <unix ms>`. A process not heard from
for `LIVE_FOR` seconds is not waited for (it is dead, or stuck in a long catch-up: its next request
still catches up by itself); one silent for `FORGET_AFTER` seconds is removed.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import socket
import time

FOLLOWERS = "rating:followers"
LIVE_FOR = 3.0
FORGET_AFTER = 60.0
SETTLE_TIMEOUT = 2.0  # the longest a writer waits before publishing anyway
_POLL = 0.005


_made = itertools.count(1)


def name() -> str:
    """A follower's own field (several in one process in tests)."""
    return f"{socket.gethostname()}:{os.getpid()}:{next(_made)}"


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


async def report(client, follower: str, version: int) -> None:
    """Notes that `follower` has applied catalog change `version` (and is alive)."""
    await client.hset(FOLLOWERS, follower, f"{version} {_now_ms()}")


async def forget(client, follower: str) -> None:
    await client.hdel(FOLLOWERS, follower)


def of_process(fields, pid: int, host: str | None = None) -> list[str]:
    """The followers among `fields` that process `pid` of this host (or `host`) noted."""
    head = f"{host or socket.gethostname()}:{pid}:"
    return [field for field in fields if field.startswith(head)]


async def forget_process(client, pid: int) -> list[str]:
    """Removes the entries of a process known dead (its supervisor saw it exit), so that no writer waits
    LIVE_FOR seconds for a process that will never catch up."""
    gone = of_process(await client.hkeys(FOLLOWERS), pid)
    if gone:
        await client.hdel(FOLLOWERS, *gone)
    return gone


def behind(entries: dict, version: int, now_ms: int) -> tuple[list[str], list[str]]:
    """(live followers below `version`, followers silent for FORGET_AFTER) of an HGETALL of FOLLOWERS."""
    waiting, gone = [], []
    for field, value in entries.items():  # the agent's clients decode replies (cache.connect)
        try:
            applied, seen = (int(part) for part in value.split())
        except ValueError:
            gone.append(field)
            continue
        silent = now_ms - seen
        if silent > FORGET_AFTER * 1000:
            gone.append(field)
        elif silent <= LIVE_FOR * 1000 and applied < version:
            waiting.append(field)
    return waiting, gone


async def settle(client, version: int, timeout: float = SETTLE_TIMEOUT) -> list[str]:
    """Waits until every live follower has applied `version`, at most `timeout` seconds. Returns the
    followers still behind (empty when all caught up)."""
    deadline = time.monotonic() + timeout
    while True:
        waiting, gone = behind(await client.hgetall(FOLLOWERS), version, _now_ms())
        if gone:
            await client.hdel(FOLLOWERS, *gone)
        if not waiting or time.monotonic() >= deadline:
            return waiting
        await asyncio.sleep(_POLL)
