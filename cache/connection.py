"""The hot path's Redis connection: hiredis packing and parsing on one asyncio connection.

redis-py's pipeline costs a pool checkout, a pipeline object and a timeout scope per batch, which
profiling showed as the largest share of the agent's own time per request. This connection writes the
commands submitted during one event-loop tick together and matches replies to callers in order (Redis
answers in order on a connection). A write goes out as soon as `batch` commands wait, not only at the end
of the tick: when many requests arrive at once, Redis then works on the first ones while the worker still
prices the next, instead of the two taking turns (measured with 32 concurrent clients: about 1.4x the
throughput of one write per tick at 8 to 16 commands per write; 24 and more fall back into taking turns).
A watchdog aborts the connection when the oldest reply is overdue, failing every waiting caller at once,
so a stalled Redis costs at most `timeout`. The next command reconnects. Everything else (the outbox writer, administration) uses redis-py.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import Any, Awaitable, Callable

import hiredis
from redis.asyncio.connection import parse_url
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from . import sentinel


class _Protocol(asyncio.Protocol):
    def __init__(self, timeout: float, on_batch: Callable[[float, int], None] | None, batch: int,
                 replicas: int = 0) -> None:
        self.timeout = timeout
        self.batch = batch
        self.on_batch = on_batch
        self.replicas = replicas
        # each write ends with WAIT: its replies are held until as many replicas have it (or none of them is given)
        self._wait = hiredis.pack_command(("WAIT", replicas, max(1, int(timeout * 500)))) if replicas else b""
        self.reader = hiredis.Reader(replyError=ResponseError, encoding="utf-8")
        self.waiting: deque[asyncio.Future] = deque()
        self.batches: deque[list] = deque()  # [replies still due, time written, size] per write
        self.buffer: list[bytes] = []
        self.transport: asyncio.Transport | None = None
        self.failure: Exception | None = None
        self.loop = asyncio.get_running_loop()
        self._watchdog: asyncio.TimerHandle | None = None

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self._watchdog = self.loop.call_later(self.timeout / 2, self._check)

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        while True:
            reply = self.reader.gets()
            if reply is False:
                return
            future = self.waiting.popleft()
            batch = self.batches[0]
            batch[0] -= 1
            if batch[0] == 0:
                self.batches.popleft()
                if self.on_batch is not None:
                    self.on_batch(time.perf_counter() - batch[1], batch[2])
            if self.replicas:
                if batch[0] > 0:
                    batch[3].append((future, reply))
                    continue
                replicated = isinstance(reply, int) and reply >= self.replicas
                missing = None if replicated else RedisConnectionError(
                    f"written on the master but on {reply} of {self.replicas} replicas within the timeout")
                for held, answer in batch[3]:
                    self._deliver(held, answer if missing is None or isinstance(answer, ResponseError) else missing)
                continue
            self._deliver(future, reply)

    def _deliver(self, future: asyncio.Future, reply: Any) -> None:
        if future.done():
            return
        if not isinstance(reply, Exception):
            future.set_result(reply)
            return
        future.set_exception(reply)
        if str(reply).startswith("READONLY") and self.failure is None:
            # a replica now (a failover demoted it): the next command connects to the master again
            self.failure = RedisConnectionError(f"Redis is a replica now: {reply}")
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.failure is None:
            self.failure = RedisConnectionError(f"Redis connection lost: {exc or 'closed'}")
        if self._watchdog is not None:
            self._watchdog.cancel()
        held = [future for batch in self.batches if len(batch) > 3 for future, _ in batch[3]]
        for future in (*held, *self.waiting):
            if not future.done():
                future.set_exception(self.failure)
        self.waiting.clear()
        self.batches.clear()
        self.transport = None

    # sending
    @property
    def usable(self) -> bool:
        return self.transport is not None and self.failure is None and not self.transport.is_closing()

    def send(self, packed: bytes) -> asyncio.Future:
        future = self.loop.create_future()
        if not self.buffer:
            self.loop.call_soon(self._flush)
        self.buffer.append(packed)
        self.waiting.append(future)
        if len(self.buffer) >= self.batch:
            self._flush()
        return future

    def _flush(self) -> None:
        if not self.buffer:
            return
        size = len(self.buffer)
        data = b"".join(self.buffer)
        self.buffer.clear()
        if not self.usable:
            self.connection_lost(None)
            return
        if self.replicas:
            self.waiting.append(self.loop.create_future())  # WAIT's own reply
            self.batches.append([size + 1, time.perf_counter(), size, []])
            self.transport.write(data + self._wait)
            return
        self.batches.append([size, time.perf_counter(), size])
        self.transport.write(data)

    def _check(self) -> None:
        if self.batches and time.perf_counter() - self.batches[0][1] > self.timeout:
            self.failure = RedisTimeoutError(f"no reply from Redis within {self.timeout}s")
            self.transport.abort()
            return
        self._watchdog = self.loop.call_later(self.timeout / 2, self._check)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class PipelinedConnection:
    """`await connection.call(*command)`: one command, batched with the others of the same tick."""

    def __init__(self, url: str, timeout: float, on_batch: Callable[[float, int], None] | None = None,
                 batch: int = 12, replicas: int = 0) -> None:
        self.replicas = replicas
        self.target = sentinel.parse(url) if sentinel.is_sentinel(url) else None
        options = parse_url(url) if self.target is None else {}
        self.path = options.get("path")  # unix:///run/redis.sock: a Unix socket instead of TCP
        self.host = options.get("host", "127.0.0.1")
        self.port = int(options.get("port", 6379))
        self.password = options.get("password") if self.target is None else self.target.password
        self.username = options.get("username") if self.target is None else self.target.username
        self.db = int(options.get("db", 0) or 0) if self.target is None else self.target.db
        self.timeout = timeout
        self.on_batch = on_batch
        self.batch = max(1, batch)
        self._protocol: _Protocol | None = None
        self._connecting: asyncio.Future | None = None

    async def _connect(self) -> _Protocol:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.timeout):
                if self.target is not None:  # asked at every connection: a failover moves the master
                    self.host, self.port = await sentinel.master_address(self.target, self.timeout)
                factory = lambda: _Protocol(self.timeout, self.on_batch, self.batch, self.replicas)  # noqa: E731
                if self.path:
                    _, protocol = await loop.create_unix_connection(factory, self.path)
                else:
                    _, protocol = await loop.create_connection(factory, self.host, self.port)
                if self.password:
                    credentials = (self.username, self.password) if self.username else (self.password,)
                    await protocol.send(hiredis.pack_command(("AUTH", *credentials)))
                if self.db:
                    await protocol.send(hiredis.pack_command(("SELECT", self.db)))
        except (OSError, asyncio.TimeoutError, RedisConnectionError) as exc:  # (no master known: the latter)
            where = self.path or f"{self.host}:{self.port}"
            raise RedisConnectionError(f"cannot connect to Redis at {where}: {exc}") from None
        return protocol

    async def _ready(self) -> _Protocol:
        """The connection, opened once for all the callers that need it at the same time."""
        connecting = self._connecting
        if connecting is None:
            connecting = self._connecting = asyncio.ensure_future(self._connect())
        try:
            protocol = await asyncio.shield(connecting)
        finally:
            if self._connecting is connecting and connecting.done():
                self._connecting = None
        self._protocol = protocol
        return protocol

    def call(self, *command: Any) -> Awaitable[Any]:
        """The reply, to await; a plain future while connected (no coroutine frame per command)."""
        protocol = self._protocol
        if protocol is not None and protocol.usable:
            return protocol.send(hiredis.pack_command(command))
        return self._call_connecting(command)

    async def call_together(self, *commands: tuple) -> list[Any]:
        """The replies of `commands`, sent one after the other in one write (no other caller's command between
        them: ASKING applies to the command that follows it on the connection)."""
        protocol = self._protocol
        if protocol is None or not protocol.usable:
            protocol = await self._ready()
        futures = [protocol.send(hiredis.pack_command(command)) for command in commands]
        return list(await asyncio.gather(*futures, return_exceptions=True))

    async def _call_connecting(self, command: tuple) -> Any:
        protocol = await self._ready()
        return await protocol.send(hiredis.pack_command(command))

    async def close(self) -> None:
        if self._protocol is not None:
            self._protocol.close()
            self._protocol = None
