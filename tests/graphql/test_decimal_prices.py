"""Decimal prices through GraphQL: a pricelist's scale and rounding, rates written and read as decimals."""

from __future__ import annotations

SETUP = ('mutation { createCarrier(carrier_tag:"c0") { id }'
         ' createPricelist(pricelist_tag:"p4", scale:4, rounding:half_even) { pricelist_tag scale rounding } }')
FIELDS = "prefix connect_fee rate maximum_cost connect_fee_decimal rate_decimal maximum_cost_decimal"


async def test_a_pricelist_has_a_scale_and_a_rounding_and_its_rates_take_decimals(gql):
    api = await gql()
    data = await api(SETUP)
    assert data["createPricelist"] == {"pricelist_tag": "p4", "scale": 4, "rounding": "half_even"}
    data = await api('mutation { createPricelist(pricelist_tag:"p0") { scale rounding } }')
    assert data["createPricelist"] == {"scale": 0, "rounding": "up"}  # integer money, as before
    data = await api('mutation { createPricelistRate(pricelist_tag:"p4", carrier_tag:"c0", prefix:"39",'
                     ' rate_decimal:"0.0085", connect_fee_decimal:"0.5", maximum_cost_decimal:"12",'
                     f' rate_increment:60) {{ {FIELDS} }} }}')
    assert data["createPricelistRate"] == {
        "prefix": "39", "connect_fee": 5000, "rate": 85, "maximum_cost": 120000, "connect_fee_decimal": "0.5000",
        "rate_decimal": "0.0085", "maximum_cost_decimal": "12.0000"}
    data = await api(f'mutation {{ updatePricelistRate(pricelist_tag:"p4", carrier_tag:"c0", prefix:"39", rate:90)'
                     f' {{ {FIELDS} }} }}')  # an integer is in units of the scale, as stored
    assert data["updatePricelistRate"]["rate_decimal"] == "0.0090"
    # rounding may change (the deck is built again); the scale of a pricelist with rates may not
    data = await api('mutation { updatePricelist(pricelist_tag:"p4", rounding:down) { rounding } }')
    assert data["updatePricelist"] == {"rounding": "down"}
    _, errors = await api.error('mutation { updatePricelist(pricelist_tag:"p4", scale:2) { scale } }')
    assert errors == ["scale cannot change while the pricelist has rates (it is 4)!"]
    _, errors = await api.error('mutation { updatePricelist(pricelist_tag:"p4", scale:null) { scale } }')
    assert errors == ["scale cannot change while the pricelist has rates (it is 4)!"]
    data = await api('mutation { updatePricelist(pricelist_tag:"p0", scale:6) { scale } }')  # no rates yet
    assert data["updatePricelist"] == {"scale": 6}
    data = await api('{ allPricelists(sortField:"pricelist_tag") { pricelist_tag scale rounding } }')
    assert data["allPricelists"] == [{"pricelist_tag": "p0", "scale": 6, "rounding": "up"},
                                     {"pricelist_tag": "p4", "scale": 4, "rounding": "down"}]


async def test_bad_decimal_prices_and_terms_are_refused_naming_the_field(gql):
    api = await gql()
    await api(SETUP)
    key = 'pricelist_tag:"p4", carrier_tag:"c0", prefix:"39"'
    cases = [
        (f'createPricelistRate({key}, rate_decimal:"0.00851")',
         "rate_decimal has more than 4 decimals (the pricelist's scale), got '0.00851'!"),
        (f'createPricelistRate({key}, connect_fee_decimal:"1,5")', "connect_fee_decimal must be a decimal number, got '1,5'!"),
        (f'createPricelistRate({key}, rate:1, rate_decimal:"1")', "Give rate or rate_decimal, not both!"),
        ('createPricelist(pricelist_tag:"p9", scale:7)', "scale must be an integer from 0 to 6!"),
    ]
    for mutation, message in cases:
        _, errors = await api.error(f"mutation {{ {mutation} {{ id }} }}")
        assert errors == [message], mutation
    _, errors = await api.error('mutation { createPricelist(pricelist_tag:"p9", rounding:nearest) { id } }')
    assert errors and "nearest" in errors[0]
    data = await api("{ allPricelistRates { prefix } allPricelists { pricelist_tag } }")
    assert data == {"allPricelistRates": [], "allPricelists": [{"pricelist_tag": "p4"}]}
