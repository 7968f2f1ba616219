"""Access control, transport and limits of /graphql: a hostile request gets an error, never a 500 or a hang."""

from __future__ import annotations

from agent.config import Settings
from agent.graphql.security import exposure_problem

CALL = 'mutation { authorization(transaction_tag:"x", account_tag:"nobody", destination:"39") { authorized } }'


async def test_management_needs_the_token_agent_operations_do_not(gql):
    api = await gql(token="s3cret")
    status, body = await api.raw("{ allAccounts { id } }", headers={"Authorization": ""})
    assert status == 401 and body["errors"][0]["message"].startswith("Unauthorized")
    status, _ = await api.raw("{ allAccounts { id } }", headers={"Authorization": "Bearer wrong"})
    assert status == 401
    status, _ = await api.raw("{ version }", headers={"Authorization": ""})
    assert status == 200
    status, body = await api.raw(CALL, headers={"Authorization": ""})
    assert status == 200 and body == {"data": {"authorization": {"authorized": False}}}
    assert await api("{ allAccounts { id } version }") == {"allAccounts": [], "version": 1}
    reply = await api.client.post("/management/pricelists/p/rates", data=b"prefix\n1\n")
    assert reply.status == 401


async def test_client_networks_restrict_the_agent_endpoints(gql):
    api = await gql(token="t", agent_networks="10.0.0.0/8, 192.168.1.7")
    reply = await api.client.post("/v1/authorization", json={"transaction_tag": "x", "account_tag": "a"})
    assert reply.status == 403
    assert (await api.client.get("/status")).status == 204
    status, _ = await api.raw(CALL, headers={"Authorization": ""})
    assert status == 403
    status, _ = await api.raw(CALL)  # the management token admits the call operations too
    assert status == 200


async def test_client_networks_admit_their_clients(gql):
    open_api = await gql(agent_networks="127.0.0.0/8")
    reply = await open_api.client.post("/v1/authorization", json={"transaction_tag": "x", "account_tag": "a"})
    assert reply.status == 200


def test_refuses_a_public_address_without_a_token():
    assert exposure_problem(Settings(host="0.0.0.0")).startswith("refusing to serve")
    assert exposure_problem(Settings(host="0.0.0.0", management_token="t")) is None
    assert exposure_problem(Settings(host="::1")) is None and exposure_problem(Settings(host="localhost")) is None


def test_serve_exits_at_once_on_a_public_address_without_a_token(stack):
    from tests.conftest import run_cli

    done = run_cli("--host", "0.0.0.0", "serve", redis_url=stack.redis_url, database_url=stack.database_url,
                   check=False)
    assert done.returncode != 0 and "refusing to serve" in done.stderr


async def test_transport(gql):
    api = await gql()
    client = api.client
    reply = await client.get("/graphql", params={"query": "{ version }"})
    assert reply.status == 200 and await reply.json() == {"data": {"version": 1}}
    reply = await client.get("/graphql", params={"query": 'mutation { deleteCarrier(carrier_tag:"c") { id } }'})
    assert reply.status == 400 and "mutation" in (await reply.json())["errors"][0]["message"].lower()
    reply = await client.post("/graphql", data="{ version }", headers={"Content-Type": "application/graphql"})
    assert await reply.json() == {"data": {"version": 1}}
    reply = await client.post("/graphql", data="query={ version }", headers={"Content-Type": "text/plain"})
    assert reply.status == 415 and await reply.text() == "Unsupported Media Type"
    reply = await client.post("/graphql", json={})
    assert reply.status == 400 and await reply.text() == "No GraphQL query found in the request"
    reply = await client.post("/graphql", data=b"{nope", headers={"Content-Type": "application/json"})
    assert reply.status == 400 and (await reply.json())["errors"]
    assert (await client.put("/graphql", data=b"")).status == 405
    reply = await client.get("/graphql", headers={"Accept": "text/html"})
    assert reply.status == 200 and "<html" in (await reply.text()).lower()
    _, errors = await api.error("{ version")
    assert errors[0].startswith("Syntax Error")
    _, errors = await api.error('mutation { createCarrier(carrier_tag:"c", protocol:SCTP) { id } }')
    assert "SCTP" in errors[0]
    _, errors = await api.error('mutation { authorization(account_tag:"a") { authorized } }')
    assert "transaction_tag" in errors[0] and "is required" in errors[0]
    _, errors = await api.error('{ allTransactions(filter:{}) { timestamp_auth } Transaction(transaction_tag:"x", account_tag:"y",'
                                ' id:"z") { id } x: allCarriers(perPage: 100000) { id } }')
    assert errors == ["page must be >= 0 and perPage between 0 and 10000"]


async def test_hostile_queries_are_refused_before_execution(gql):
    api = await gql(graphql_max_body=200_000)
    deep = "{ allAccounts { " + "linked_accounts { " * 20 + "id" + " }" * 21 + " }"
    _, errors = await api.error(deep)
    assert errors[0].startswith("Query is too deep")
    nested = "{" * 5000 + "}" * 5000
    status, body = await api.raw(nested)
    assert status == 400 and body["errors"]
    many = "{ " + " ".join(f"a{i}: version" for i in range(12000)) + " }"
    _, errors = await api.error(many)
    assert "tokens" in errors[0]
    # fragments fanning out: few tokens, a huge expanded query
    fragments = ["fragment F0 on __Type { name kind }"] + [
        f"fragment F{i} on __Type {{ x: ofType {{ ...F{i - 1} }} y: ofType {{ ...F{i - 1} }} }}" for i in range(1, 13)
    ]
    bomb = '{ __type(name: "Account") { ...F12 } } ' + " ".join(fragments)
    _, errors = await api.error(bomb)
    assert any(e.startswith("Query is too large") for e in errors)
    wide = "{ " + " ".join(f"a{i}: allAccounts {{ id name balance }}" for i in range(600)) + " }"
    _, errors = await api.error(wide)
    assert errors[0].startswith("Query is too large")
    _, errors = await api.error("{ ...A } fragment A on Query { ...B } fragment B on Query { ...A }")
    assert any("Cannot spread fragment" in e for e in errors)
    reply = await api.client.post("/graphql", json={"query": "{ version }", "pad": "x" * 300_000})
    assert reply.status == 413
