"""Command line: `python -m agent serve | migrate | import catalog FILE | import rates FILE | balance ... |
rerate ...`."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from typing import Sequence

import orjson

from .config import Settings


async def _with_database(settings: Settings, work):
    from .store.database import create_pool, migrate

    pool = await create_pool(settings.database_url, max_size=2)
    try:
        async with pool.acquire() as connection:
            await migrate(connection)
            return await work(connection)
    finally:
        await pool.close()


async def _apply_balances(settings: Settings, balances: list[tuple[str, str, int]]) -> None:
    import cache
    from .transaction import now_ms

    if not balances:
        return
    from .app import until_ready

    client = cache.connect(settings.redis_url, max(settings.redis_timeout, 5.0))
    try:
        await until_ready("Redis", lambda: cache.load_library(client))  # also while it loads its data
        for tenant, tag, amount in balances:
            await cache.move_balance(client, tenant, tag, "set", amount, now_ms(), "import")
    finally:
        await client.aclose()


async def _publish(settings: Settings, rebuilt) -> None:
    """Builds the decks an import changed (here: this process serves nothing) and publishes the change."""
    import cache
    from .store import decks
    from .store.database import create_pool

    from .app import until_ready

    pool = await create_pool(settings.database_url, max_size=2)
    client = cache.connect(settings.redis_url, max(settings.redis_timeout, 5.0))
    try:
        await until_ready("Redis", lambda: cache.load_library(client))

        async def build_here(_settings):
            for info in await decks.ensure(pool, settings.decks):
                print(f"deck of tenant {info.tenant!r}: {info.rates:,} rates, {info.bytes / 1e6:.1f} MB,"
                      f" in {info.folder}", file=sys.stderr)

        await decks.publish(settings, pool, client, rebuilt, build=build_here)
    finally:
        await client.aclose()
        await pool.close()


def _build_decks(settings: Settings) -> None:
    from . import scheduling
    from .store import decks
    from .store.database import create_pool

    if decks.BUILD_NICE_VARIABLE in os.environ:  # started by an agent process (decks.build_elsewhere)
        scheduling.apart(int(os.environ[decks.BUILD_NICE_VARIABLE]))

    async def run():
        pool = await create_pool(settings.database_url, max_size=2)
        try:
            for info in await decks.ensure(pool, settings.decks):
                print(f"tenant={info.tenant} rates={info.rates} bytes={info.bytes} covers={info.covers}")
        finally:
            await pool.close()

    asyncio.run(run())


def _import_catalog(settings: Settings, path: str, set_balances: bool) -> None:
    from .store.importer import import_catalog

    with open(path, "rb") as handle:
        document = orjson.loads(handle.read())
    summary = asyncio.run(_with_database(settings, lambda c: import_catalog(c, document, set_balances)))
    asyncio.run(_apply_balances(settings, summary.pop("balances")))
    asyncio.run(_publish(settings, summary.pop("rebuild")))
    print(" ".join(f"{k}={v}" for k, v in summary.items()))


def _import_rates(settings: Settings, args: argparse.Namespace) -> None:
    import os

    from tqdm import tqdm

    from .store.decks import ImportBuild
    from .store.importer import csv_rates, import_rates, open_text

    size = os.path.getsize(args.file) if args.file != "-" else None
    bar = tqdm(total=size, unit="B", unit_scale=True, unit_divisor=1024, desc="reading deck",
               disable=args.quiet, file=sys.stderr, mininterval=0.25)

    def progress(lines: int) -> None:
        # the file's lines go to the import as they are (no Python step per line): the bar follows the
        # bytes read so far from the file, a read-ahead buffer early (not known for a pipe)
        try:
            bar.update(handle.buffer.tell() - bar.n)
        except (AttributeError, OSError, ValueError):
            pass
        bar.set_postfix_str(f"{lines:,} rows", refresh=False)

    def say(text: str) -> None:
        if not args.quiet:
            bar.write(text, file=sys.stderr)

    # A deck changing many rates is built here, from the import's own rows while PostgreSQL writes them,
    # and activated once committed (store/decks.ImportBuild).
    build = ImportBuild(settings.decks, say)
    try:
        with open_text(args.file) as handle:
            rows = csv_rates(handle, args.tenant, args.pricelist, args.carrier, progress, size)

            async def work(connection):
                return await import_rates(connection, rows, args.replace, build=build)

            result = asyncio.run(_with_database(settings, work))
        if size:
            bar.update(size - bar.n)  # the last lines, read since the last look at the file's position
    finally:
        bar.close()
    for info in result.built:
        print(f"deck of tenant {info.tenant!r}: {info.rates:,} rates, {info.bytes / 1e6:.1f} MB, activated"
              f" (covers change {info.covers}) in {info.folder}", file=sys.stderr)
    asyncio.run(_publish(settings, result.tenants))
    print(f"rates={result.rows} removed={result.replaced}")


def _balance(settings: Settings, args: argparse.Namespace) -> None:
    import cache
    from .transaction import now_ms

    async def run() -> int:
        client = cache.connect(settings.redis_url, max(settings.redis_timeout, 5.0))
        try:
            await cache.load_library(client)
            return await cache.move_balance(
                client, args.tenant, args.account_tag, args.mode, args.amount, now_ms(), "cli"
            )
        finally:
            await client.aclose()

    print(asyncio.run(run()))


def _outbox(settings: Settings, args: argparse.Namespace) -> None:
    import cache
    from .store.writer import dead_letters, replay

    async def run() -> None:
        client = cache.connect(settings.redis_url, max(settings.redis_timeout, 5.0))
        try:
            if args.action == "dead-letters":
                for entry_id, fields in await dead_letters(client):
                    print(orjson.dumps({"id": entry_id, **fields}).decode())
            else:
                print(f"replayed={await replay(client, args.ids or None)}")
        finally:
            await client.aclose()

    asyncio.run(run())


def _rerate(settings: Settings, args: argparse.Namespace) -> int:
    """Prices finished calls again on the catalog PostgreSQL holds (the decks this host lacks are built first)."""
    import cache
    from .app import until_ready
    from .graphql.scalars import parse_moment
    from .store import decks
    from .store.catalog import load_catalog
    from .store.database import create_pool, migrate
    from .store.rerate import SAMPLE_LIMIT, DeckVersionMissing, deck_catalog, rerate

    if not 0 <= args.limit <= SAMPLE_LIMIT:
        print(f"error: --limit must be between 0 and {SAMPLE_LIMIT}", file=sys.stderr)
        return 2
    try:
        start, end = parse_moment(args.start), parse_moment(args.end)
    except ValueError as exc:
        print(f"error: --from/--to: {exc}", file=sys.stderr)
        return 2
    if end <= start:
        print("error: --to must be after --from", file=sys.stderr)
        return 2

    async def run():
        pool = await create_pool(settings.database_url, max_size=3)
        client = cache.connect(settings.redis_url, max(settings.redis_timeout, 5.0))
        try:
            await until_ready("Redis", lambda: cache.load_library(client))
            async with pool.acquire() as connection:
                await migrate(connection)
            await decks.ensure(pool, settings.decks)
            catalog = await load_catalog(pool, settings.decks)
            if args.deck_version is not None:  # the tenant's rates as that deck, kept on this host, holds them
                catalog = await deck_catalog(pool, settings.decks, catalog, args.tenant, args.deck_version)
            return await rerate(pool, client, catalog, args.tenant, args.account_tag, start, end,
                                dry_run=not args.apply, sample=args.limit, replicas=settings.redis_replicas)
        finally:
            await client.aclose()
            await pool.close()

    try:
        found = asyncio.run(run())
    except DeckVersionMissing as exc:
        print(f"error: --deck-version: {exc}", file=sys.stderr)
        return 2
    summary = {key: getattr(found, key) for key in (
        "id", "dry_run", "tenant", "account_tag", "catalog_version", "examined", "changed", "skipped", "delta",
        "settled")}
    summary.update({"from": found.start.isoformat(), "to": found.end.isoformat(), "calls": found.calls})
    print(orjson.dumps(summary, option=orjson.OPT_INDENT_2).decode())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rating-agent", description=__doc__)
    Settings.add_arguments(parser)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("serve", help="serve the HTTP API")
    commands.add_parser("migrate", help="bring the PostgreSQL schema up to date and exit")
    commands.add_parser("build-decks", help="build the rate decks this host lacks (--deck-dir) and exit")
    load = commands.add_parser("import", help="load catalog data from files").add_subparsers(dest="kind", required=True)
    catalog = load.add_parser("catalog", help="a JSON document of carriers, pricelists, rates and accounts")
    catalog.add_argument("file")
    catalog.add_argument("--set-balances", action="store_true",
                         help="set the live balance of existing accounts too (default: only of accounts created)")
    rates = load.add_parser("rates", help="a CSV rate deck (header line required), streamed")
    rates.add_argument("file", help="CSV file, or - for standard input")
    rates.add_argument("--tenant", default="default")
    rates.add_argument("--pricelist", help="pricelist_tag for rows without one")
    rates.add_argument("--carrier", help="carrier_tag for rows without one")
    rates.add_argument("--replace", action="store_true",
                       help="delete the rates of the deck's pricelist/carrier pairs that the deck does not list")
    rates.add_argument("--quiet", action="store_true", help="no progress output")
    outbox = commands.add_parser("outbox", help="outbox entries PostgreSQL refused (the dead letters)")
    outbox.add_argument("action", choices=["dead-letters", "replay"],
                        help="dead-letters: print them as JSON lines; replay: put them back in the outbox")
    outbox.add_argument("ids", nargs="*", help="with replay: only these dead-letter ids")
    balance = commands.add_parser("balance", help="set or move an account's live balance")
    balance.add_argument("mode", choices=["set", "add"])
    balance.add_argument("account_tag")
    balance.add_argument("amount", type=int)
    balance.add_argument("--tenant", default="default")
    rerate = commands.add_parser(
        "rerate", help="price the finished calls begun in [--from, --to) again on the current catalog",
        description="Without --apply only the differences are printed; with it the new fees are written to the"
                    " records and the differences to the balances through the ledger, exactly once.")
    rerate.add_argument("--tenant", default="default")
    rerate.add_argument("--account", dest="account_tag", help="only this account's calls (default: the tenant's)")
    rerate.add_argument("--from", dest="start", required=True, help="ISO-8601 instant (no offset: UTC)")
    rerate.add_argument("--to", dest="end", required=True, help="ISO-8601 instant, excluded")
    rerate.add_argument("--apply", action="store_true", help="write the changes (default: a dry run)")
    rerate.add_argument("--limit", type=int, default=100, help="changed calls listed in the output (default 100)")
    rerate.add_argument("--deck-version", type=int, help="price on the tenant's deck built at this change-log"
                        " position (one this host keeps under --deck-dir) instead of the current catalog")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = Settings.load(args)
    except ValueError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        return _run(args, settings)
    except Exception as exc:  # noqa: BLE001 - a command-line user gets the message, not a traceback
        if args.command == "serve" or settings.log_level.upper() == "DEBUG":
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 1


def _run(args: argparse.Namespace, settings: Settings) -> int:
    if args.command == "serve":
        from .serve import metrics_directory, serve

        with metrics_directory():
            from .graphql.security import exposure_problem

            problem = exposure_problem(settings)
            if problem:
                print(f"configuration error: {problem}", file=sys.stderr)
                return 2
            return serve(settings)
    elif args.command == "migrate":
        from .store.database import migrate

        applied = asyncio.run(_with_database(settings, migrate))
        print("applied: " + (", ".join(applied) or "nothing"))
    elif args.command == "build-decks":
        _build_decks(settings)
    elif args.command == "import" and args.kind == "catalog":
        _import_catalog(settings, args.file, args.set_balances)
    elif args.command == "import":
        _import_rates(settings, args)
    elif args.command == "balance":
        _balance(settings, args)
    elif args.command == "outbox":
        _outbox(settings, args)
    elif args.command == "rerate":
        return _rerate(settings, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
