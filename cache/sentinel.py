"""A Redis master found through Redis Sentinel, so a failover moves the agent to the new master by itself.

The address is a URL like the others: `redis+sentinel://[user:password@]host:port[,host:port...]/<master>[/<db>]`
(`--redis-sentinel` and `--redis-sentinel-master` make it). The sentinels are asked for the master's address at
every (re)connection, both by redis-py's clients (`Sentinel.master_for`) and by the hot path's pipelined
connection; a master demoted to a replica answers writes with READONLY, which drops the connection, so the
next command connects to the new master. Credentials are the master's; the sentinels are asked without any.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff

SCHEME = "redis+sentinel"


@dataclass(frozen=True)
class Target:
    sentinels: tuple[tuple[str, int], ...]
    master: str
    db: int = 0
    username: str | None = None
    password: str | None = None


def is_sentinel(url: str) -> bool:
    return url.startswith(f"{SCHEME}://")


def url_of(sentinels: str, master: str, db: int = 0) -> str:
    """The URL of `master` known to the comma-separated `sentinels` (host:port)."""
    return f"{SCHEME}://{sentinels}/{master}/{db}"


def addresses(url: str, scheme: str, what: str) -> tuple[list[tuple[str, int]], str | None, str | None, str]:
    """The host:port list, user name, password and path of a `scheme`://[user:password@]host:port,... URL
    (Sentinel's and Cluster's, cache/cluster.py); `what` names a host in errors."""
    parts = urlsplit(url)
    if parts.scheme != scheme:
        raise ValueError(f"not a {scheme}:// URL: {url!r}")
    credentials, _, hosts = parts.netloc.rpartition("@")
    username, _, password = credentials.partition(":") if credentials else ("", "", "")
    found = []
    for host in filter(None, (part.strip() for part in hosts.split(","))):
        name, _, port = host.rpartition(":")
        if not name or not port.isdigit():
            raise ValueError(f"a {what} must be host:port, not {host!r}")
        found.append((name.strip("[]"), int(port)))
    return found, unquote(username) or None, unquote(password) or None, parts.path


def parse(url: str) -> Target:
    sentinels, username, password, path = addresses(url, SCHEME, "sentinel")
    names = [p for p in path.split("/") if p]
    if not sentinels or not names or len(names) > 2 or (len(names) == 2 and not names[1].isdigit()):
        raise ValueError(f"expected {SCHEME}://host:port[,host:port...]/<master>[/<db>], not {url!r}")
    return Target(tuple(sentinels), unquote(names[0]), int(names[1]) if len(names) == 2 else 0, username, password)


def _sentinel(target: Target, timeout: float) -> Sentinel:
    return Sentinel(list(target.sentinels), socket_timeout=timeout, socket_connect_timeout=timeout,
                    retry=Retry(NoBackoff(), 0))


async def master_address(target: Target, timeout: float) -> tuple[str, int]:
    """The master's (host, port) as the first sentinel that knows a healthy one says."""
    return await _sentinel(target, timeout).discover_master(target.master)


def connect(url: str, timeout: float, **options):
    """A redis-py client of the master (cache.connect's options), found again after a failover."""
    target = parse(url)
    return _sentinel(target, timeout).master_for(  # the timeouts and retry policy: _sentinel's
        target.master, db=target.db, username=target.username, password=target.password, **options)
