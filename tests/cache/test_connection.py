"""The hot path's pipelined Redis connection: ordering, batching, timeouts, reconnection."""

import asyncio
import time

import pytest
import redis
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from cache.connection import PipelinedConnection


async def test_concurrent_commands_get_their_own_replies_in_few_writes(redis_server):
    batches = []
    connection = PipelinedConnection(redis_server.url, 1.0, on_batch=lambda s, n: batches.append(n), batch=1000)
    try:
        replies = await asyncio.gather(*(connection.call("ECHO", f"m{i}") for i in range(500)))
        assert replies == [f"m{i}" for i in range(500)]
        assert sum(batches) == 500 and len(batches) <= 3
    finally:
        await connection.close()


async def test_error_replies_raise_for_their_caller_only(redis_server):
    connection = PipelinedConnection(redis_server.url, 1.0)
    try:
        ok, bad = await asyncio.gather(connection.call("PING"), connection.call("NOSUCHCOMMAND"),
                                       return_exceptions=True)
        assert ok == "PONG" and isinstance(bad, ResponseError)
    finally:
        await connection.close()


async def test_a_stalled_redis_fails_waiting_callers_within_the_timeout_then_recovers(redis_server):
    admin = redis.Redis.from_url(redis_server.url)
    connection = PipelinedConnection(redis_server.url, 0.3)
    try:
        assert await connection.call("PING") == "PONG"
        admin.execute_command("CLIENT", "PAUSE", 1500, "ALL")
        started = time.monotonic()
        with pytest.raises(RedisTimeoutError):
            await connection.call("PING")
        assert time.monotonic() - started < 1.0
        admin.execute_command("CLIENT", "UNPAUSE")  # Redis answers again: no sleep racing the pause's end
        assert await connection.call("PING") == "PONG"
    finally:
        admin.execute_command("CLIENT", "UNPAUSE")
        await connection.close()


async def test_a_write_goes_out_once_batch_commands_wait(redis_server):
    batches = []
    connection = PipelinedConnection(redis_server.url, 1.0, on_batch=lambda s, n: batches.append(n), batch=8)
    try:
        replies = await asyncio.gather(*(connection.call("ECHO", f"m{i}") for i in range(20)))
        assert replies == [f"m{i}" for i in range(20)]
        assert batches == [8, 8, 4]  # two full writes, then the rest at the end of the tick
    finally:
        await connection.close()


async def test_a_unix_socket_url_connects_over_the_socket(redis_server):
    connection = PipelinedConnection(redis_server.socket_url, 1.0)
    try:
        assert await connection.call("CLIENT", "INFO") != ""
        info = await connection.call("CLIENT", "INFO")
        assert "laddr=" in info and "127.0.0.1" not in info.split("laddr=")[1].split()[0]
    finally:
        await connection.close()
