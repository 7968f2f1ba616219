"""The management bugs of spec 2.16 (#44-#59) stay fixed; balances and running transactions."""

from __future__ import annotations

from .conftest import wait_catalog

CATALOG = """mutation {
  createCarrier(carrier_tag:"c1", host:"gw", port:5060) { id }
  createPricelist(pricelist_tag:"p1") { id }
  createPricelistRate(pricelist_tag:"p1", carrier_tag:"c1", prefix:"39", rate:1, rate_increment:1) { id }
  createAccount(account_tag:"a", type:PREPAID, balance:1000, pricelist_tags:["p1"], tags:["vip"]) { id }
  b: createAccount(account_tag:"b", type:PREPAID, balance:1000, pricelist_tags:["p1"], tags:["vip", "x"]) { id }
}"""


async def test_updates_change_only_what_they_name(gql):
    api = await gql()
    await api(CATALOG)
    # #44: an update that omits `active` does not re-activate
    await api('mutation { updateCarrier(carrier_tag:"c1", active:false) { id } }')
    data = await api('mutation { updateCarrier(carrier_tag:"c1", host:"gw2") { host port active } '
                     'updateAccount(account_tag:"a", active:false) { id } }')
    assert data["updateCarrier"] == {"host": "gw2", "port": 5060, "active": False}
    data = await api('mutation { updateAccount(account_tag:"a", name:"x") { name type active balance } }')
    assert data["updateAccount"] == {"name": "x", "type": "PREPAID", "active": False, "balance": 1000}
    # #45: an update by id keeps the record's tenant
    made = await api('mutation { createCarrier(tenant:"t2", carrier_tag:"c9") { id } }')
    data = await api(f'mutation {{ updateCarrier(id:"{made["createCarrier"]["id"]}", host:"h") {{ tenant host }} }}')
    assert data["updateCarrier"] == {"tenant": "t2", "host": "h"}
    # #46: a field passed as null is cleared
    await api('mutation { updateAccount(account_tag:"b", max_concurrent_transactions:3, name:"n") { id } }')
    data = await api('mutation { updateAccount(account_tag:"b", max_concurrent_transactions:null) '
                     '{ max_concurrent_transactions name } }')
    assert data["updateAccount"] == {"max_concurrent_transactions": None, "name": "n"}
    # #54: upsertTransaction keeps primary/inbound when they are omitted
    await api('mutation { upsertTransaction(transaction_tag:"t", account_tag:"a", primary:true, inbound:true) { id } }')
    data = await api('mutation { upsertTransaction(transaction_tag:"t", account_tag:"a", fee:3) { primary inbound fee } }')
    assert data["upsertTransaction"] == {"primary": True, "inbound": True, "fee": 3}


async def test_filters_tenants_references_and_bigint(gql):
    api = await gql()
    await api(CATALOG)
    await api('mutation { createCustomer(customer_tag:"k1") { id } createAccount(account_tag:"off", active:false,'
              ' customer_tag:"k1", linked_accounts:["b", "a"]) { id } t2: createAccount(tenant:"t2", account_tag:"a") { id }'
              ' createPricelistRate(pricelist_tag:"p1", carrier_tag:"c1", prefix:"44", active:false) { id } }')
    # #47, #50, #58: customer_tag is the tag; linked accounts are kept in order and have their ids
    data = await api('{ Account(account_tag:"off") { customer_tag customer { customer_tag } '
                     'linked_accounts { id account_tag } } }')
    account = data["Account"]
    assert account["customer_tag"] == "k1" and account["customer"] == {"customer_tag": "k1"}
    assert [a["account_tag"] for a in account["linked_accounts"]] == ["b", "a"]
    assert all(a["id"] for a in account["linked_accounts"])
    # #48: active:false and customer_tag filter
    data = await api('{ off: allAccounts(filter:{active:false}) { account_tag } on: _allAccountsMeta(filter:{active:true}) { count }'
                     ' k1: allAccounts(filter:{customer_tag:"k1"}) { account_tag }'
                     ' rates: allPricelistRates(filter:{active:false}) { prefix } }')
    assert data == {"off": [{"account_tag": "off"}], "on": {"count": 2}, "k1": [{"account_tag": "off"}],
                    "rates": [{"prefix": "44"}]}
    # #49: lists are of tenant "default" unless a tenant is given; tenant:null spans all tenants
    data = await api('{ a: _allAccountsMeta { count } b: _allAccountsMeta(filter:{}) { count }'
                     ' c: _allAccountsMeta(filter:{tenant:"t2"}) { count } d: _allAccountsMeta(filter:{tenant:null}) { count } }')
    assert data == {"a": {"count": 3}, "b": {"count": 3}, "c": {"count": 1}, "d": {"count": 4}}
    # #57: BigInt stays an integer on the wire beyond 32 bits
    status, body = await api.raw('mutation { setAccountBalance(account_tag:"a", balance: 9000000000123) { ok } }')
    assert status == 200
    reply = await api.client.post("/graphql", json={"query": '{ Account(account_tag:"a") { balance } }'})
    assert b'"balance":9000000000123}' in await reply.read()
    # a sort on an unknown field is an error, not a silent no-op
    _, errors = await api.error('{ allAccounts(sortField:"nope") { id } }')
    assert errors[0].startswith("Cannot sort Account by 'nope'")


async def test_balance_mutations(gql, stack):
    api = await gql()
    await api(CATALOG)
    data = await api('mutation { setAccountBalance(account_tag:"a", balance:10) { ok } '
                     'incrementAccountBalance(account_tag:"a", balance:-3) { ok } '
                     'ghost: setAccountBalance(account_tag:"ghost", balance:1) { ok } }')
    assert data == {"setAccountBalance": {"ok": True}, "incrementAccountBalance": {"ok": True}, "ghost": {"ok": False}}
    assert await stack.balance("a") == 7
    await api('mutation { incrementAccountBalance(tags:["x"], balance:5) { ok } }')
    data = await api('{ allAccounts(sortField:"account_tag") { account_tag balance } }')
    assert data["allAccounts"] == [{"account_tag": "a", "balance": 7}, {"account_tag": "b", "balance": 1005}]
    # #56: never the whole tenant by omission
    _, errors = await api.error('mutation { setAccountBalance(balance:0) { ok } }')
    assert errors == ["Provide account_tag or tags: a balance change never applies to a whole tenant"]
    # every move is in the ledger (through Redis, not an UPDATE of the column)
    from agent.store.writer import catch_up

    await catch_up(stack.redis, stack.database)
    kinds = [r["kind"] for r in await stack.database.fetch(
        "SELECT kind FROM ledger WHERE account_tag = 'a' ORDER BY version")]
    assert kinds == ["set", "set", "adjust"]
    assert await stack.database.fetchval("SELECT balance FROM accounts WHERE account_tag = 'a'") == 7


async def test_account_transactions_map_onto_the_call_operations(gql, stack):
    api = await gql()
    await api(CATALOG)
    await wait_catalog(api.client, lambda c: c.account("default", "b") is not None and c.rate_count == 1)
    begin = """mutation { beginAccountTransaction(account_tag:"a", transaction:{transaction_tag:"t1",
        destination:"39040", source:"s", timestamp_begin:"2030-01-01T10:00:00Z"}) {
        ok transaction { transaction_tag destination in_progress inbound primary timestamp_begin
        destination_rate { tenant prefix rate } } } }"""
    data = await api(begin)
    # #51: the entry returned is the new one
    assert data["beginAccountTransaction"] == {"ok": True, "transaction": {
        "transaction_tag": "t1", "destination": "39040", "in_progress": True, "inbound": False, "primary": True,
        "timestamp_begin": "2030-01-01T10:00:00", "destination_rate": {"tenant": "default", "prefix": "39", "rate": 1}}}
    data = await api('{ AccountTransaction(account_tag:"a", transaction_tag:"t1") { transaction_tag }'
                     ' running: _allAccountsMeta(filter:{with_running_transactions:true}) { count }'
                     ' long: allAccounts(filter:{with_long_running_transactions:false}) { account_tag } }')
    assert data["AccountTransaction"] == {"transaction_tag": "t1"} and data["running"] == {"count": 1}
    data = await api("""mutation { endAccountTransaction(account_tag:"a", transaction_tag:"t1",
        timestamp_end:"2030-01-01T10:00:30Z") { ok transaction { in_progress timestamp_end } } }""")
    assert data["endAccountTransaction"] == {"ok": True, "transaction": {
        "in_progress": False, "timestamp_end": "2030-01-01T10:00:30"}}
    # #52: commit without a fee is fine (the agent charged the rated fee at end)
    data = await api('mutation { commitAccountTransaction(account_tag:"a", transaction_tag:"t1") { ok } }')
    assert data == {"commitAccountTransaction": {"ok": True}}
    assert await stack.balance("a") == 970
    await api(begin.replace("t1", "t2"))
    data = await api('mutation { rollbackAccountTransaction(account_tag:"a", transaction_tag:"t2") { ok } '
                     'again: rollbackAccountTransaction(account_tag:"a", transaction_tag:"nope") { ok } }')
    assert data == {"rollbackAccountTransaction": {"ok": True}, "again": {"ok": False}}
    data = await api('{ Account(account_tag:"a") { balance running_transactions { transaction_tag } } }')
    assert data["Account"] == {"balance": 970, "running_transactions": []}
    data = await api('mutation { beginAccountTransaction(account_tag:"ghost", transaction:{transaction_tag:"t3",'
                     ' destination:"39", timestamp_begin:"2030-01-01T10:00:00Z"}) { ok transaction { transaction_tag } } }')
    assert data == {"beginAccountTransaction": {"ok": None, "transaction": None}}


async def test_batches_run_in_order_and_one_failure_keeps_the_others(gql):
    api = await gql()
    data = await api('mutation { createCarrier(carrier_tag:"c", host:"a") { host } '
                     'updateCarrier(carrier_tag:"c", host:"b") { host } '
                     'upsertCarrier(carrier_tag:"c", port:1) { host port } }')
    assert data == {"createCarrier": {"host": "a"}, "updateCarrier": {"host": "b"},
                    "upsertCarrier": {"host": "b", "port": 1}}
    data, errors = await api.error('mutation { createPricelist(pricelist_tag:"p") { pricelist_tag } '
                                   'createPricelistRate(pricelist_tag:"p", carrier_tag:"nope", prefix:"1") { id } '
                                   'upsertPricelist(pricelist_tag:"q") { pricelist_tag } }')
    assert data == {"createPricelist": {"pricelist_tag": "p"}, "createPricelistRate": None,
                    "upsertPricelist": {"pricelist_tag": "q"}}
    assert errors == ["Carrier with id = None and tag = nope not found in tenant default!"]


async def test_lcr_and_destination_rate(gql):
    api = await gql()
    await api(CATALOG)
    await wait_catalog(api.client, lambda c: c.account("default", "b") is not None and c.rate_count == 1)
    data = await api('{ Account(account_tag:"a") { destination_rate(destination:"39040") { prefix rate tenant }'
                     ' least_cost_routing(destination:"39040") { carrier_tag } } leastCostRouting(destination:"3904") { carrier_tag } }')
    assert data == {"Account": {"destination_rate": {"prefix": "39", "rate": 1, "tenant": "default"},
                                "least_cost_routing": [{"carrier_tag": "c1"}]},
                    "leastCostRouting": [{"carrier_tag": "c1"}]}


async def test_a_renamed_account_keeps_its_live_balance_and_is_not_renamed_with_calls_open(gql, stack):
    api = await gql()
    made = (await api(CATALOG))["createAccount"]["id"]
    await wait_catalog(api.client, lambda c: c.account("default", "a") is not None and c.rate_count == 1)
    call = ('mutation {{ authorization(transaction_tag:"{tag}", account_tag:"{account}", destination:"39")'
            ' {{ authorized balance }} }}')
    assert (await api(call.format(tag="r1", account="a")))["authorization"]["authorized"]
    _, errors = await api.error(f'mutation {{ updateAccount(id:"{made}", account_tag:"renamed") {{ id }} }}')
    assert errors == ["Account a has calls in progress: rename it once they have ended"]
    await api('mutation { beginTransaction(transaction_tag:"r1", timestamp_begin:"2030-01-01T10:00:00Z") { ok } }')
    await api('mutation { endTransaction(transaction_tag:"r1", timestamp_end:"2030-01-01T10:00:07Z") { ok } }')
    assert await stack.balance("a") == 993

    data = await api(f'mutation {{ updateAccount(id:"{made}", account_tag:"renamed") {{ account_tag balance }} }}')
    assert data["updateAccount"] == {"account_tag": "renamed", "balance": 993}
    assert not await stack.redis.exists(__import__("cache").account_key("default", "a"))
    await wait_catalog(api.client, lambda c: c.account("default", "renamed") is not None)
    answer = (await api(call.format(tag="r2", account="renamed")))["authorization"]
    assert answer == {"authorized": True, "balance": 993}


async def test_open_calls_are_listed_with_the_finished_ones(gql, stack):
    api = await gql()
    await api(CATALOG)
    await wait_catalog(api.client, lambda c: c.account("default", "a") is not None and c.rate_count == 1)
    call = 'mutation {{ authorization(transaction_tag:"{}", account_tag:"a", destination:"39") {{ authorized }} }}'
    await api(call.format("done"))  # each call may reserve the whole balance: one at a time
    await api('mutation { beginTransaction(transaction_tag:"done", timestamp_begin:"2030-01-01T10:00:00Z") { ok } }')
    await api('mutation { endTransaction(transaction_tag:"done", timestamp_end:"2030-01-01T10:00:04Z") { ok } }')
    assert (await api(call.format("open")))["authorization"]["authorized"]
    query = """{ allTransactions(filter:{account_tag:"a"}, sortField:"transaction_tag") {
                   transaction_tag authorized timestamp_auth timestamp_end fee } }"""
    rows = {row["transaction_tag"]: row for row in (await api(query))["allTransactions"]}
    assert set(rows) == {"open", "done"}
    assert rows["open"]["authorized"] and rows["open"]["timestamp_auth"] and rows["open"]["fee"] is None
    assert rows["done"]["fee"] == 4 and rows["done"]["timestamp_end"] == "2030-01-01T10:00:04"
    await api('mutation { rollbackTransaction(transaction_tag:"open") { ok } }')
    rows = {row["transaction_tag"]: row for row in (await api(query))["allTransactions"]}
    assert rows["open"]["fee"] is None and rows["done"]["fee"] == 4
