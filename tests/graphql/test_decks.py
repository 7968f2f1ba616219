"""Rate decks streamed over HTTP: the body goes to COPY as it arrives, wherever the chunks break."""

import csv
import io

import pytest

from agent.graphql.decks import StreamDeck
from agent.store.importer import ImportError_


class _Stream:
    """The request body as aiohttp hands it over, in the chunks given."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks

    async def iter_chunked(self, size: int):
        for chunk in self.chunks:
            yield chunk


async def _copied(chunks: list[bytes], pricelist: str = "p1") -> tuple[list[str], list[list[str]], StreamDeck]:
    """(the columns, the CSV records) the deck hands to COPY."""
    deck = StreamDeck(_Stream(chunks), "default", pricelist, "c1")
    await deck.open()
    body = b"".join([piece async for piece in deck.source()]).decode()
    return deck.copy_columns(), list(csv.reader(io.StringIO(body))), deck


DECK = 'prefix,rate,description\n39,5,"Italy\nmobile, ""TIM"""\n44,7,UK\n'.encode()


@pytest.mark.parametrize("cut", range(1, len(DECK)))
async def test_a_quoted_field_with_a_line_break_streams_wherever_the_chunks_break(cut):
    columns, records, _ = await _copied([DECK[:cut], DECK[cut:]])
    assert columns == ["prefix", "rate", "description"]
    assert records == [["39", "5", 'Italy\nmobile, "TIM"'], ["44", "7", "UK"]]


async def test_plain_lines_go_to_copy_as_they_are_and_a_bad_one_is_named_by_its_line():
    body = b"\xef\xbb\xbfprefix,rate\n" + b"".join(b"%d,%d\n" % (n, n % 7) for n in range(1000, 4000)) + b"39,5"
    columns, records, _ = await _copied([body[i:i + 1000] for i in range(0, len(body), 1000)])
    assert columns == ["prefix", "rate"] and len(records) == 3001 and records[-1] == ["39", "5"]
    bad = b"prefix,rate\n39,5\n" + b"44,x\n" + b"45,1\n"
    with pytest.raises(ImportError_, match="line 3: rate must be an integer"):
        await _copied([bad])


async def test_the_url_names_the_pricelist_and_tenant_of_every_row():
    body = b"tenant,pricelist_tag,prefix,rate\nother,p9,39,5\ndefault,p1,44,7\n"
    columns, records, deck = await _copied([body])
    assert columns[:2] == ["tenant", "pricelist_tag"] and deck.direct()  # copied into the rates' own columns
    # a line naming them as the URL does goes as it is; another is written out with the URL's
    assert records == [["default", "p1", "39", "5"], ["default", "p1", "44", "7"]]


async def test_an_empty_body_or_one_that_is_not_utf8_is_refused():
    with pytest.raises(ImportError_, match="the deck is empty"):
        await _copied([b"", b"\n"])
    with pytest.raises(ImportError_, match="not UTF-8"):
        await _copied([b"prefix,description\n39,\xff\n"])


async def test_a_stray_quote_does_not_hold_the_rest_of_the_deck_back_forever():
    body = b"prefix,rate\n39,5\n" + b'4"4,7\n' + b"".join(b"%d,1\n" % n for n in range(1000, 3100))
    _, records, _ = await _copied([body[i:i + 100] for i in range(0, len(body), 100)])
    assert len(records) == 2102 and records[1] == ['4"4', "7"]


async def test_an_upload_re_tagged_by_its_url_is_built_from_its_rows_as_they_arrive(stack, tmp_path, monkeypatch):
    """The upload's lines naming another pricelist are written out with the URL's (parsed rows), the others
    go as they are; the deck is built from both as they stream, the duplicates the re-tagging makes dropped
    before the unique index (the last one kept): the deck a build from PostgreSQL gives."""
    from agent.store import decks, importer
    from tests.store.test_importer import _spy_builds, assert_built_as_postgresql_builds
    from tests.test_transaction import catalog, prepaid

    monkeypatch.setattr(importer, "OVERLAY_LIMIT", 20)
    monkeypatch.setattr(importer, "SWAP_MIN", 1)
    calls = _spy_builds(monkeypatch)
    await stack.load(catalog(prepaid("a")))
    query = "SELECT carrier_tag, prefix, rate FROM pricelist_rates WHERE pricelist_tag = 'p1'"
    last = {(r["carrier_tag"], r["prefix"]): r["rate"] for r in await stack.database.fetch(query)}  # kept
    lines = [f"p{1 + n % 3 // 2},c{1 + n % 2},{39 + n % 5}{n % 400},{n % 90},60,Zone {n % 7}\n" for n in range(3000)]
    body = ("pricelist_tag,carrier_tag,prefix,rate,rate_increment,description\n" + "".join(lines)).encode()
    deck = StreamDeck(_Stream([body[i:i + 700] for i in range(0, len(body), 700)]), "default", "p1", None, len(body))
    await deck.open()
    result = await importer.import_rates(stack.database, deck, build=decks.ImportBuild(tmp_path / "decks"))
    assert result.swapped and calls == ["stream"]
    await assert_built_as_postgresql_builds(stack, result, tmp_path)
    for line in lines:
        _, carrier, prefix, rate, *_ = line.split(",")
        last[(carrier, prefix)] = int(rate)
    assert {(r["carrier_tag"], r["prefix"]): r["rate"] for r in await stack.database.fetch(query)} == last
