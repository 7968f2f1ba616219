"""The memory-mapped deck answers every lookup exactly as the in-memory table does, and layers compose."""

from __future__ import annotations

from datetime import datetime, timezone

from hypothesis import given, settings
from hypothesis import strategies as st

from agent.pricing import deck
from agent.pricing.rate import Rate
from agent.pricing.table import Layered, RateTable

START = datetime(2030, 1, 1, 8, 30, 0, 123456, tzinfo=timezone.utc)
# Number keys of ASCII digits up to 17 long are found by their codes (deck._number_index); a deck with a longer
# key or one of letters by its trie: both kinds come up.
LONG_OR_LETTERS = ["012901290129012901", "0129012901290129", "12a", "1"]

rates = st.builds(
    Rate,
    tenant=st.just("t"),
    pricelist_tag=st.sampled_from(["p1", "p2"]),
    carrier_tag=st.sampled_from(["c1", "c2", "c3"]),
    prefix=st.builds(lambda spelling, digits: spelling.format(digits),
                     st.sampled_from(["{}", "+{}", "sip:{}", "tel:+{}", "{}-", "sip:{}@example.com"]),
                     st.one_of(st.text("0129", max_size=5), st.sampled_from(LONG_OR_LETTERS))),
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
                         st.one_of(st.text("0129", min_size=0, max_size=8), st.sampled_from([
                             "01290129012901290129", "012901290129012901", "01290129012901291", "12a9", "1\u0663"])))


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
        "columns.bin", "descriptions.marisa", "meta.json", "raw.marisa"]  # number keys of digits: no trie
    assert not (tmp_path / "v1.partial").exists()
    deck.build(tmp_path / "v2", "t", [Rate("t", "p", "c", "39a")], 1)
    assert (tmp_path / "v2" / "numbers.marisa").exists()


@settings(max_examples=80, deadline=None)
@given(items=st.lists(rates, max_size=30, unique_by=lambda r: (r.pricelist_tag, r.carrier_tag, r.prefix)),
       seed=st.integers(0, 2**32))
def test_the_deck_files_depend_on_the_rates_not_on_their_order(tmp_path_factory, items, seed):
    """A deck built from an import's rows and one read back from PostgreSQL come in different orders
    (store/decks.ImportBuild): the files must be the same all the same."""
    import random

    shuffled = list(items)
    random.Random(seed).shuffle(shuffled)
    folders = [tmp_path_factory.mktemp("order") / "v" for _ in range(2)]
    for folder, order in zip(folders, (items, shuffled)):
        deck.build(folder, "t", order, 7)
    names = sorted(p.name for p in folders[0].iterdir())
    assert names == sorted(p.name for p in folders[1].iterdir())
    for name in names:
        assert (folders[0] / name).read_bytes() == (folders[1] / name).read_bytes(), name


def walked(mapped: deck.Deck, number: str) -> list[str]:
    """The keys `number` starts with, longest first, as the number index finds them (slot, then parents); a
    coded deck's walk in C (_route.c) finds the slot its definition in Python (Deck._walk) finds."""
    found, slot = [], mapped.longest_slot(number)
    if mapped._numbers is None:
        for probe in (number, number + "5a", number + "\u0663", number[:3] + "-" + number[3:]):
            assert mapped.native.walk(probe) == mapped._walk(probe), probe
    while slot >= 0:
        found.append(mapped.key_of(number, slot))
        slot = mapped.parent[slot]
    return found


@settings(max_examples=200, deadline=None)
@given(keys=st.lists(st.one_of(st.text("0189", max_size=17), st.text("0189", min_size=18, max_size=19)),
                     max_size=40, unique=True),
       numbers=st.lists(st.text("0189", max_size=21), min_size=1, max_size=8))
def test_the_number_index_finds_the_keys_a_number_starts_with(tmp_path_factory, keys, numbers):
    """By codes when every key is at most 17 digits, by the trie otherwise: the simple definition either way."""
    mapped = built(tmp_path_factory, [Rate("t", "p", "c", key) for key in keys])
    assert (mapped._numbers is None) == all(len(key) <= 17 for key in keys)
    for number in [*numbers, *keys]:
        assert walked(mapped, number) == sorted((k for k in keys if number.startswith(k)), key=len, reverse=True)
    for key in keys:
        assert mapped.key_of(key, mapped.slot(key)) == key
    assert mapped.slot("7") is None and mapped.slot("x") is None


def test_the_number_index_of_a_large_deck_searches_buckets_of_leading_digits(tmp_path_factory):
    import random

    rng = random.Random(11)
    keys = sorted({"".join(rng.choice("0123456789") for _ in range(rng.randint(1, 9))) for _ in range(20_000)})
    mapped = built(tmp_path_factory, [Rate("t", "p", "c", key) for key in keys])
    assert abs(len(mapped._first) - len(keys) / 8) < 3  # a bucket for about eight keys
    numbers = [*rng.sample(keys, 300), *("".join(rng.choice("0123456789") for _ in range(12)) for _ in range(300))]
    for number in numbers:
        assert walked(mapped, number) == sorted((k for k in keys if number.startswith(k)), key=len, reverse=True)


def test_a_deck_written_apart_is_sealed_with_what_it_covers(tmp_path):
    partial = tmp_path / "import-1.partial"
    deck.write_columns(partial, "t", deck.columns_of([Rate("t", "p", "c", "39", rate=5)]))
    assert not (tmp_path / "12").exists()
    info = deck.seal(partial, tmp_path / "12", 12)
    assert (info.covers, info.rates, info.keys) == (12, 1, 1) and not partial.exists()
    mapped = deck.Deck(tmp_path / "12")
    assert mapped.covers == 12 and mapped.group(False, "39")[0].rate == 5


_SPELLINGS = ["39", "+39", "tel:+39", "sip:39", "39-", "3-9", "(39)"]  # one key, written seven ways


@settings(max_examples=300, deadline=None)
@given(items=st.lists(st.builds(
    Rate, tenant=st.just("t"), pricelist_tag=st.sampled_from(["p1", "p2"]), carrier_tag=st.sampled_from(["c1", "c2"]),
    prefix=st.sampled_from(_SPELLINGS), connect_fee=st.integers(0, 1), rate=st.integers(0, 3),
    rate_increment=st.sampled_from([0, 1, 2, 60]), interval_start=st.integers(0, 2),
    initial_increment=st.sampled_from([None, None, 60, 120]), minimum_duration=st.sampled_from([0, 0, 30]),
    maximum_cost=st.sampled_from([None, None, 0, 5])), max_size=14))
def test_the_rank_columns_order_the_rates_of_a_key_as_the_kernels_order_key(items):
    columns = deck.columns_of(items)
    assert len(columns.numbers) <= 1
    order = deck._lexsort([columns.key, *deck.order_ranks(columns)])
    assert [items[i] for i in order] == sorted(items, key=Rate.order_key)


@settings(max_examples=200, deadline=None)
@given(tariffs=st.lists(st.tuples(st.integers(0, 3), st.integers(0, 2**62), st.integers(0, 10**6)), max_size=20),
       pathological=st.booleans())
def test_integer_price_keys_order_as_the_price_per_second_fractions(tariffs, pathological):
    if pathological:  # a common multiple of the increments too large for integers: fractions kept
        tariffs = [(fee, rate, 2**61 - 1 if i % 2 else 2**31 - 1) for i, (fee, rate, _) in enumerate(tariffs)]
    rows = [(fee, rate, increment, 0, 0, 0) for fee, rate, increment in tariffs]
    keys = deck.price_keys(rows)
    kernel = [Rate("t", "p", "c", "1", fee, rate, increment).order_key()[:2] for fee, rate, increment in tariffs]
    pairs = [(i, j) for i in range(len(rows)) for j in range(len(rows))]
    assert [keys[i] < keys[j] for i, j in pairs] == [kernel[i] < kernel[j] for i, j in pairs]
    assert [keys[i] == keys[j] for i, j in pairs] == [kernel[i] == kernel[j] for i, j in pairs]


@settings(max_examples=200, deadline=None)
@given(items=st.lists(st.builds(
    Rate, tenant=st.just("t"), pricelist_tag=st.just("p"), carrier_tag=st.just("c"), prefix=st.just("1"),
    connect_fee=st.integers(0, 2), rate=st.integers(0, 4), rate_increment=st.sampled_from([0, 1, 2, 6, 60]),
    initial_increment=st.none() | st.sampled_from([60, 120, 360]), minimum_duration=st.sampled_from([0, 30, 60]),
    maximum_cost=st.none() | st.integers(0, 3)), max_size=12))
def test_price_keys_of_schemes_order_as_the_kernels_price_and_scheme(items):
    """Routing's tie-breaks among rates at one price per second and connect fee: minimum duration, extra
    seconds of the first block, then the cap (none last); the deck's integer keys order as the kernel's."""
    keys = deck.price_keys([deck.tariff_of(r) for r in items])
    kernel = [r.order_key()[:5] for r in items]
    pairs = [(i, j) for i in range(len(items)) for j in range(len(items))]
    assert [keys[i] < keys[j] for i, j in pairs] == [kernel[i] < kernel[j] for i, j in pairs]
    assert [keys[i] == keys[j] for i, j in pairs] == [kernel[i] == kernel[j] for i, j in pairs]


def test_copy_text_fields_are_read_as_postgresql_writes_them():
    assert deck.copy_text(b"\\N") is None
    assert deck.copy_text(b"plain") == "plain"
    assert deck.copy_text(b"a\\tb\\nc\\\\d\\re") == "a\tb\nc\\d\re"
    assert deck.copy_text(b"\\101\\x42\\b\\f\\v\\q") == "AB\b\f\vq"
    assert deck.copy_text("Città ☎".encode()) == "Città ☎"


# Rates as PostgreSQL stores them, read by `read_columns` (COPY text, parsed in blocks) and by `read_rates`.

_ODD_TEXTS = ["p", "tab\there", "new\nline", "back\\slash", "\\N", "comma,semi;", "Città ☎", " spaced ", "x" * 300]
_PREFIXES = ["39", "390", "3904", "39040", "0039", "1", "+39", "+390", "39-04", "tel:+3904", "sip:39040@", "sip:alice@",
             "٣٩", "1" * 17, "2" * 18, "3" * 40, "", "39\\4", "tab\t1"]


def random_rates(rng, count: int) -> list[tuple]:
    tags = rng.sample(_ODD_TEXTS[:-1], 3)
    carriers = rng.sample(_ODD_TEXTS[:-1], 3)
    seen, rows = set(), []
    for _ in range(count):
        pricelist, carrier = rng.choice(tags), rng.choice(carriers)
        prefix = rng.choice(_PREFIXES) if rng.random() < 0.5 else str(rng.randrange(10**rng.randrange(1, 12)))
        origin = rng.choice(["", "", "", "39", "0", "06123", "1" * 16])  # source prefixes (origin rating)
        if (pricelist, carrier, prefix, origin) in seen:
            continue
        seen.add((pricelist, carrier, prefix, origin))
        start = rng.choice([None, None, START, START.replace(microsecond=0)])
        increment = rng.choice([0, 1, 6, 60])
        rows.append(("t", pricelist, carrier, prefix, rng.randrange(4), rng.choice([0, 1, 7, 2**40]),
                     increment, rng.randrange(3), rng.choice([None, *_ODD_TEXTS]), start,
                     rng.choice([None, None, START.replace(year=2031)]),
                     rng.choice([None, None, max(increment, 1) * rng.randrange(1, 6)]), rng.choice([0, 0, 30, 61]),
                     rng.choice([None, None, 0, 2**40]), origin))
    return rows


async def store(connection, rows: list[tuple]) -> None:
    await connection.execute("TRUNCATE pricelist_rates, pricelists, carriers CASCADE")
    await connection.executemany("INSERT INTO pricelists (tenant, pricelist_tag) VALUES ('t', $1)",
                                 [(tag,) for tag in {row[1] for row in rows}])
    await connection.executemany("INSERT INTO carriers (tenant, carrier_tag) VALUES ('t', $1)",
                                 [(tag,) for tag in {row[2] for row in rows}])
    await connection.copy_records_to_table("pricelist_rates", records=rows, columns=[
        "tenant", "pricelist_tag", "carrier_tag", "prefix", "connect_fee", "rate", "rate_increment",
        "interval_start", "description", "datetime_start", "datetime_end", *_SCHEME,
        *(("source_prefix",) if rows and len(rows[0]) > 14 else ())])


_SCHEME = ("initial_increment", "minimum_duration", "maximum_cost")


async def compare_reads(connection, folder) -> int:
    from agent.store import decks

    async with connection.transaction(isolation="repeatable_read", readonly=True):
        columns = await decks.read_columns(connection, "t")
        stored = await decks.read_rates(connection, "t")
    deck.build_columns(folder, "t", columns, 1)
    mapped, table = deck.Deck(folder), RateTable.build(stored)
    assert (mapped.size, mapped.dated, mapped.has_raw) == (table.size, table.dated, table.has_raw)
    for is_raw, index in ((False, table.numbers), (True, table.raw)):
        for key, group in index.items():
            assert mapped.group(is_raw, key) == group
    for rate in stored:
        for destination in (rate.prefix, rate.prefix + "123", f"sip:{rate.prefix}99@example.com"):
            assert list(mapped.matches(destination)) == list(table.matches(destination))
    return len(stored)


async def test_a_deck_read_from_postgresql_in_columns_is_the_deck_of_its_rates(stack, tmp_path, monkeypatch):
    import random

    rng = random.Random(7)
    for round_ in range(12):
        await store(stack.database, random_rates(rng, rng.choice([0, 1, 5, 60, 400])))
        if round_ % 3 == 1:
            monkeypatch.setattr(deck.TextRows, "BLOCK", rng.choice([1, 100, 1000]))  # rows split across blocks
        elif round_ % 3 == 2:
            monkeypatch.setattr(deck, "_MIX", deck._MIX * 0)  # every value one hash: checked byte for byte
        await compare_reads(stack.database, tmp_path / str(round_))
        monkeypatch.undo()


async def test_a_large_deck_of_plain_prefixes_reads_the_same_both_ways(stack, tmp_path):
    import random

    rng = random.Random(3)
    rows = {(rng.choice(["p1", "p2"]), rng.choice(["c1", "c2", "c3"]), str(rng.randrange(10**rng.randrange(1, 16))))
            for _ in range(30_000)}
    await store(stack.database, [("t", p, c, prefix, 0, rng.randrange(1, 500), rng.choice([1, 60]), 0,
                                  f"d{prefix[:2]}", None, None, None, 0, None) for p, c, prefix in sorted(rows)])
    assert await compare_reads(stack.database, tmp_path / "large") == len(rows)
