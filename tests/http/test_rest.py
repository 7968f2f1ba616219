"""The REST contract of spec sections 1.1-1.3: routes, validation shapes, coercions, echo fields."""

import pytest

AUTH = {"transaction_tag": "t1", "account_tag": "100", "source": "sip:10.0.0.1:5060", "destination": "39040123123"}


@pytest.fixture
async def client(agent, tutorial):
    return await agent(tutorial)


async def test_status_answers_204_without_body(client):
    reply = await client.get("/status")
    assert reply.status == 204
    assert await reply.read() == b""


async def test_wrong_method_and_unknown_paths_answer_json_detail(client):
    reply = await client.get("/v1/authorization")
    assert reply.status == 405
    assert await reply.json() == {"detail": "Method Not Allowed"}
    for path in ("/authorization", "/v1/authorization/"):
        reply = await client.post(path, json=AUTH)
        assert reply.status == 404
        assert await reply.json() == {"detail": "Not Found"}


@pytest.mark.parametrize("body", [b"{bad", b"a=1&b=2", b"\xff\xfe"])
async def test_unparsable_body_is_400(client, body):
    reply = await client.post("/v1/authorization", data=body)
    assert reply.status == 400
    assert await reply.json() == {"detail": "There was an error parsing the body"}


@pytest.mark.parametrize("body", [b"", b"null"])
async def test_missing_body_is_422_field_required(client, body):
    reply = await client.post("/v1/end_transaction", data=body)
    assert reply.status == 422
    assert await reply.json() == {
        "detail": [{"loc": ["body", "request"], "msg": "field required", "type": "value_error.missing"}]
    }


@pytest.mark.parametrize("body", [b"[]", b'"x"', b"1"])
async def test_non_object_body_is_422_not_a_dict(client, body):
    reply = await client.post("/v1/rollback_transaction", data=body)
    assert reply.status == 422
    assert (await reply.json())["detail"][0]["type"] == "type_error.dict"


@pytest.mark.parametrize(
    "field, value, msg, kind",
    [
        ("transaction_tag", None, "none is not an allowed value", "type_error.none.not_allowed"),
        ("transaction_tag", ["a"], "str type expected", "type_error.str"),
        ("transaction_tag", {}, "str type expected", "type_error.str"),
        ("tags", "abc", "value is not a valid list", "type_error.list"),
        ("timestamp_auth", "notadate", "invalid datetime format", "value_error.datetime"),
        ("timestamp_auth", "2019-08-15", "invalid datetime format", "value_error.datetime"),
        ("timestamp_auth", "20190815T212615Z", "invalid datetime format", "value_error.datetime"),
    ],
)
async def test_field_errors_are_422_naming_the_field(client, field, value, msg, kind):
    reply = await client.post("/v1/authorization", json={**AUTH, field: value})
    assert reply.status == 422
    assert await reply.json() == {"detail": [{"loc": ["body", "request", field], "msg": msg, "type": kind}]}


async def test_missing_transaction_tag_is_422(client):
    reply = await client.post("/v1/begin_transaction", json={"account_tag": "100"})
    assert reply.status == 422
    assert (await reply.json())["detail"][0]["loc"] == ["body", "request", "transaction_tag"]


async def test_record_rejects_unparsable_boolean(client):
    reply = await client.post("/v1/record_transaction", json={"transaction_tag": "r", "authorized": "maybe"})
    assert reply.status == 422
    assert (await reply.json())["detail"][0]["type"] == "type_error.bool"


async def test_any_content_type_carrying_json_is_accepted(client):
    reply = await client.post("/v1/authorization", data=b'{"transaction_tag":"x1","account_tag":"100",'
                              b'"destination":"39040"}', headers={"Content-Type": "text/plain"})
    assert reply.status == 200
    assert (await reply.json())["authorized"] is True


async def test_numbers_and_booleans_are_coerced_to_strings_and_unknown_fields_ignored(client):
    reply = await client.post("/v1/authorization", json={
        "transaction_tag": 100, "account_tag": 100, "destination": 39040123, "timestamp": "ignored",
        "tags": [1, "a"],
    })
    body = await reply.json()
    assert reply.status == 200
    assert body["transaction_tag"] == "100" and body["account_tag"] == "100"
    assert body["authorized"] is True


@pytest.mark.parametrize("stamp", ["2030-01-01T10:00:00Z", "2030-01-01 10:00", "2030-01-01T10:00:00.5+02:00",
                                   1893492000, "1893492000"])
async def test_datetime_forms_accepted(client, stamp):
    reply = await client.post("/v1/authorization", json={**AUTH, "timestamp_auth": stamp})
    assert reply.status == 200


async def test_authorization_response_has_every_field_in_contract_order(client):
    reply = await client.post("/v1/authorization", json=AUTH)
    body = await reply.json()
    assert list(body) == [
        "tenant", "transaction_tag", "account_tag", "destination_account_tag", "authorized",
        "authorized_destination", "unauthorized_account_tag", "unauthorized_reason", "max_available_units",
        "balance", "carriers",
    ]
    assert body == {
        "tenant": "default", "transaction_tag": "t1", "account_tag": "100", "destination_account_tag": None,
        "authorized": True, "authorized_destination": False, "unauthorized_account_tag": None,
        "unauthorized_reason": None, "max_available_units": 300, "balance": 100,
        "carriers": ["UDP:localhost:5061"],
    }


@pytest.mark.parametrize("path", ["/v1/begin_transaction", "/v1/end_transaction", "/v1/rollback_transaction",
                                  "/v1/record_transaction"])
async def test_transaction_endpoints_echo_request_tags(client, path):
    reply = await client.post(path, json={"transaction_tag": "nothing-here", "tenant": "other",
                                          "account_tag": "a", "destination_account_tag": "b"})
    assert reply.status == 200
    assert await reply.json() == {"ok": False, "tenant": "other", "transaction_tag": "nothing-here",
                                  "account_tag": "a", "destination_account_tag": "b"}


async def test_kamailio_style_all_string_request_is_rated(client):
    reply = await client.post("/v1/authorization", json={
        "transaction_tag": "abc@10.0.0.1", "account_tag": "100", "source": "sip:100@10.0.0.1:5060",
        "destination": "sip:39040123456@anotherdomain.com:5060",
    })
    body = await reply.json()
    assert body["authorized"] is True and body["max_available_units"] == 300


async def test_other_methods_of_existing_paths_answer_405_with_allow(client):
    reply = await client.put("/status")
    assert reply.status == 405 and "GET" in reply.headers["Allow"]
    assert await reply.json() == {"detail": "Method Not Allowed"}
    reply = await client.get("/management/pricelists/p1/rates")
    assert reply.status == 405 and reply.headers["Allow"] == "POST"
    reply = await client.delete("/nowhere/at/all")
    assert reply.status == 404 and await reply.json() == {"detail": "Not Found"}


@pytest.mark.parametrize("field, value, kind", [
    ("source", "sip:a\u0000b@10.0.0.1", "value_error.str.control"),
    ("destination", "39\n040", "value_error.str.control"),
    ("transaction_tag", "x" * 1025, "value_error.any_str.max_length"),
    ("tags", ["ok", "bad\u0000"], "value_error.str.control"),
    ("tags", [str(n) for n in range(65)], "value_error.list.max_items"),
])
async def test_what_postgresql_could_not_store_is_refused_with_422_naming_the_field(client, field, value, kind):
    reply = await client.post("/v1/authorization", json={**AUTH, field: value})
    assert reply.status == 422
    [error] = (await reply.json())["detail"]
    assert (error["loc"], error["type"]) == (["body", "request", field], kind)


@pytest.mark.parametrize("begin, end, msg", [
    ("1900-01-01T00:00:00Z", "2100-01-01T00:00:00Z", "a recorded call lasts at most"),
    ("2030-01-01T10:00:10Z", "2030-01-01T10:00:00Z", "must not be before timestamp_begin"),
])
async def test_a_record_longer_than_any_grant_or_ending_before_it_began_is_refused_with_422(client, stack, begin,
                                                                                           end, msg):
    """A record charges without a balance check: its span is bounded (and it once overflowed a column)."""
    before = await stack.account_state(AUTH["account_tag"])
    reply = await client.post("/v1/record_transaction", json={**AUTH, "transaction_tag": "span",
                                                             "timestamp_begin": begin, "timestamp_end": end})
    assert reply.status == 422
    [error] = (await reply.json())["detail"]
    assert error["loc"] == ["body", "request", "timestamp_end"] and msg in error["msg"]
    assert await stack.account_state(AUTH["account_tag"]) == before


async def test_the_longest_accepted_strings_and_unicode_pass(client):
    reply = await client.post("/v1/authorization", json={**AUTH, "transaction_tag": "é" * 1024,
                                                         "tags": ["☎"] * 64})
    assert reply.status == 200 and (await reply.json())["authorized"] is True


async def test_a_nul_in_a_graphql_call_mutation_is_refused(client):
    reply = await client.post("/graphql", json={"query": 'mutation { authorization(transaction_tag:"g",'
                                                          ' account_tag:"100", source:"a\\u0000b") { authorized } }'})
    body = await reply.json()
    assert reply.status == 400 and "source: control characters" in body["errors"][0]["message"]


async def test_a_redis_error_reply_answers_503_with_a_json_body_and_is_counted(client, stack):
    from agent.metrics import ENDPOINTS
    from tests.test_metrics import _sample

    ENDPOINTS.flush()
    before = _sample("rating_requests_total", endpoint="authorization", status="503")
    await stack.redis.config_set("maxmemory", "1")  # every write refused: OOM
    try:
        reply = await client.post("/v1/authorization", json=AUTH)
        assert reply.status == 503
        assert (await reply.json())["detail"].endswith("refused the request (OOM)")
    finally:
        await stack.redis.config_set("maxmemory", "0")
    ENDPOINTS.flush()
    assert _sample("rating_requests_total", endpoint="authorization", status="503") == before + 1
    assert (await client.post("/v1/authorization", json=AUTH)).status == 200


async def test_a_function_library_lost_by_redis_is_loaded_again_by_the_next_request(client, stack):
    await stack.redis.execute_command("FUNCTION", "FLUSH")
    reply = await client.post("/v1/authorization", json=AUTH)
    assert reply.status == 200 and (await reply.json())["authorized"] is True
