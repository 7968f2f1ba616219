"""Access control, transport and limits of /graphql: a hostile request gets an error, never a 500 or a hang."""

from __future__ import annotations

import importlib

import pytest
from graphql import GraphQLError, parse

from agent.config import Settings
from agent.graphql.limits import check_limits
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


async def test_without_a_management_token_the_call_mutations_still_obey_the_client_networks(gql):
    api = await gql(agent_networks="10.0.0.0/8")
    status, body = await api.raw(CALL)
    assert status == 403 and body["errors"][0]["message"].startswith("Forbidden")


async def test_an_agent_token_is_required_by_rest_and_the_call_mutations(gql):
    api = await gql(agent_token="k4m")
    body = {"transaction_tag": "x", "account_tag": "a"}
    reply = await api.client.post("/v1/authorization", json=body)
    assert reply.status == 401 and reply.headers["WWW-Authenticate"].startswith("Bearer")
    assert "agent token" in (await reply.json())["detail"]
    reply = await api.client.post("/v1/end_transaction", json=body, headers={"Authorization": "Bearer wrong"})
    assert reply.status == 401
    reply = await api.client.post("/v1/authorization", json=body, headers={"Authorization": "Bearer k4m"})
    assert reply.status == 200
    status, _ = await api.raw(CALL, headers={"Authorization": ""})
    assert status == 401
    status, _ = await api.raw(CALL, headers={"Authorization": "Bearer k4m"})
    assert status == 200


async def test_recording_calls_can_be_left_to_some_networks_only(gql):
    api = await gql(record_networks="10.0.0.0/8")
    body = {"transaction_tag": "x", "account_tag": "a", "timestamp_begin": "2030-01-01T10:00:00Z"}
    reply = await api.client.post("/v1/record_transaction", json=body)
    assert reply.status == 403 and "record" in (await reply.json())["detail"]
    reply = await api.client.post("/v1/authorization", json=body)
    assert reply.status == 200
    status, _ = await api.raw('mutation { recordTransaction(transaction_tag:"y", account_tag:"a") { ok } }')
    assert status == 403


def test_refuses_a_public_address_without_a_management_token_or_agent_client_rule():
    assert exposure_problem(Settings(host="0.0.0.0")).startswith("refusing to serve the management API")
    problem = exposure_problem(Settings(host="0.0.0.0", management_token="t"))
    assert problem.startswith("refusing to serve the agent endpoints") and "--agent-networks" in problem
    assert exposure_problem(Settings(host="0.0.0.0", management_token="t", agent_networks="10.1.2.3")) is None
    assert exposure_problem(Settings(host="0.0.0.0", management_token="t", agent_token="k")) is None
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


# --- cost limits, checked on the parsed document before graphql-core validates it -------------------------------

ALIASES_5000 = "{ " + " ".join(f"a{i}: __typename" for i in range(5000)) + " }"
LIMITS = {"max_depth": 15, "max_fields": 2000, "max_expanded": 20000}  # the settings' defaults


def _refusal(text: str, **limits) -> str:
    """The message check_limits raises for `text` (it must raise)."""
    document = parse(text)
    with pytest.raises(GraphQLError) as refused:
        check_limits(document, **{**LIMITS, **limits})
    return refused.value.message


@pytest.fixture
def validations(monkeypatch):
    """The documents ariadne hands to graphql-core's `validate`, recorded as it is called."""
    module = importlib.import_module("ariadne.graphql")  # the module, not the `graphql` function ariadne exports
    seen: list = []
    original = module.validate

    def recording(schema, document, *args, **kwargs):
        seen.append(document)
        return original(schema, document, *args, **kwargs)

    monkeypatch.setattr(module, "validate", recording)
    return seen


def test_a_5000_alias_typename_document_is_refused_by_the_pre_check():
    assert _refusal(ALIASES_5000).startswith("Query is too large: more than 2000 fields (aliases included)")


async def test_a_5000_alias_typename_document_never_reaches_validation(gql, validations):
    api = await gql()
    status, body = await api.raw(ALIASES_5000)
    assert status == 400 and body["data"] is None
    assert body["errors"][0]["message"].startswith("Query is too large: more than 2000 fields")
    assert validations == []
    assert await api("{ version }") == {"version": 1}
    assert len(validations) == 1  # the recorder sees what ariadne validates


async def test_same_name_fields_within_the_field_limit_are_refused_before_validation(gql, validations):
    # 2,000 fields are allowed, but 2,000 `__typename` are ~2 million pairs for OverlappingFieldsCanBeMergedRule
    message = _refusal("{ " + "__typename " * 2000 + "}")
    assert message.startswith("Query is too large: more than 2000 pairs of fields share a response name")
    assert "'__typename' is selected 2000 times" in message
    nested = "{ " + ('__type(name: "Account") { ' + "name " * 44 + "} ") * 44 + "}"  # 44 x 44 `name` at one path
    assert "'name' is selected 1936 times" in _refusal(nested)
    api = await gql()
    _, errors = await api.error("{ " + "__typename " * 2000 + "}")
    assert errors[0].startswith("Query is too large") and validations == []
    assert await api("{ " + "__typename " * 3 + "}") == {"__typename": "Query"}  # a few repeats merge as usual


def test_exponential_fragment_nesting_is_refused_without_expanding():
    # F40 expands to 2^40 fields (or spreads): measured from the memoized sizes of F0..F39, never walked
    levels = " ".join(f"fragment F{i} on Query {{ ...F{i - 1} ...F{i - 1} }}" for i in range(1, 41))
    assert _refusal("{ ...F40 } fragment F0 on Query { __typename } " + levels).startswith(
        "Query is too large: more than 2000 fields"
    )
    # no field at all, only spreads (F0's fragment is unknown): bounded by the expanded size
    assert _refusal("{ version ...F40 } fragment F0 on Query { ...Missing } " + levels).startswith(
        "Query is too large: its fragments expand to more than 20000 selections"
    )
    # an unused fragment is validated too, so it is measured too
    assert _refusal("{ version } fragment F0 on Query { __typename } " + levels).startswith("Query is too large")


async def test_exponential_fragment_nesting_never_reaches_validation(gql, validations):
    api = await gql()
    levels = " ".join(f"fragment F{i} on Query {{ ...F{i - 1} ...F{i - 1} }}" for i in range(1, 41))
    _, errors = await api.error("{ ...F40 } fragment F0 on Query { __typename } " + levels)
    assert errors == ["Query is too large: more than 2000 fields (aliases included), at most 2000 allowed."]
    assert validations == []


async def test_limits_count_fragments_expanded(gql):
    api = await gql(graphql_max_fields=10, graphql_max_depth=3)

    def account_types(*aliases: str) -> str:
        pieces = " ".join(f'{alias}: __type(name: "Account") {{ ...T }}' for alias in aliases)
        return "{ " + pieces + " } fragment T on __Type { name kind description }"

    account = {"name": "Account", "kind": "OBJECT", "description": None}
    assert await api(account_types("a", "b")) == {"a": account, "b": account}
    # 6 fields written, 12 selected: 3 x (__type + name kind description)
    _, errors = await api.error(account_types("a", "b", "c"))
    assert errors[0] == "Query is too large: more than 10 fields (aliases included), at most 10 allowed."
    # depth through fragments: 1 level written in the operation, 3 in the fragment, 4 selected
    deep = '{ __type(name: "Account") { ...D } } fragment D on __Type { fields { type { name } } }'
    _, errors = await api.error(deep)
    assert errors[0] == "Query is too deep: more than 3 levels, at most 3 allowed."


async def test_a_normal_query_with_fragments_still_works(gql, validations):
    api = await gql()
    query = ('query Q { version ...V __type(name: "Account") { ...Named ... on __Type { name kind } } }'
             " fragment V on Query { version } fragment Named on __Type { name }")
    assert await api(query) == {"version": 1, "__type": {"name": "Account", "kind": "OBJECT"}}
    assert len(validations) == 1
    _, errors = await api.error("{ ...Missing }")  # what the pre-check leaves to validation is still reported
    assert errors == ['Unknown fragment \'Missing\'.']


def test_fragment_cycles_duplicates_and_too_many_fragments_are_refused_by_the_pre_check():
    assert _refusal("{ ...A } fragment A on Query { ...B } fragment B on Query { ...A }") == (
        "Cannot spread fragment 'A' within itself."
    )
    assert _refusal("{ ...A } fragment A on Query { version } fragment A on Query { __typename }") == (
        "There can be only one fragment named 'A'."
    )
    # OverlappingFieldsCanBeMergedRule compares fragments pairwise: 64 fragments are 2,016 pairs
    many = "{ " + " ".join(f"...F{i}" for i in range(64)) + " } " + " ".join(
        f"fragment F{i} on Query {{ a{i}: __typename }}" for i in range(64))
    assert _refusal(many) == "Query is too large: 64 fragments make 2016 pairs to compare, at most 2000 allowed."
    check_limits(parse(many), **{**LIMITS, "max_fields": 2016})  # the same document under a higher limit


async def test_management_arguments_that_postgresql_cannot_store_or_that_are_too_long_are_refused_by_name(gql):
    api = await gql()
    _, errors = await api.error('mutation { createCarrier(carrier_tag:"c\\u0000x", host:"h", port:5060) { id } }')
    assert errors == ["carrier_tag: control characters (NUL included) are not allowed"]
    long = "x" * 4097
    _, errors = await api.error(f'mutation {{ createCarrier(carrier_tag:"{long}", host:"h", port:5060) {{ id }} }}')
    assert errors == ["carrier_tag: ensure this value has at most 4096 characters"]
    assert await api('{ allCarriers { id } }') == {"allCarriers": []}
    created = await api('mutation { createCarrier(carrier_tag:"ok", host:"h\\tx", port:5060) { carrier_tag } }')
    assert created == {"createCarrier": {"carrier_tag": "ok"}}
