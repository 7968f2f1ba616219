"""The memory-mapped deck answers every lookup exactly as the in-memory table does, and layers compose."""

from __future__ import annotations

from datetime import datetime, timezone

from hypothesis import given, settings
from hypothesis import strategies as st

from agent.pricing import deck
from agent.pricing.rate import Rate
from agent.pricing.table import Layered, RateTable

START = datetime(2030, 1, 1, 8, 30, 0, 123456, tzinfo=timezone.utc)

rates = st.builds(
    Rate,
    tenant=st.just("t"),
    pricelist_tag=st.sampled_from(["p1", "p2"]),
    carrier_tag=st.sampled_from(["c1", "c2", "c3"]),
    prefix=st.builds(lambda spelling, digits: spelling.format(digits),
                     st.sampled_from(["{}", "+{}", "sip:{}", "tel:+{}", "{}-", "sip:{}@example.com"]),
                     st.text("0129", max_size=5)),
    connect_fee=st.integers(0, 3),
    rate=st.integers(0, 2**40),
    rate_increment=st.sampled_from([0, 1, 6, 60]),
    interval_start=st.integers(0, 2),
    description=st.sampled_from([None, "Italy", "Mobile ☎"]),
    datetime_start=st.sampled_from([None, START]),
    datetime_end=st.none(),
)
destinations = st.builds(lambda spelling, digits: spelling.format(digits),
                         st.sampled_from(["{}", "+{}", "sip:{}@example.com:5060", "tel:+{}", " sip:{}@h "]),
                         st.text("0129", min_size=0, max_size=8))


def built(tmp_path_factory, items, covers: int = 7) -> deck.Deck:
    folder = tmp_path_factory.mktemp("deck") / "v"
    info = deck.build(folder, "t", items, covers)
    assert (info.rates, info.covers) == (len(items), covers)
    return deck.Deck(folder)


@settings(max_examples=150, deadline=None)
@given(items=st.lists(rates, max_size=30, unique_by=lambda r: (r.pricelist_tag, r.carrier_tag, r.prefix)),
       probes=st.lists(destinations, min_size=1, max_size=6))
def test_a_deck_matches_every_destination_exactly_as_the_in_memory_table(tmp_path_factory, items, probes):
    mapped, table = built(tmp_path_factory, items), RateTable.build(items)
    assert (mapped.size, mapped.dated, mapped.has_raw) == (table.size, table.dated, table.has_raw)
    for destination in probes:
        assert list(mapped.matches(destination)) == list(table.matches(destination))
        assert mapped.longest(destination) == table.longest(destination)


def test_prefixes_come_back_as_written_with_their_description_and_dates(tmp_path_factory):
    items = [Rate("t", "p1", "c1", "+39", 1, 2, 60, 1, "Italy", START), Rate("t", "p1", "c2", "39", 0, 3, 1),
             Rate("t", "p1", "c1", "39-04", description="Trieste"), Rate("t", "p2", "c1", "sip:alice@")]
    mapped = built(tmp_path_factory, items)
    assert set(mapped.group(False, "39")) == set(items[:2])
    assert mapped.group(False, "3904") == (items[2],)
    assert mapped.group(True, "sip:alice@") == (items[3],)
    assert mapped.group(False, "44") is None


def test_an_empty_deck_matches_nothing(tmp_path_factory):
    mapped = built(tmp_path_factory, [])
    assert list(mapped.matches("39040")) == [] and mapped.longest("39") is None and mapped.size == 0


def test_a_layer_replaces_the_keys_it_holds_and_an_empty_group_removes_one(tmp_path_factory):
    below = built(tmp_path_factory, [Rate("t", "p", "c1", "39", rate=5), Rate("t", "p", "c1", "3904", rate=7),
                                     Rate("t", "p", "c1", "44")])
    table = RateTable().over(below, {(False, "39"): (Rate("t", "p", "c1", "39", rate=1),), (False, "3904"): (),
                                     (False, "390"): (Rate("t", "p", "c2", "390"),)})
    assert isinstance(table, Layered) and table.size == 3
    assert [(spec, [(r.prefix, r.rate) for r in g]) for spec, g in table.matches("3904012")] == [
        (3, [("390", 0)]), (2, [("39", 1)])]
    assert table.longest("44123")[0] == "44"
    assert table.group(False, "3904") == ()


def test_a_deck_folder_appears_whole_or_not_at_all(tmp_path):
    folder = tmp_path / "v1"
    deck.build(folder, "t", [Rate("t", "p", "c", "39")], 1)
    assert sorted(p.name for p in folder.iterdir()) == [
        "columns.bin", "descriptions.marisa", "meta.json", "numbers.marisa", "raw.marisa"]
    assert not (tmp_path / "v1.partial").exists()
