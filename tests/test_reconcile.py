"""Reconciliation with Kamailio (agent/reconcile.py) against real Redis and PostgreSQL: calls the agent holds
open that no Kamailio lists are ended, charged up to when they were last listed alive. The Kamailio side is
given as the listing function (the end-to-end test with a real Kamailio is in tests/kamailio)."""

from __future__ import annotations

import math

import pytest
from aiohttp import web

from agent import metrics
from agent.config import Settings
from agent.reconcile import SEEN, ListingFailed, Reconciler, alive_call_ids, list_dialogs
from agent.transaction import now_ms
from cache import call_key
from tests.test_transaction import catalog, post, prepaid, records

BEGUN_AGO = 10_000  # ms: the calls began this long before the test looks at them


class Kamailio:
    """What the listed Kamailios hold: Call-IDs, or a failure."""

    def __init__(self) -> None:
        self.calls: set[str] = set()
        self.down = False
        self.asked = 0

    async def __call__(self, session, url: str) -> set[str]:
        self.asked += 1
        if self.down:
            raise ListingFailed(f"{url}: down")
        return set(self.calls)


async def begun_call(client, tag: str, account: str = "a", ago: int = BEGUN_AGO) -> int:
    await post(client, "authorization", transaction_tag=tag, account_tag=account, destination="39")
    begin = now_ms() - ago
    await post(client, "begin", transaction_tag=tag, account_tag=account, timestamp_begin=str(begin / 1000))
    return begin


def reconciler(stack, kamailio: Kamailio, after: float = 0.0) -> Reconciler:
    settings = Settings(redis_url=stack.redis_url, database_url=stack.database_url,
                        kamailio_rpc="http://127.0.0.1:1/RPC", kamailio_reconcile_after=after)
    return Reconciler(settings, stack.redis, kamailio)


async def test_a_listed_call_is_left_alone_and_a_lost_one_is_charged_up_to_when_it_was_last_seen(agent, stack):
    client = await agent(catalog(prepaid("a", 100_000)))
    await begun_call(client, "alive")
    await begun_call(client, "lost")
    kamailio = Kamailio()
    kamailio.calls = {"alive", "lost"}
    reconcile = reconciler(stack, kamailio)

    assert await reconcile.run_once(None) == []
    seen = int(await stack.redis.hget(SEEN, call_key("default", "lost")))
    kamailio.calls = {"alive"}
    before = metrics.RECONCILED._value.get()

    assert await reconcile.run_once(None) == [call_key("default", "lost")]

    lost = (await records(stack, client, "lost"))["a"]
    begin = int(lost["timestamp_begin"].timestamp() * 1000)
    assert lost["state"] == "ended"
    assert lost["duration"] == math.ceil((seen - begin) / 1000), (lost, seen)
    assert lost["fee"] == lost["duration"]  # rate 1 per second, no connect fee
    assert (await records(stack, client, "alive"))["a"]["state"] == "begun"
    assert metrics.RECONCILED._value.get() == before + 1
    assert await stack.redis.hget(SEEN, call_key("default", "lost")) is None
    # the real end, coming late, changes nothing
    assert (await post(client, "end", transaction_tag="lost"))["ok"] is True
    assert (await records(stack, client, "lost"))["a"]["fee"] == lost["fee"]


async def test_a_call_never_seen_alive_is_ended_at_its_begin(agent, stack):
    client = await agent(catalog(prepaid("a", 100_000)))
    await begun_call(client, "unseen")

    assert await reconciler(stack, Kamailio()).run_once(None) == [call_key("default", "unseen")]

    record = (await records(stack, client, "unseen"))["a"]
    assert (record["state"], record["duration"], record["fee"]) == ("ended", 0, 0)


async def test_nothing_is_decided_while_a_kamailio_cannot_be_listed(agent, stack):
    client = await agent(catalog(prepaid("a", 100_000)))
    await begun_call(client, "call")
    kamailio = Kamailio()
    kamailio.down = True
    failures = metrics.RECONCILE_FAILURES._value.get()

    assert await reconciler(stack, kamailio).run_once(None) == []

    assert (await records(stack, client, "call"))["a"]["state"] == "begun"
    assert metrics.RECONCILE_FAILURES._value.get() == failures + 1


async def test_a_call_is_ended_only_once_missing_for_the_delay(agent, stack):
    client = await agent(catalog(prepaid("a", 100_000)))
    await begun_call(client, "late")
    reconcile = reconciler(stack, Kamailio(), after=60)
    key = call_key("default", "late")

    assert await reconcile.run_once(None) == []
    assert key in reconcile.missing_since
    reconcile.missing_since[key] -= 60_000  # as if it had been missing for a minute

    assert await reconcile.run_once(None) == [key]


async def test_calls_not_begun_are_left_to_the_expiry_of_reservations(agent, stack):
    client = await agent(catalog(prepaid("a", 100_000)))
    await post(client, "authorization", transaction_tag="ringing", account_tag="a", destination="39")

    assert await reconciler(stack, Kamailio()).run_once(None) == []
    assert (await stack.account_state("a"))["n"] == 1


def test_dialog_listings_are_read_without_ended_dialogs():
    briefing = [{"h_entry": 1, "h_id": 2, "call-id": "a", "state": 4},
                {"h_entry": 1, "h_id": 3, "call-id": "b", "state": 5},
                {"h_entry": 2, "h_id": 1, "call-id": "c", "state": 1}]
    assert alive_call_ids(briefing) == {"a", "c"}
    assert alive_call_ids(None) == set()
    assert alive_call_ids({"call-id": "x", "state": 3}) == {"x"}


@pytest.mark.parametrize("briefing", [True, False])
async def test_dialogs_are_listed_over_json_rpc(aiohttp_server, briefing):
    async def rpc(request: web.Request) -> web.Response:
        body = await request.json()
        if body["method"] == "dlg.briefing" and not briefing:
            return web.json_response({"jsonrpc": "2.0", "id": body["id"],
                                      "error": {"code": 500, "message": "command dlg.briefing not found"}})
        assert body["method"] in ("dlg.briefing", "dlg.list")
        return web.json_response({"jsonrpc": "2.0", "id": body["id"],
                                  "result": [{"call-id": "k1", "state": 4}, {"call-id": "k2", "state": 5}]})

    app = web.Application()
    app.router.add_post("/RPC", rpc)
    server = await aiohttp_server(app)
    import aiohttp

    async with aiohttp.ClientSession() as session:
        assert await list_dialogs(session, str(server.make_url("/RPC"))) == {"k1"}
        with pytest.raises(ListingFailed):
            await list_dialogs(session, "http://127.0.0.1:1/RPC")


def test_settings_name_every_kamailio_and_refuse_what_is_not_a_url():
    from agent.reconcile import enabled, rpc_urls

    settings = Settings.load(environ={"RATING_KAMAILIO_RPC": "http://127.0.0.1:5090/RPC, http://10.0.0.2:5090/RPC",
                                      "RATING_KAMAILIO_RECONCILE_INTERVAL": "2.5"})
    assert rpc_urls(settings) == ["http://127.0.0.1:5090/RPC", "http://10.0.0.2:5090/RPC"]
    assert settings.kamailio_reconcile_interval == 2.5 and enabled(settings)
    assert not enabled(Settings())
    for bad in ({"kamailio_rpc": "127.0.0.1:5090"}, {"kamailio_reconcile_interval": 0},
                {"kamailio_reconcile_after": -1}):
        with pytest.raises(ValueError):
            Settings(**bad)
