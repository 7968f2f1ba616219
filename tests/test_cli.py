"""The command line (agent/__main__.py) against real servers."""

import json

from tests.conftest import run_cli
from tests.test_transaction import catalog, prepaid


def test_importing_a_catalog_again_keeps_live_balances_unless_asked_to_set_them(stack, tmp_path):
    document = tmp_path / "catalog.json"
    document.write_text(json.dumps(catalog(prepaid("kept", 500))))
    servers = {"redis_url": stack.redis_url, "database_url": stack.database_url}
    run_cli("import", "catalog", str(document), **servers)
    assert run_cli("balance", "add", "kept", "-120", **servers).stdout.strip() == "380"
    run_cli("import", "catalog", str(document), **servers)  # what calls were charged since stays charged
    assert run_cli("balance", "add", "kept", "0", **servers).stdout.strip() == "380"
    run_cli("import", "catalog", str(document), "--set-balances", **servers)
    assert run_cli("balance", "add", "kept", "0", **servers).stdout.strip() == "500"


def test_the_cli_waits_for_a_redis_still_loading_its_data(stack, tmp_path):
    """A second `make run` after a load run found Redis loading its append-only file, and the demo import
    exited; commands now wait for it (`serve` and devstack do the same through the same wait)."""
    import redis

    from devstack import RedisServer

    server = RedisServer(tmp_path / "redis").start()
    client = redis.Redis.from_url(server.url)
    pipe = client.pipeline(transaction=False)
    for n in range(20_000):  # 20 MB: a loading Redis answers clients between its 2 MB steps
        pipe.set(f"filler:{n}", "x" * 1000)
    pipe.execute()
    client.bgrewriteaof()  # the keys into the AOF's RDB base, whose loading key-load-delay slows down
    for _ in range(200):
        if client.info("persistence")["aof_rewrite_in_progress"] == 0 and \
                client.info("persistence")["aof_rewrite_scheduled"] == 0:
            break
        __import__("time").sleep(0.05)
    client.close()
    server.stop()
    slow = RedisServer(server.directory, port=server.port, options=("--key-load-delay", "200")).start()
    try:
        probe = redis.Redis.from_url(slow.url, socket_timeout=3)
        try:
            probe.ping()
            loading = False
        except (redis.exceptions.BusyLoadingError, redis.exceptions.TimeoutError):
            loading = True
        probe.close()
        assert loading, "Redis was not loading: the test proves nothing"
        document = tmp_path / "catalog.json"
        document.write_text(json.dumps(catalog(prepaid("waited", 10))))
        run_cli("import", "catalog", str(document), redis_url=slow.url, database_url=stack.database_url)
        client = redis.Redis.from_url(slow.url, decode_responses=True)
        assert client.dbsize() >= 20_000 and client.hget(__import__("cache").account_key("default", "waited"), "balance") == "10"
        client.close()
    finally:
        slow.stop()
