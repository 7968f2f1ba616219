"""Billing schemes through GraphQL: the import's checks, with Canyan-style messages, and the fields read back."""

from __future__ import annotations

FIELDS = "prefix rate rate_increment initial_increment minimum_duration maximum_cost"
SETUP = 'mutation { createCarrier(carrier_tag:"c0") { id } createPricelist(pricelist_tag:"p0") { id } }'


async def test_a_rate_with_a_scheme_is_written_and_read_back(gql):
    api = await gql()
    await api(SETUP)
    data = await api('mutation { createPricelistRate(pricelist_tag:"p0", carrier_tag:"c0", prefix:"39", rate:1,'
                     f' rate_increment:6, initial_increment:30, minimum_duration:60, maximum_cost:1000) {{ {FIELDS} }} }}')
    assert data["createPricelistRate"] == {"prefix": "39", "rate": 1, "rate_increment": 6, "initial_increment": 30,
                                           "minimum_duration": 60, "maximum_cost": 1000}
    data = await api('mutation { createPricelistRate(pricelist_tag:"p0", carrier_tag:"c0", prefix:"44", rate:1)'
                     f' {{ {FIELDS} }} }}')
    assert data["createPricelistRate"] == {"prefix": "44", "rate": 1, "rate_increment": 1, "initial_increment": None,
                                           "minimum_duration": 0, "maximum_cost": None}
    # a null clears a field to its default
    data = await api('mutation { updatePricelistRate(pricelist_tag:"p0", carrier_tag:"c0", prefix:"39",'
                     f' initial_increment:null, minimum_duration:null, maximum_cost:null) {{ {FIELDS} }} }}')
    assert data["updatePricelistRate"]["initial_increment"] is None
    assert data["updatePricelistRate"]["minimum_duration"] == 0 and data["updatePricelistRate"]["maximum_cost"] is None


async def test_a_scheme_the_import_refuses_is_refused_and_nothing_is_written(gql):
    api = await gql()
    await api(SETUP)
    await api('mutation { createPricelistRate(pricelist_tag:"p0", carrier_tag:"c0", prefix:"39", rate:1,'
              ' rate_increment:6, initial_increment:30) { prefix } }')
    key = 'pricelist_tag:"p0", carrier_tag:"c0"'
    cases = [
        (f'createPricelistRate({key}, prefix:"1", rate_increment:30, initial_increment:45)',
         "initial_increment (45) must be a multiple of rate_increment (30)!"),
        (f'createPricelistRate({key}, prefix:"1", rate_increment:-6)', "rate_increment must not be negative!"),
        (f'createPricelistRate({key}, prefix:"1", initial_increment:0)', "initial_increment must be positive!"),
        (f'createPricelistRate({key}, prefix:"1", minimum_duration:-1)', "minimum_duration must not be negative!"),
        (f'createPricelistRate({key}, prefix:"1", maximum_cost:9007199254740992)',
         "maximum_cost must be at most 9007199254740991!"),
        (f'createPricelistRate({key}, prefix:"1", rate:2000000000)',
         "the fee of a 10000000 s call must stay below 2**53!"),
        # an update is checked with the fields it leaves as they are: 30 is no multiple of 60
        (f'updatePricelistRate({key}, prefix:"39", rate_increment:60)',
         "initial_increment (30) must be a multiple of rate_increment (60)!"),
    ]
    for mutation, message in cases:
        _, errors = await api.error(f"mutation {{ {mutation} {{ prefix }} }}")
        assert errors == [message], mutation
    data = await api(f"{{ allPricelistRates {{ {FIELDS} }} }}")
    assert data["allPricelistRates"] == [{"prefix": "39", "rate": 1, "rate_increment": 6, "initial_increment": 30,
                                          "minimum_duration": 0, "maximum_cost": None}]
