"""Redis Cluster: the live state spread over several masters by slot group (cache.GROUPS, README "Scaling out").

The address is a URL like the others: `redis+cluster://[user:password@]host:port[,host:port...]` (`--redis-cluster`
makes it), naming seed nodes: any of them tells the rest. redis-py's RedisCluster serves every client but the hot
path (management, housekeeping, the outbox writer). The hot path keeps one auto-pipelined connection per master
(connection.PipelinedConnection) and sends each command to the master of its first key's slot, from a slot map
read with CLUSTER SLOTS: a command costs one slot computation (redis-py's key_slot) and a list lookup more than
on one server. A reply MOVED (the slot moved, or its master failed over) refreshes the map and sends the command
to the node named; ASK (a slot being migrated) sends ASKING and the command to the node named, once. A master
lost fails its commands with connection errors (503, as with one server) and refreshes the map, so the replica
promoted in its place is used as soon as the cluster names it.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable
from urllib.parse import quote

from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .connection import PipelinedConnection
from .sentinel import addresses

SCHEME = "redis+cluster"
_REDIRECTS = 5  # MOVED/ASK answers followed for one command before it fails (a cluster resharding meanwhile)
_REFRESH_EVERY = 0.1  # seconds between two slot map refreshes asked for by failures


@dataclass(frozen=True)
class Target:
    nodes: tuple[tuple[str, int], ...]
    username: str | None = None
    password: str | None = None


def is_cluster(url: str) -> bool:
    return url.startswith(f"{SCHEME}://")


def url_of(nodes: str) -> str:
    """The URL of the cluster the comma-separated seed `nodes` (host:port) belong to."""
    return f"{SCHEME}://{nodes}"


def parse(url: str) -> Target:
    nodes, username, password, path = addresses(url, SCHEME, "cluster node")
    if not nodes or path.strip("/"):
        raise ValueError(f"expected {SCHEME}://host:port[,host:port...] (a cluster has database 0 only), not {url!r}")
    return Target(tuple(nodes), username, password)


def connect(url: str, timeout: float, **options) -> RedisCluster:
    """A redis-py cluster client (cache.connect's options) that fails fast like the others: a command to a lost
    master raises at once, and the next one reads the slot map again."""
    target = parse(url)
    return RedisCluster(
        startup_nodes=[ClusterNode(host, port) for host, port in target.nodes],
        username=target.username, password=target.password,
        socket_timeout=timeout, socket_connect_timeout=timeout, retry=Retry(NoBackoff(), 0), **options,
    )


def first_key(command: tuple) -> Any:
    """The key a hot-path command is routed by: an FCALL's first key, else the command's first argument."""
    return command[3] if command[0] == "FCALL" else command[1]


class ClusterConnection:
    """`await connection.call(*command)` over a cluster: PipelinedConnection's interface, one per master."""

    def __init__(self, url: str, timeout: float, on_batch: Callable[[float, int], None] | None = None,
                 batch: int = 12, replicas: int = 0) -> None:
        self.target = parse(url)
        self.timeout = timeout
        self._options = (on_batch, batch, replicas)
        self.slots: list[str | None] = [None] * REDIS_CLUSTER_HASH_SLOTS  # slot -> "host:port" of its master
        self.nodes: dict[str, PipelinedConnection] = {}
        self._probes: dict[str, PipelinedConnection] = {}  # for CLUSTER SLOTS: no WAIT, any node (replicas too)
        self.known = [f"{host}:{port}" for host, port in self.target.nodes]  # asked for the map, in order
        self._refreshing: asyncio.Future | None = None
        self._refreshed = 0.0

    def _url(self, address: str) -> str:
        host, _, port = address.rpartition(":")
        credentials = ""
        if self.target.password:
            credentials = f"{quote(self.target.username or '', safe='')}:{quote(self.target.password, safe='')}@"
        return f"redis://{credentials}{host}:{port}/0"

    def node(self, address: str) -> PipelinedConnection:
        """The hot path's connection to a master."""
        found = self.nodes.get(address)
        if found is None:
            found = self.nodes[address] = PipelinedConnection(self._url(address), self.timeout, *self._options)
        return found

    def _probe(self, address: str) -> PipelinedConnection:
        found = self._probes.get(address)
        if found is None:
            found = self._probes[address] = PipelinedConnection(self._url(address), self.timeout, batch=1)
        return found

    def call(self, *command: Any) -> Awaitable[Any]:
        """The reply, to await: a plain future when the slot's master is known and connected."""
        key = first_key(command)
        address = self.slots[key_slot(key.encode() if isinstance(key, str) else key)]
        if address is None:
            return self._call_mapped(command)
        return self.node(address).call(*command)

    async def _call_mapped(self, command: tuple) -> Any:
        await self.refresh(force=True)
        key = first_key(command)
        address = self.slots[key_slot(key.encode() if isinstance(key, str) else key)]
        if address is None:
            raise RedisConnectionError(f"no Redis Cluster master serves the slot of {key!r}")
        return await self.node(address).call(*command)

    async def redirected(self, error: ResponseError, command: tuple) -> Any:
        """Follows a MOVED or ASK answer (and those that follow it); a cluster that cannot serve the slot now
        (CLUSTERDOWN, TRYAGAIN) is unavailable, as a lost server is."""
        for _ in range(_REDIRECTS):
            kind, _, rest = str(error).partition(" ")
            if kind in ("CLUSTERDOWN", "TRYAGAIN"):
                self.lost()
                raise RedisConnectionError(f"Redis Cluster cannot serve the command now: {error}") from None
            slot, _, address = rest.partition(" ")
            if kind not in ("MOVED", "ASK") or not address or not slot.isdigit():
                raise error
            try:
                if kind == "MOVED":
                    self.slots[int(slot)] = address
                    self.lost()  # more slots may have moved with it
                    return await self.node(address).call(*command)
                _, reply = await self.node(address).call_together(("ASKING",), command)
                if isinstance(reply, Exception):
                    raise reply
                return reply
            except ResponseError as again:
                error = again
        raise RedisConnectionError(f"Redis Cluster redirected a command {_REDIRECTS} times: {error}")

    def lost(self) -> None:
        """A command failed for the topology (a master lost, a slot moved): the map is read again soon."""
        if self._refreshing is None and time.monotonic() - self._refreshed >= _REFRESH_EVERY:
            self._refreshing = asyncio.ensure_future(self._refresh())
            self._refreshing.add_done_callback(self._refresh_done)

    def _refresh_done(self, future: asyncio.Future) -> None:
        self._refreshing = None
        if not future.cancelled():
            future.exception()  # failures are seen by the commands; a refresh is tried again on the next one

    async def refresh(self, force: bool = False) -> None:
        """Reads the slot map now (once for all the callers that need it at the same time)."""
        if self._refreshing is None:
            if not force and time.monotonic() - self._refreshed < _REFRESH_EVERY:
                return
            self._refreshing = asyncio.ensure_future(self._refresh())
            self._refreshing.add_done_callback(self._refresh_done)
        await asyncio.shield(self._refreshing)

    async def _refresh(self) -> None:
        failures = []
        for address in list(self.known):
            try:
                shards = await self._probe(address).call("CLUSTER", "SLOTS")
            except (RedisConnectionError, RedisTimeoutError, ResponseError, OSError, asyncio.TimeoutError) as exc:
                failures.append(f"{address}: {exc}")  # gone, stuck, or not a cluster node: the next one
                continue
            slots: list[str | None] = [None] * REDIS_CLUSTER_HASH_SLOTS
            seen = []
            for start, end, master, *replicas in shards:
                host = master[0] or address.rpartition(":")[0]  # "": the node asked (a cluster of one address)
                owner = f"{host}:{master[1]}"
                slots[start:end + 1] = [owner] * (end - start + 1)
                seen += [owner, *(f"{r[0] or host}:{r[1]}" for r in replicas)]
            self.slots = slots
            # nodes asked first next time: the cluster's own, then seeds no longer in it (a node replaced)
            self.known = list(dict.fromkeys([*seen, *self.known]))
            for gone in set(self.nodes) - set(slots):  # masters no more (a failover demoted them)
                await self.nodes.pop(gone).close()
            self._refreshed = time.monotonic()
            return
        self._refreshed = time.monotonic()
        raise RedisConnectionError(f"no Redis Cluster node answered CLUSTER SLOTS: {'; '.join(failures)}")

    async def close(self) -> None:
        if self._refreshing is not None:
            self._refreshing.cancel()
        for node in (*self.nodes.values(), *self._probes.values()):
            await node.close()
        self.nodes.clear()
        self._probes.clear()
