"""Redis behind Sentinel and replicated writes (cache/sentinel.py, the WAIT of cache/connection.py).

The failover itself, under a load of calls, is in tests/test_faults.py."""

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from agent.config import Settings
from cache import sentinel
from cache.connection import PipelinedConnection
from devstack import RedisServer

# a replica's first sync at once (not after diskless sync's 5 s wait for more replicas), a stop without waiting
QUICK = ("--repl-diskless-sync-delay", "0", "--shutdown-timeout", "0")


def test_a_sentinel_url_names_the_sentinels_the_master_and_the_database():
    target = sentinel.parse("redis+sentinel://user:secret@10.0.0.1:26379,[::1]:26380/rating/3")
    assert target == sentinel.Target((("10.0.0.1", 26379), ("::1", 26380)), "rating", 3, "user", "secret")
    assert sentinel.parse(sentinel.url_of("h:1", "m")) == sentinel.Target((("h", 1),), "m", 0)
    for bad in ("redis+sentinel://h:1", "redis+sentinel://h/m", "redis+sentinel://h:1/m/x", "redis://h:1/0"):
        with pytest.raises(ValueError):
            sentinel.parse(bad)


def test_redis_sentinel_settings_make_the_url_every_client_connects_with():
    settings = Settings(redis_url="redis://:pw@ignored:1/2", redis_sentinel="127.0.0.1:26379,127.0.0.1:26380",
                        redis_sentinel_master="main")
    assert settings.redis_url == "redis+sentinel://:pw@127.0.0.1:26379,127.0.0.1:26380/main/2"
    with pytest.raises(ValueError, match="host:port"):
        Settings(redis_sentinel="nowhere")
    with pytest.raises(ValueError, match="redis_replicas"):
        Settings(redis_replicas=-1)


async def test_writes_are_answered_once_a_replica_has_them_and_refused_when_none_can(tmp_path):
    master = RedisServer(tmp_path / "master", options=QUICK).start()
    replica = RedisServer(tmp_path / "replica", options=(*QUICK, "--replicaof", "127.0.0.1", str(master.port))).start()
    connection = PipelinedConnection(master.url, 1.0, replicas=1)
    try:
        for _ in range(100):  # bounded: the replica's first sync
            try:
                assert await connection.call("SET", "replicated", "yes") == "OK"
                break
            except RedisConnectionError:
                pass
        assert await connection.call("GET", "replicated") == "yes"
        replica.process.kill()
        replica.process.wait()
        with pytest.raises(RedisConnectionError, match="on 0 of 1 replicas"):
            await connection.call("SET", "replicated", "no")  # written on the master, but not answered as done
    finally:
        await connection.close()
        for server in (replica, master):
            server.process.kill()
            server.process.wait()
