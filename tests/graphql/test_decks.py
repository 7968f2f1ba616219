"""Rate decks streamed over HTTP: records are parsed as the bytes arrive, wherever the chunks break."""

import pytest

from agent.graphql.decks import deck_rows


class _Stream:
    """The request body as aiohttp hands it over, in the chunks given."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks

    async def iter_chunked(self, size: int):
        for chunk in self.chunks:
            yield chunk


async def _parse(chunks: list[bytes]) -> list[tuple]:
    return [row async for row in deck_rows(_Stream(chunks), "default", "p1", "c1")]


DECK = 'prefix,rate,description\n39,5,"Italy\nmobile, ""TIM"""\n44,7,UK\n'.encode()


@pytest.mark.parametrize("cut", range(1, len(DECK)))
async def test_a_quoted_field_with_a_line_break_parses_wherever_the_chunks_break(cut):
    rows = await _parse([DECK[:cut], DECK[cut:]])
    assert [(row[3], row[5], row[8]) for row in rows] == [
        ("39", 5, 'Italy\nmobile, "TIM"'), ("44", 7, "UK")]


async def test_a_stray_quote_does_not_hold_the_rest_of_the_deck_back_forever():
    body = b"prefix,rate\n39,5\n" + b'4"4,7\n' + b"".join(b"%d,1\n" % n for n in range(1000, 3100))
    rows = await _parse([body[i:i + 100] for i in range(0, len(body), 100)])
    assert len(rows) >= 2000
