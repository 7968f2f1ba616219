"""Management API contract, per type: create, read by id and by natural key, list (filter, sort, page), count,
update of one field, delete, and the error messages for missing keys and dangling references."""

from __future__ import annotations

import json

import pytest


class Enum(str):
    """An enum value, written unquoted."""


def literal(value) -> str:
    if isinstance(value, Enum):
        return str(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(map(literal, value)) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {literal(v)}" for k, v in value.items()) + "}"
    return json.dumps(value)


def arguments(values: dict) -> str:
    return ", ".join(f"{k}: {literal(v)}" for k, v in values.items())


PREREQUISITES = """mutation {
  createCarrier(carrier_tag:"c0", host:"h0") { id }
  createPricelist(pricelist_tag:"p0") { id }
  createCustomer(customer_tag:"k0") { id }
  createAccount(account_tag:"a0", type:PREPAID) { id }
}"""

# name, plural, natural key of record n, other creation fields of record n, fields read back, one update
ENTITIES = [
    ("Carrier", "Carriers", lambda n: {"carrier_tag": f"c{n}"},
     lambda n: {"host": f"h{n}", "port": 5060 + n, "protocol": Enum("TCP")},
     "carrier_tag host port protocol active", ("host", "changed")),
    ("Pricelist", "Pricelists", lambda n: {"pricelist_tag": f"p{n}"},
     lambda n: {"name": f"list {n}", "currency": Enum("USD")}, "pricelist_tag name currency", ("name", "changed")),
    ("PricelistRate", "PricelistRates", lambda n: {"pricelist_tag": "p0", "carrier_tag": "c0", "prefix": f"3{n}"},
     lambda n: {"rate": n, "rate_increment": 60, "description": f"d{n}", "datetime_start": "2020-01-01T00:00:00Z"},
     "pricelist_tag carrier_tag prefix rate rate_increment connect_fee interval_start description active"
     " datetime_start datetime_end", ("rate", 99)),
    ("Account", "Accounts", lambda n: {"account_tag": f"a{n}"},
     lambda n: {"type": Enum("POSTPAID"), "name": f"acc {n}", "customer_tag": "k0", "max_concurrent_transactions": n,
                "tags": ["x", f"t{n}"], "linked_accounts": ["a0"]},
     "account_tag type name customer_tag max_concurrent_transactions tags active balance"
     " linked_accounts { account_tag } customer { customer_tag }", ("name", "changed")),
    ("Customer", "Customers", lambda n: {"customer_tag": f"k{n}"},
     lambda n: {"company_name": f"co {n}", "vat_policy": Enum("EXEMPT"), "city": "Trieste"},
     "customer_tag company_name vat_policy city active", ("city", "Udine")),
    ("Seller", "Sellers", lambda n: {"seller_tag": f"s{n}"},
     lambda n: {"company_name": f"co {n}", "country": "IT"}, "seller_tag company_name country active",
     ("country", "SI")),
    ("Invoice", "Invoices", lambda n: {"invoice_number": f"2020/{n}"},
     lambda n: {"invoice_date": f"2020-01-0{n}", "customer_tag": "k0", "net_total": 5_000_000_000 + n, "vat_rate": 22,
                "rows": [{"prefix": "39", "description": "Italy", "unit_price": 2, "quantity": 3, "total": 6}]},
     "invoice_number invoice_date customer_tag net_total vat_rate rows { prefix quantity total } customer { customer_tag }",
     ("vat_rate", 10)),
    ("Transaction", "Transactions", lambda n: {"transaction_tag": f"t{n}", "account_tag": "a0"},
     lambda n: {"source": f"sip:{n}@x", "destination": "39040", "fee": n, "duration": 60, "primary": True,
                "timestamp_begin": "2019-08-15T21:26:17.250+02:00", "tags": ["m"],
                "destination_rate": {"pricelist_tag": "p0", "prefix": "39", "rate": 2}},
     "transaction_tag account_tag source destination fee duration primary inbound tags timestamp_begin"
     " destination_rate { tenant prefix rate }", ("fee", 7)),
]


@pytest.mark.parametrize("name, plural, key, extra, fields, change", ENTITIES, ids=[e[0] for e in ENTITIES])
async def test_entity_contract(gql, name, plural, key, extra, fields, change):
    api = await gql()
    await api(PREREQUISITES)
    created = {}
    for n in (1, 2, 3):
        data = await api(f"mutation {{ create{name}({arguments({**key(n), **extra(n)})}) {{ id {fields} }} }}")
        created[n] = data[f"create{name}"]
        for field, value in {**key(n), **extra(n)}.items():
            if field not in ("destination_rate", "rows", "linked_accounts", "timestamp_begin", "datetime_start"):
                assert created[n][field] == value, (field, created[n])
    one = created[2]
    # read by id and by natural key
    assert (await api(f'{{ {name}(id: "{one["id"]}") {{ id {fields} }} }}'))[name] == one
    assert (await api(f"{{ {name}({arguments(key(2))}) {{ id {fields} }} }}"))[name] == one
    # list: filter, sort, page, count
    key_field = next(iter(key(1))) if name != "PricelistRate" else "prefix"
    data = await api(f"{{ all{plural}(filter: {literal({key_field: key(2)[key_field]})}) {{ id }} }}")
    assert data[f"all{plural}"] == [{"id": one["id"]}]
    page = f'sortField: "{key_field}", sortOrder: "desc", perPage: 2'
    data = await api(f"{{ first: all{plural}({page}, page: 0) {{ id }} second: all{plural}({page}, page: 1) {{ id }}"
                     f" _all{plural}Meta {{ count }} }}")
    assert [r["id"] for r in data["first"] + data["second"]][:3] == [created[3]["id"], one["id"], created[1]["id"]]
    expected = 3 if name not in ("Account", "Carrier", "Pricelist", "Customer") else 4  # + the prerequisite
    assert data[f"_all{plural}Meta"] == {"count": expected}
    # updating one field leaves the others as they were
    field, value = change
    data = await api(f'mutation {{ update{name}(id: "{one["id"]}", {field}: {literal(value)}) {{ id {fields} }} }}')
    assert data[f"update{name}"] == {**one, field: value}
    # delete: returns the record once, then null
    data = await api(f"mutation {{ delete{name}({arguments(key(2))}) {{ id }} }}")
    assert data[f"delete{name}"] == {"id": one["id"]}
    data = await api(f'mutation {{ delete{name}({arguments(key(2))}) {{ id }} }} ')
    assert data[f"delete{name}"] is None
    assert (await api(f'{{ {name}(id: "{one["id"]}") {{ id }} }}'))[name] is None
    # a missing key is an error naming the required arguments
    _, errors = await api.error(f"{{ {name} {{ id }} }}")
    keys = [k for k in key(1)]
    expected_message = (f"Provide either the id or tenant and {keys[0]}!" if len(keys) == 1 else
                        f"Provide either the id or tenant, {', '.join(keys[:-1])} and {keys[-1]}!")
    if name == "PricelistRate":
        expected_message = "Provide either the id or tenant, pricelist_tag, carrier_tag and prefix!"
    assert errors == [expected_message]


async def test_dangling_references_are_refused_with_their_messages(gql):
    api = await gql()
    await api(PREREQUISITES)
    cases = [
        ('createPricelistRate(pricelist_tag:"nope", carrier_tag:"c0", prefix:"1")',
         "Price list with id = None and tag = nope not found in tenant default!"),
        ('createPricelistRate(pricelist_tag:"p0", carrier_tag:"nope", prefix:"1")',
         "Carrier with id = None and tag = nope not found in tenant default!"),
        ('createPricelistRate(pricelist_id:"00000000-0000-4000-8000-000000000000", carrier_tag:"c0", prefix:"1")',
         "Price list with id = 00000000-0000-4000-8000-000000000000 and tag = None not found in tenant default!"),
        ('createAccount(account_tag:"x", type:PREPAID, customer_tag:"nope")',
         "Customer with tag = nope not found in tenant default!"),
        ('createAccount(account_tag:"x", type:PREPAID, linked_accounts:["a0", "nope"])',
         "Account with tag = nope not found in tenant default!"),
        ('createTransaction(transaction_tag:"t", account_tag:"nope")', "Account with id = nope not found in tenant default!"),
        ('createTransaction(transaction_tag:"t", account_tag:"a0", invoice_number:"nope")',
         "Invoice with number = nope not found in tenant default!"),
        ('createInvoice(invoice_number:"1", customer_tag:"nope")', "Customer with id = nope not found in tenant default!"),
        ('createCarrier(host:"x")', "Provide either the id or tenant and carrier_tag!"),
        ('deleteAccount(tenant:"default")', "Provide either the id or tenant and account_tag!"),
    ]
    for mutation, message in cases:
        data, errors = await api.error(f"mutation {{ {mutation} {{ __typename }} }}")
        assert errors == [message], mutation
    # nothing was written by the refused mutations
    assert (await api('{ _allAccountsMeta { count } _allPricelistRatesMeta { count } _allTransactionsMeta { count } }')) == {
        "_allAccountsMeta": {"count": 1}, "_allPricelistRatesMeta": {"count": 0}, "_allTransactionsMeta": {"count": 0}}


async def test_pricelist_rate_by_ids_and_id_lookups(gql):
    api = await gql()
    ids = await api('mutation { createCarrier(carrier_tag:"c0") { id } createPricelist(pricelist_tag:"p0") { id } }')
    carrier_id, pricelist_id = ids["createCarrier"]["id"], ids["createPricelist"]["id"]
    data = await api(f'mutation {{ createPricelistRate(pricelist_id:"{pricelist_id}", carrier_id:"{carrier_id}",'
                     f' prefix:"39") {{ tenant pricelist_tag carrier_tag pricelist_id carrier_id active }} }}')
    assert data["createPricelistRate"] == {"tenant": "default", "pricelist_tag": "p0", "carrier_tag": "c0",
                                           "pricelist_id": pricelist_id, "carrier_id": carrier_id, "active": True}
    data = await api(f'{{ allPricelistRates(filter:{{pricelist_id:"{pricelist_id}"}}) {{ prefix }} }}')
    assert data == {"allPricelistRates": [{"prefix": "39"}]}
