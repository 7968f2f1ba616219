"""A realistic, reproducible catalog for load tests: carriers, pricelists, a large rate deck and accounts.

    python loadtest/generate.py OUT_DIR [--prefixes 100000] [--accounts 1000] [--carriers 10] ...

writes into OUT_DIR:

* `catalog.json`  carriers, pricelists and accounts in the format of `python -m agent import catalog`
                  (no rates: those come from the deck);
* `rates.csv`     the rate deck for `python -m agent import rates` (header line, one row per
                  pricelist/carrier/prefix), streamed to the file so a million prefixes need no big list;
* `destinations.txt`  SIP request URIs (`sip:NUMBER@127.0.0.1:5060`), one a line, each extending a
                  prefix of the deck, so every one of them is rated;
* `accounts.txt`  the account tags, one a line.

The deck looks like a wholesale A-Z deck: every ITU country code, then area and mobile ranges under it of
varying length (national ranges of 1 to 7 more digits, NANP-style 3+3 digit ranges under `1`, and
3+3+1 digit thousands-blocks once a deck has more ranges there than 3+3 digits comfortably give). Every
prefix is sold by a few carriers of the `standard` pricelist at different prices; the other pricelists
(`promo-N`) undercut a small share of the prefixes through one carrier. Accounts are mostly PREPAID with
balances far larger than any load test can reserve, some POSTPAID (with or without a credit limit), and
all of them can reach every prefix. Everything derives from one seeded RNG: the same arguments give the
same files, byte for byte.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

# ITU-T E.164 country calling codes (zones 1-9), with a weight that says how many ranges a country gets.
# Integrated numbering plans (NANP `1`, `7`) carry many ranges; small territories few.
_COUNTRIES: tuple[tuple[str, str, int], ...] = (
    ("1", "United States/Canada", 60), ("7", "Russia/Kazakhstan", 12),
    ("20", "Egypt", 4), ("27", "South Africa", 4), ("30", "Greece", 3), ("31", "Netherlands", 4),
    ("32", "Belgium", 3), ("33", "France", 8), ("34", "Spain", 6), ("36", "Hungary", 2), ("39", "Italy", 8),
    ("40", "Romania", 3), ("41", "Switzerland", 3), ("43", "Austria", 3), ("44", "United Kingdom", 10),
    ("45", "Denmark", 2), ("46", "Sweden", 3), ("47", "Norway", 2), ("48", "Poland", 4), ("49", "Germany", 10),
    ("51", "Peru", 2), ("52", "Mexico", 6), ("53", "Cuba", 1), ("54", "Argentina", 4), ("55", "Brazil", 8),
    ("56", "Chile", 2), ("57", "Colombia", 3), ("58", "Venezuela", 2), ("60", "Malaysia", 3),
    ("61", "Australia", 4), ("62", "Indonesia", 6), ("63", "Philippines", 4), ("64", "New Zealand", 2),
    ("65", "Singapore", 2), ("66", "Thailand", 3), ("81", "Japan", 6), ("82", "South Korea", 4),
    ("84", "Vietnam", 3), ("86", "China", 14), ("90", "Turkey", 4), ("91", "India", 14), ("92", "Pakistan", 4),
    ("93", "Afghanistan", 1), ("94", "Sri Lanka", 1), ("95", "Myanmar", 1), ("98", "Iran", 3),
    *((code, f"Zone 2 +{code}", 1) for code in (
        "211", "212", "213", "216", "218", "220", "221", "222", "223", "224", "225", "226", "227", "228", "229",
        "230", "231", "232", "233", "234", "235", "236", "237", "238", "239", "240", "241", "242", "243", "244",
        "245", "246", "248", "249", "250", "251", "252", "253", "254", "255", "256", "257", "258", "260", "261",
        "262", "263", "264", "265", "266", "267", "268", "269", "290", "291", "297", "298", "299")),
    *((code, f"Zone 3 +{code}", 1) for code in (
        "350", "351", "352", "353", "354", "355", "356", "357", "358", "359", "370", "371", "372", "373", "374",
        "375", "376", "377", "378", "380", "381", "382", "383", "385", "386", "387", "389")),
    *((code, f"Zone 4 +{code}", 1) for code in ("420", "421", "423")),
    *((code, f"Zone 5 +{code}", 1) for code in (
        "500", "501", "502", "503", "504", "505", "506", "507", "508", "509", "590", "591", "592", "593", "594",
        "595", "596", "597", "598", "599")),
    *((code, f"Zone 6 +{code}", 1) for code in (
        "670", "672", "673", "674", "675", "676", "677", "678", "679", "680", "681", "682", "683", "685", "686",
        "687", "688", "689", "690", "691", "692")),
    *((code, f"Zone 8 +{code}", 1) for code in ("850", "852", "853", "855", "856", "880", "886")),
    *((code, f"Zone 9 +{code}", 1) for code in (
        "960", "961", "962", "963", "964", "965", "966", "967", "968", "970", "971", "972", "973", "974", "975",
        "976", "977", "992", "993", "994", "995", "996", "998")),
)

# Kinds of national ranges: (label, weight, extra digits after the country code, price factor).
_KINDS: tuple[tuple[str, int, tuple[int, ...], float], ...] = (
    ("Fixed", 45, (1, 2, 2, 3, 3, 4, 5), 1.0),
    ("Mobile", 45, (2, 3, 3, 4, 4, 5, 6, 7), 3.0),
    ("Premium", 4, (3, 4, 5), 12.0),
    ("Satellite", 1, (2, 3), 40.0),
    ("Special services", 5, (3, 4, 6), 2.0),
)
_NANP_AREA_SHARE = 0.04  # under `1`: this share of ranges are 3-digit area codes, the rest area+exchange
# Area+exchange ranges under `1` (8 * 10 * 10 areas, 8 * 100 exchanges). A NANP share beyond half of them
# (decks over ~2.2M prefixes) also draws thousands-blocks (area+exchange+1 digit, as number pooling
# assigns them), half of its ranges; below that nothing changes, so smaller decks stay byte for byte.
_NANP_EXCHANGES = 800 * 800
_NANP_BLOCK_SHARE = 0.5

DECK_COLUMNS = (
    "pricelist_tag", "carrier_tag", "prefix", "connect_fee", "rate", "rate_increment", "interval_start",
    "description",
)
STANDARD_PRICELIST = "standard"
BIG_BALANCE = 10**12  # far more than any bounded load test can reserve (exact in Redis' Lua doubles)


@dataclass(frozen=True)
class Generated:
    directory: Path
    catalog: Path
    deck: Path
    destinations: Path
    accounts: Path
    prefixes: int
    rate_rows: int
    account_count: int
    seconds: float


def carrier_tags(count: int) -> list[str]:
    return [f"carrier{n:02d}" for n in range(1, count + 1)]


def pricelist_tags(count: int) -> list[str]:
    return [STANDARD_PRICELIST, *(f"promo-{n}" for n in range(1, count))]


def account_tags(count: int) -> list[str]:
    return [str(100_000 + n) for n in range(count)]


def carriers(count: int) -> list[dict]:
    """Active carriers; their addresses are only echoed in answers (loopback, nothing is sent there)."""
    protocols = ("UDP", "UDP", "UDP", "TCP", "TLS")
    return [
        {"carrier_tag": tag, "host": "127.0.0.1", "port": 5061 + n, "protocol": protocols[n % len(protocols)],
         "active": True}
        for n, tag in enumerate(carrier_tags(count))
    ]


def pricelists(count: int) -> list[dict]:
    return [
        {"pricelist_tag": tag, "name": "Standard A-Z" if tag == STANDARD_PRICELIST else f"Promotion {tag[6:]}",
         "currency": "EUR"}
        for tag in pricelist_tags(count)
    ]


def accounts(count: int, pricelist_count: int, seed: int = 1) -> list[dict]:
    """90% PREPAID with huge balances; 10% POSTPAID, half of them with a (huge) credit limit.

    Every account lists the standard pricelist (or lists none, which means all of the tenant's), so every
    destination of the deck is reachable for every account.
    """
    rng = random.Random(seed * 7919 + 1)
    promos = pricelist_tags(pricelist_count)[1:]
    result = []
    for n, tag in enumerate(account_tags(count)):
        draw = rng.random()
        pricelist_set = [STANDARD_PRICELIST]
        if promos and draw < 0.3:
            pricelist_set.append(rng.choice(promos))
        elif draw > 0.95:
            pricelist_set = []  # all pricelists of the tenant
        item = {"account_tag": tag, "name": f"Customer {tag}", "pricelist_tags": pricelist_set,
                "tags": ["loadtest"]}
        if n % 10 == 9:
            item["type"] = "POSTPAID"
            item["balance"] = 0
            if n % 20 == 19:
                item["credit_limit"] = BIG_BALANCE
        else:
            item["type"] = "PREPAID"
            item["balance"] = BIG_BALANCE
        result.append(item)
    return result


def catalog_document(carrier_count: int, pricelist_count: int, account_count: int, seed: int = 1,
                     balances: bool = True) -> dict:
    """The catalog JSON (without rates). `balances=False` leaves balances out (no Redis needed to import)."""
    account_list = accounts(account_count, pricelist_count, seed)
    if not balances:
        for item in account_list:
            item.pop("balance", None)
    return {"carriers": carriers(carrier_count), "pricelists": pricelists(pricelist_count),
            "accounts": account_list}


def _country_shares(total: int) -> list[tuple[str, str, int]]:
    """How many prefixes each country gets (the country code itself included), summing to `total`."""
    weights = sum(weight for _, _, weight in _COUNTRIES)
    shares = [(code, name, max(1, total * weight // weights)) for code, name, weight in _COUNTRIES]
    missing = total - sum(n for _, _, n in shares)
    if missing < 0:
        raise ValueError(f"at least {len(_COUNTRIES)} prefixes are needed, one per country code")
    code, name, n = shares[0]
    shares[0] = (code, name, n + missing)  # the remainder goes to the NANP, as in real decks
    return shares


def _country_prefixes(rng: random.Random, code: str, name: str, count: int) -> Iterator[tuple[str, str, float]]:
    """(prefix, description, price factor) for `count` distinct prefixes of one country code."""
    yield code, f"{name} - Fixed", 1.0
    seen = {code}
    kinds = [kind for kind in _KINDS]
    kind_weights = [kind[1] for kind in _KINDS]
    # a country's number space under its code: never more distinct ranges than the digits allow
    max_extra = max(max(kind[2]) for kind in _KINDS)
    produced, attempts = 1, 0
    blocks = code == "1" and count > _NANP_EXCHANGES // 2
    while produced < count:
        attempts += 1
        if attempts > count * 50:
            raise ValueError(f"cannot make {count} distinct prefixes under +{code}")
        if code == "1":
            digits = 3 if rng.random() < _NANP_AREA_SHARE else 6
            area = f"{rng.randint(2, 9)}{rng.randint(0, 9)}{rng.randint(0, 9)}"
            extra = area if digits == 3 else f"{area}{rng.randint(2, 9)}{rng.randint(0, 99):02d}"
            if blocks and digits == 6 and rng.random() < _NANP_BLOCK_SHARE:
                extra += str(rng.randint(0, 9))
            label, factor = ("Mobile", 1.3) if rng.random() < 0.3 else ("Fixed", 1.0)
            prefix, description = code + extra, f"{name} - {label}"
        else:
            label, _, lengths, factor = rng.choices(kinds, kind_weights)[0]
            length = min(rng.choice(lengths), max_extra)
            first = rng.randint(1, 9)
            rest = rng.getrandbits(32) % (10 ** (length - 1)) if length > 1 else 0
            extra = f"{first}{rest:0{length - 1}d}" if length > 1 else str(first)
            prefix, description = code + extra, f"{name} - {label}"
        if prefix in seen:
            continue
        seen.add(prefix)
        produced += 1
        yield prefix, description, factor


def prefixes(count: int, seed: int = 1) -> Iterator[tuple[str, str, float]]:
    """`count` distinct prefixes, (prefix, description, price factor), country by country."""
    rng = random.Random(seed)
    for code, name, share in _country_shares(count):
        yield from _country_prefixes(rng, code, name, share)


def rate_rows(prefix_count: int, carrier_count: int, pricelist_count: int, seed: int = 1,
              carriers_per_prefix: tuple[int, int] = (1, 3), promo_share: float = 0.05) -> Iterator[tuple]:
    """Deck rows in DECK_COLUMNS order.

    Each prefix gets a base price (per minute, in 1/10000 of the currency unit) and is offered by a few
    distinct carriers of the standard pricelist at that price times a carrier-specific factor; a
    `promo_share` of prefixes is also in one promotional pricelist, cheaper, through one carrier.
    """
    rng = random.Random(seed * 31 + 7)
    tags = carrier_tags(carrier_count)
    promos = pricelist_tags(pricelist_count)[1:]
    low, high = carriers_per_prefix
    high = min(high, carrier_count)
    low = min(low, high)
    for prefix, description, factor in prefixes(prefix_count, seed):
        base = rng.uniform(5, 120) * factor
        per_second = rng.random() < 0.15
        for carrier in rng.sample(tags, rng.randint(low, high)):
            price = max(1, int(base * rng.uniform(0.8, 1.4)))
            if per_second:  # per-second billing: rate per 1 s increment, first 30 s charged at once
                yield (STANDARD_PRICELIST, carrier, prefix, 0, max(1, price // 60), 1, 30, description)
            else:           # per-minute billing, sometimes a connect fee
                fee = 0 if rng.random() < 0.8 else rng.randint(10, 200)
                yield (STANDARD_PRICELIST, carrier, prefix, fee, price, 60, 0, description)
        if promos and rng.random() < promo_share:
            price = max(1, int(base * rng.uniform(0.5, 0.8)))
            yield (rng.choice(promos), rng.choice(tags), prefix, 0, price, 60, 0, f"{description} (promotion)")


def write_deck(path: Path, prefix_count: int, carrier_count: int, pricelist_count: int, seed: int = 1,
               carriers_per_prefix: tuple[int, int] = (1, 3), sample: list[str] | None = None,
               sample_every: int = 10) -> int:
    """Streams the deck to `path`; returns the number of rows. Every `sample_every`th prefix goes to `sample`."""
    rows = 0
    last = None
    seen = 0
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(DECK_COLUMNS)
        for row in rate_rows(prefix_count, carrier_count, pricelist_count, seed, carriers_per_prefix):
            writer.writerow(row)
            rows += 1
            if sample is not None and row[2] != last:
                last = row[2]
                if seen % sample_every == 0:
                    sample.append(row[2])
                seen += 1
    return rows


def destinations(prefix_sample: list[str], count: int, seed: int = 1,
                 host: str = "127.0.0.1:5060") -> list[str]:
    """SIP URIs of numbers under prefixes of the deck (E.164 lengths, 10 to 13 digits)."""
    rng = random.Random(seed * 131 + 3)
    result = []
    for _ in range(count):
        prefix = rng.choice(prefix_sample)
        length = max(len(prefix) + 2, rng.randint(10, 13))
        tail = "".join(rng.choices("0123456789", k=length - len(prefix)))
        result.append(f"sip:{prefix}{tail}@{host}")
    return result


def generate(directory: str | Path, prefix_count: int = 100_000, account_count: int = 1_000,
             carrier_count: int = 10, pricelist_count: int = 3, destination_count: int = 10_000,
             seed: int = 1, carriers_per_prefix: tuple[int, int] = (1, 3), balances: bool = True) -> Generated:
    """Writes catalog.json, rates.csv, destinations.txt and accounts.txt into `directory`."""
    started = time.perf_counter()
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    catalog_path, deck_path = folder / "catalog.json", folder / "rates.csv"
    destinations_path, accounts_path = folder / "destinations.txt", folder / "accounts.txt"
    document = catalog_document(carrier_count, pricelist_count, account_count, seed, balances)
    catalog_path.write_text(json.dumps(document, indent=1) + "\n", encoding="utf-8")
    accounts_path.write_text("".join(a["account_tag"] + "\n" for a in document["accounts"]), encoding="utf-8")
    sample: list[str] = []
    every = max(1, prefix_count // 50_000)  # a sample of at most ~50,000 prefixes spread over the deck
    rows = write_deck(deck_path, prefix_count, carrier_count, pricelist_count, seed, carriers_per_prefix,
                      sample, every)
    destinations_path.write_text(
        "".join(uri + "\n" for uri in destinations(sample, destination_count, seed)), encoding="utf-8"
    )
    return Generated(folder, catalog_path, deck_path, destinations_path, accounts_path, prefix_count, rows,
                     account_count, time.perf_counter() - started)


def _range(text: str) -> tuple[int, int]:
    low, _, high = text.partition("-")
    return int(low), int(high or low)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("directory", help="output folder (created if missing)")
    parser.add_argument("--prefixes", type=int, default=100_000, help="distinct prefixes in the deck")
    parser.add_argument("--accounts", type=int, default=1_000)
    parser.add_argument("--carriers", type=int, default=10)
    parser.add_argument("--pricelists", type=int, default=3, help="the standard one plus promotional ones")
    parser.add_argument("--destinations", type=int, default=10_000)
    parser.add_argument("--carriers-per-prefix", type=_range, default=(1, 3), metavar="MIN-MAX")
    parser.add_argument("--no-balances", action="store_true",
                        help="leave balances out of the catalog (importing it then needs no Redis)")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    result = generate(args.directory, args.prefixes, args.accounts, args.carriers, args.pricelists,
                      args.destinations, args.seed, args.carriers_per_prefix, not args.no_balances)
    print(f"{result.prefixes:,} prefixes, {result.rate_rows:,} rate rows, {result.account_count:,} accounts"
          f" in {result.seconds:.1f}s -> {result.directory}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
