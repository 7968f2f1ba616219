"""The hot path's metric tally: counted locally, exact in prometheus-client after a flush."""

import asyncio

from prometheus_client import REGISTRY

from agent.metrics import Tally, flush_periodically


def _sample(name: str, **labels) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_a_flush_carries_counts_and_histogram_buckets_exactly():
    tally = Tally()
    before = {
        "ok": _sample("rating_requests_total", endpoint="tally-test", status="200"),
        "le1ms": _sample("rating_request_duration_seconds_bucket", endpoint="tally-test", le="0.001"),
        "le2ms": _sample("rating_request_duration_seconds_bucket", endpoint="tally-test", le="0.002"),
        "inf": _sample("rating_request_duration_seconds_bucket", endpoint="tally-test", le="+Inf"),
        "sum": _sample("rating_request_duration_seconds_sum", endpoint="tally-test"),
        "refused": _sample("rating_authorizations_total", outcome="refused", reason="NOT_FOUND"),
    }
    for seconds in (0.001, 0.0015, 0.002, 30.0):  # a bound itself counts in its own bucket (`le`)
        tally.observe("tally-test", 200, seconds)
    tally.authorization(False, "NOT_FOUND")
    assert _sample("rating_requests_total", endpoint="tally-test", status="200") == before["ok"]
    tally.flush()
    assert _sample("rating_requests_total", endpoint="tally-test", status="200") == before["ok"] + 4
    assert _sample("rating_request_duration_seconds_bucket", endpoint="tally-test", le="0.001") == before["le1ms"] + 1
    assert _sample("rating_request_duration_seconds_bucket", endpoint="tally-test", le="0.002") == before["le2ms"] + 3
    assert _sample("rating_request_duration_seconds_bucket", endpoint="tally-test", le="+Inf") == before["inf"] + 4
    assert abs(_sample("rating_request_duration_seconds_sum", endpoint="tally-test") - before["sum"] - 30.0045) < 1e-9
    assert _sample("rating_authorizations_total", outcome="refused", reason="NOT_FOUND") == before["refused"] + 1
    tally.flush()  # nothing counted twice
    assert _sample("rating_requests_total", endpoint="tally-test", status="200") == before["ok"] + 4


def test_redis_batches_are_counted_by_size_and_round_trip():
    tally = Tally()
    before = _sample("rating_redis_batch_commands_bucket", le="32.0")
    count = _sample("rating_redis_round_trip_seconds_count")
    tally.redis_batch_done(0.0004, 17)
    tally.redis_batch_done(0.0004, 32)
    tally.flush()
    assert _sample("rating_redis_batch_commands_bucket", le="32.0") == before + 2
    assert _sample("rating_redis_round_trip_seconds_count") == count + 2


async def test_the_flush_task_flushes_once_more_when_stopped():
    from agent import metrics

    before = _sample("rating_requests_total", endpoint="tally-stop", status="503")
    task = asyncio.create_task(flush_periodically(interval=3600))
    await asyncio.sleep(0)
    metrics.ENDPOINTS.observe("tally-stop", 503, 0.01)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert _sample("rating_requests_total", endpoint="tally-stop", status="503") == before + 1


async def test_open_calls_are_the_calls_holding_a_deadline(agent, stack):
    from agent.keys import LIVE_STATE
    from tests.test_transaction import catalog, post, prepaid

    client = await agent(catalog(prepaid("a", 10**6)))
    for tag in ("o1", "o2", "o3"):
        await post(client, "authorization", transaction_tag=tag, account_tag="a", destination="39")
    await post(client, "begin", transaction_tag="o1")
    await post(client, "end", transaction_tag="o1")
    await post(client, "rollback", transaction_tag="o2")
    live = client.app[LIVE_STATE]
    await live.refresh()
    assert live.snapshot["open"] == 1


async def test_graphql_call_mutations_are_counted_beside_the_rest_endpoints(agent, stack):
    from tests.test_transaction import catalog, prepaid

    client = await agent(catalog(prepaid("a", 10**6)))
    before = {
        "requests": _sample("rating_requests_total", endpoint="graphql_authorization", status="200"),
        "authorized": _sample("rating_authorizations_total", outcome="authorized", reason=""),
    }
    reply = await client.post("/graphql", json={"query": 'mutation { authorization(transaction_tag:"g1",'
                                                         ' account_tag:"a", destination:"39") { authorized } }'})
    assert (await reply.json())["data"] == {"authorization": {"authorized": True}}
    from agent.metrics import ENDPOINTS

    ENDPOINTS.flush()
    assert _sample("rating_requests_total", endpoint="graphql_authorization", status="200") == before["requests"] + 1
    assert _sample("rating_authorizations_total", outcome="authorized", reason="") == before["authorized"] + 1
