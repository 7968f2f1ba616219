"""Longest-prefix lookup in a tenant's rate table (fixes #1 and #2)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from agent.pricing.rate import Rate
from agent.pricing.table import RateTable, key_of


def rate(prefix: str, carrier: str = "c", pricelist: str = "pl", **extra) -> Rate:
    return Rate("t", pricelist, carrier, prefix, **extra)


def table(*prefixes: str) -> RateTable:
    return RateTable.build(rate(p) for p in prefixes)


def matched(tbl: RateTable, destination: str) -> list[tuple[int, list[str]]]:
    return [(spec, [r.prefix for r in rates]) for spec, rates in tbl.matches(destination)]


def first_prefixes(tbl: RateTable, destination: str) -> list[str] | None:
    found = matched(tbl, destination)
    return found[0][1] if found else None


def test_longest_prefix_wins_and_every_match_is_listed_most_specific_first():
    tbl = table("3", "39", "390", "3904", "49")
    assert matched(tbl, "39040123456") == [(4, ["3904"]), (3, ["390"]), (2, ["39"]), (1, ["3"])]


def test_a_15_digit_prefix_matches_without_a_length_limit():
    tbl = table("39", "390401234567890")
    assert first_prefixes(tbl, "3904012345678901") == ["390401234567890"]
    assert first_prefixes(tbl, "sip:3904012345678901@example.com") == ["390401234567890"]


def test_a_prefix_longer_than_nine_characters_matches():
    tbl = table("39", "3912345678")
    assert first_prefixes(tbl, "39123456789") == ["3912345678"]


def test_a_prefix_equal_to_the_whole_number_matches():
    tbl = table("391")
    assert first_prefixes(tbl, "391") == ["391"]
    assert first_prefixes(tbl, "sip:391@host") == ["391"]


def test_a_prefix_longer_than_the_number_does_not_match():
    assert first_prefixes(table("3912"), "391") is None


def test_a_non_matching_prefix_is_not_returned():
    assert matched(table("49", "390"), "39140") == []


def test_canyan_sip_prefixes_match_a_raw_to_uri_and_bare_numbers():
    tbl = table("sip:39", "sip:49")
    assert first_prefixes(tbl, "sip:39040123456@anotherdomain.com:5060") == ["sip:39"]
    assert first_prefixes(tbl, "39040123123") == ["sip:39"]
    assert first_prefixes(tbl, "sips:+39040123@host") == ["sip:39"]
    assert first_prefixes(tbl, "tel:+39-040-123") == ["sip:39"]
    assert first_prefixes(tbl, "sip:4930123@host") == ["sip:49"]


def test_bare_digit_prefixes_match_sip_uris():
    assert first_prefixes(table("39"), "sip:39040123456@domain:5060") == ["39"]


def test_spellings_of_one_number_prefix_are_grouped_together():
    tbl = table("39", "+39", "sip:39", "tel:+39")
    [(specificity, prefixes)] = matched(tbl, "39040")
    assert specificity == 2 and sorted(prefixes) == sorted(["39", "+39", "sip:39", "tel:+39"])
    assert tbl.size == 4


def test_each_group_lists_its_rates_best_first_whatever_the_load_order():
    from agent.pricing.rate import Rate
    from agent.pricing.table import RateTable

    rates = [Rate("t", "p", f"c{i}", "39", rate=price, rate_increment=increment)
             for i, (price, increment) in enumerate([(5, 1), (60, 60), (2, 1), (120, 60)])]
    for ordering in (rates, rates[::-1]):
        [(_, group)] = list(RateTable.build(ordering).matches("39040"))
        assert [r.carrier_tag for r in group] == ["c1", "c2", "c3", "c0"]


def test_raw_uri_prefixes_match_the_raw_destination():
    tbl = table("sip:alice@", "39")
    assert matched(tbl, "sip:alice@example.com") == [(6, ["sip:alice@"])]
    assert matched(tbl, "sip:39040@example.com") == [(2, ["39"])]
    assert matched(tbl, "alice") == []


def test_a_raw_prefix_with_more_characters_after_its_scheme_beats_a_shorter_number_prefix():
    tbl = table("39040", "sip:39040@example.com")
    assert matched(tbl, "sip:39040@example.com:5060") == [
        (17, ["sip:39040@example.com"]),
        (5, ["39040"]),
    ]


def test_a_longer_number_prefix_beats_a_shorter_one_written_with_separators():
    tbl = table("tel:+39-", "39040")
    assert matched(tbl, "tel:+39-040-123") == [(5, ["39040"]), (2, ["tel:+39-"])]


def test_a_raw_prefix_does_not_match_a_bare_number():
    assert matched(table("sip:39040@example.com"), "39040") == []


def test_the_empty_prefix_matches_everything_last():
    tbl = table("", "39")
    assert matched(tbl, "39040") == [(2, ["39"]), (0, [""])]
    assert matched(tbl, "4930") == [(0, [""])]
    assert matched(tbl, "sip:alice@example.com") == [(0, [""])]


def test_an_empty_table_matches_nothing():
    assert matched(RateTable().freeze(), "39040") == []


def test_destination_whitespace_is_ignored_for_raw_prefixes():
    assert first_prefixes(table("sip:alice@"), "  sip:alice@example.com ") == ["sip:alice@"]


def test_build_counts_rates_and_indexes_lengths_longest_first():
    tbl = table("39", "3904", "sip:alice@", "sip:bob@example", "+39")
    assert tbl.size == 5
    assert tbl.number_lengths == (4, 2)
    assert tbl.raw_lengths == (15, 10)


def test_rates_of_several_pricelists_and_carriers_share_their_prefix_group():
    tbl = RateTable.build([rate("39", "c1", "a"), rate("39", "c2", "b"), rate("3", "c3", "a")])
    found = list(tbl.matches("39040"))
    assert [r.carrier_tag for r in found[0][1]] == ["c1", "c2"]
    assert [r.carrier_tag for r in found[1][1]] == ["c3"]


# --- properties ---------------------------------------------------------------------------------------------------

prefix_sets = st.sets(st.text("0129", max_size=7), max_size=25)
numbers = st.text("0129", min_size=1, max_size=12)
spellings = st.sampled_from(["{}", "+{}", "sip:{}", "tel:+{}"])
destinations = st.sampled_from(["{}", "+{}", "sip:{}@example.com:5060", "tel:+{}", "sips:{};user=phone@h"])
PROPERTY = settings(max_examples=300, deadline=None)


def spelt(prefix: str, spelling: str) -> str:
    return spelling.format(prefix) if prefix else prefix  # a scheme alone would be a raw prefix


@PROPERTY
@given(prefix_sets, numbers, spellings, destinations)
def test_first_match_is_exactly_the_longest_prefix_the_number_starts_with(prefixes, number, spelling, destination):
    tbl = RateTable.build(rate(spelt(p, spelling), pricelist=p) for p in prefixes)
    expected = max((p for p in prefixes if number.startswith(p)), key=len, default=None)
    found = list(tbl.matches(destination.format(number)))
    if expected is None:
        assert found == []
    else:
        specificity, rates = found[0]
        assert specificity == len(expected)
        assert [r.pricelist_tag for r in rates] == [expected]


@PROPERTY
@given(prefix_sets, numbers)
def test_matches_lists_every_matching_prefix_once_by_decreasing_length(prefixes, number):
    tbl = table(*prefixes)
    expected = sorted((p for p in prefixes if number.startswith(p)), key=len, reverse=True)
    assert [rates[0].prefix for _, rates in tbl.matches(number)] == expected
    assert [spec for spec, _ in tbl.matches(number)] == [len(p) for p in expected]


def test_a_table_is_dated_only_when_some_rate_has_effective_dates():
    """Transactions skip building the call's datetime for undated tables: the flag must see every rate."""
    from datetime import datetime, timezone

    start = datetime(2020, 1, 1, tzinfo=timezone.utc)
    assert not table("39", "sip:alice@").dated
    assert RateTable.build([rate("39"), rate("390", datetime_start=start)]).dated
    assert RateTable.build([rate("sip:bob@", datetime_end=start)]).dated


@settings(max_examples=60, deadline=None)
@given(below=st.lists(st.sampled_from(["3", "39", "390", "44", "sip:a"]), max_size=6),
       changed=st.dictionaries(st.sampled_from(["39", "390", "3904", "44", "49", "sip:a"]),
                               st.lists(st.sampled_from(["c1", "c2", "c3"]), max_size=3, unique=True), max_size=6),
       step=st.integers(1, 4))
def test_a_layer_laid_in_steps_is_the_layer_laid_at_once_with_a_pause_after_each_step(below, changed, step):
    base = RateTable.build(rate(p) for p in below)
    changes = {key_of(prefix): tuple(rate(prefix, carrier) for carrier in carriers)
               for prefix, carriers in changed.items()}
    steps = list(RateTable().freeze().over_in_steps(base, changes, None, step))
    at_once = RateTable().freeze().over(base, changes)
    assert steps[:-1] == [None] * (len(changes) // step)
    layered = steps[-1]
    assert layered.size == at_once.size and layered.upper.numbers == at_once.upper.numbers
    assert layered.upper.raw == at_once.upper.raw and layered.upper.number_lengths == at_once.upper.number_lengths
    for number in ("3904123", "4912", "sip:a@b", "1"):
        assert list(layered.matches(number)) == list(at_once.matches(number))


@settings(max_examples=60, deadline=None)
@given(carriers=st.lists(st.sampled_from(["c1", "c2", "c3", "c4"]), min_size=1, max_size=4, unique=True),
       prices=st.lists(st.integers(0, 9), min_size=4, max_size=4), raw=st.booleans())
def test_a_group_laid_over_unordered_is_looked_up_best_first_by_every_lookup(carriers, prices, raw):
    prefix = "sip:bob" if raw else "3904"
    rates = [rate(prefix, carrier, rate=price) for carrier, price in zip(carriers, prices)]
    expected = tuple(sorted(rates, key=Rate.order_key))
    for lookup in ("group", "matches", "members"):
        layered = RateTable().freeze().over(RateTable.build([rate("39")]), {key_of(prefix): list(rates)})
        if lookup == "members":  # the order laid over, unsorted
            assert sorted(layered.upper.members(*key_of(prefix)), key=Rate.order_key) == list(expected)
        elif lookup == "group":
            assert layered.group(*key_of(prefix)) == expected
        else:
            assert list(layered.matches(f"{prefix}12@host" if raw else "390412"))[0][1] == expected
        assert layered.size == len(rates) + 1
