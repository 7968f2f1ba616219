"""Spec section 4 (the tutorials) entirely through GraphQL, asserting the values given there."""

from __future__ import annotations

import re

from .conftest import wait_catalog

SETUP = """mutation {
  createCarrier(carrier_tag:"carrier1", host:"localhost", port:5061, protocol:UDP, active:true) { carrier_tag host port protocol active }
  createPricelist(pricelist_tag:"pricelist1", name:"First pricelist", currency:EUR) { pricelist_tag name currency }
  createPricelistRate(pricelist_tag:"pricelist1", carrier_tag:"carrier1", prefix:"39", connect_fee:0, rate:20, rate_increment:60, interval_start:0, description:"Italy") { pricelist_tag carrier_tag prefix datetime_start datetime_end connect_fee rate rate_increment interval_start description }
  createAccount(account_tag:"100", type:PREPAID, balance:100, max_concurrent_transactions:2, name:"My first account", active:true, pricelist_tags:["pricelist1"]) { account_tag name type balance max_concurrent_transactions pricelist_tags }
}"""

TRANSACTION_FIELDS = """id transaction_tag account_tag source source_ip destination
  destination_rate { pricelist_tag carrier_tag prefix connect_fee rate rate_increment interval_start }
  carrier_ip authorized timestamp_auth timestamp_begin timestamp_end inbound duration fee"""

RATE = {"pricelist_tag": "pricelist1", "carrier_tag": "carrier1", "prefix": "39", "connect_fee": 0, "rate": 20,
        "rate_increment": 60, "interval_start": 0}
NAIVE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?$")


async def test_tutorial_through_graphql(gql):
    api = await gql()
    client = api.client
    data = await api(SETUP)
    assert data == {
        "createCarrier": {"carrier_tag": "carrier1", "host": "localhost", "port": 5061, "protocol": "UDP",
                          "active": True},
        "createPricelist": {"pricelist_tag": "pricelist1", "name": "First pricelist", "currency": "EUR"},
        "createPricelistRate": {**RATE, "datetime_start": None, "datetime_end": None, "description": "Italy"},
        "createAccount": {"account_tag": "100", "name": "My first account", "type": "PREPAID", "balance": 100,
                          "max_concurrent_transactions": 2, "pricelist_tags": ["pricelist1"]},
    }
    await wait_catalog(client, lambda c: c.account("default", "100") is not None and c.rate_count == 1)

    # 4.2 authorization (with the `tags` argument the original lacked)
    data = await api("""mutation { authorization(transaction_tag:"transaction1", account_tag:"100",
        source:"sip:10.0.0.1:5060", destination:"39040123123", tags:["tutorial"]) {
        transaction_tag account_tag authorized max_available_units balance carriers } }""")
    assert data == {"authorization": {"transaction_tag": "transaction1", "account_tag": "100", "authorized": True,
                                      "max_available_units": 300, "balance": 100,
                                      "carriers": ["UDP:localhost:5061"]}}
    data = await api("""{ Transaction(transaction_tag:"transaction1", account_tag:"100") {
        authorized primary inbound timestamp_auth destination tags } }""")
    record = data["Transaction"]
    assert (record["authorized"], record["primary"], record["inbound"], record["destination"]) == (
        True, True, False, "39040123123")
    assert NAIVE.match(record["timestamp_auth"]) and record["tags"] == ["tutorial"]

    # 4.3 begin, the running entry, end
    assert await api("""mutation { beginTransaction(transaction_tag:"transaction1", account_tag:"100",
        source:"sip:10.0.0.1:5060", destination:"39040123123") { ok } }""") == {"beginTransaction": {"ok": True}}
    data = await api("""{ allAccounts(filter:{account_tag:"100"}) { account_tag name type balance pricelist_tags
        running_transactions { transaction_tag source destination carrier_ip in_progress inbound timestamp_begin
        timestamp_end } } }""")
    (account,) = data["allAccounts"]
    assert (account["balance"], account["pricelist_tags"]) == (100, ["pricelist1"])
    (running,) = account["running_transactions"]
    assert {k: v for k, v in running.items() if k != "timestamp_begin"} == {
        "transaction_tag": "transaction1", "source": "sip:10.0.0.1:5060", "destination": "39040123123",
        "carrier_ip": None, "in_progress": True, "inbound": False, "timestamp_end": None}
    assert NAIVE.match(running["timestamp_begin"])

    assert await api("""mutation { endTransaction(transaction_tag:"transaction1", account_tag:"100") { ok } }""") == {
        "endTransaction": {"ok": True}}
    data = await api("""{ allAccounts(filter:{account_tag:"100"}) { balance running_transactions { transaction_tag } } }""")
    assert data["allAccounts"] == [{"balance": 80, "running_transactions": []}]
    data = await api(f"""{{ Transaction(transaction_tag:"transaction1", account_tag:"100") {{ {TRANSACTION_FIELDS} }} }}""")
    record = data["Transaction"]
    assert re.match(r"^[0-9a-f-]{36}$", record["id"])
    assert record["destination_rate"] == RATE and record["authorized"] is True and record["inbound"] is False
    assert record["fee"] == 20 and 0 <= record["duration"] <= 2
    assert all(NAIVE.match(record[k]) for k in ("timestamp_auth", "timestamp_begin", "timestamp_end"))
    _, errors = await api.error("""{ Transaction(transaction_tag:"transaction1", account_tag:"100") { failed } }""")
    assert errors == ["Cannot query field 'failed' on type 'Transaction'."]

    # record: priced from its own timestamps (fix of #41), then rolled back, which removes it
    assert await api("""mutation { recordTransaction(transaction_tag:"transaction2", account_tag:"100",
        source:"sip:10.0.0.1:5060", destination:"39040123123", timestamp_auth:"2019-08-15T21:26:15Z",
        timestamp_begin:"2019-08-15T21:26:17Z", timestamp_end:"2019-08-15T21:26:55Z") { ok } }""") == {
        "recordTransaction": {"ok": True}}
    data = await api(f"""{{ Transaction(transaction_tag:"transaction2", account_tag:"100") {{ {TRANSACTION_FIELDS} }} }}""")
    record = data["Transaction"]
    assert (record["duration"], record["fee"], record["destination_rate"]) == (38, 20, RATE)
    assert (record["timestamp_begin"], record["timestamp_end"], record["inbound"], record["authorized"]) == (
        "2019-08-15T21:26:17", "2019-08-15T21:26:55", False, False)
    assert record["timestamp_auth"] == "2019-08-15T21:26:15"
    assert (await api('{ Account(account_tag:"100") { balance } }'))["Account"]["balance"] == 60
    assert await api("""mutation { rollbackTransaction(transaction_tag:"transaction2", account_tag:"100") { ok } }""") == {
        "rollbackTransaction": {"ok": True}}
    assert await api('{ Transaction(transaction_tag:"transaction2", account_tag:"100") { id } }') == {"Transaction": None}
    assert (await api('{ Account(account_tag:"100") { balance } }'))["Account"]["balance"] == 80

    # read-your-writes in lists: both calls' records are listed at once (the outbox may not have run)
    data = await api("""{ allTransactions(filter:{account_tag:"100"}, sortField:"transaction_tag") { transaction_tag fee }
        _allTransactionsMeta(filter:{account_tag:"100"}) { count } }""")
    assert data == {"allTransactions": [{"transaction_tag": "transaction1", "fee": 20}],
                    "_allTransactionsMeta": {"count": 1}}
