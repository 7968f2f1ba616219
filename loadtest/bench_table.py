"""The rate table at scale: import time, load time, memory per prefix and lookup time, in one command.

    python loadtest/bench_table.py [--prefixes 1000000] [--lookups 20000] [--no-tracemalloc] [--keep]

In a temporary folder: starts PostgreSQL on a free loopback port (devstack), generates a realistic deck
(loadtest/generate.py) and imports it with the agent's CLI (`python -m agent import catalog`, then
`python -m agent import rates`, timed). Then, in a fresh Python process each time:

* loads the catalog with `agent.store.catalog.load_catalog` (timed) and measures the memory it holds:
  the process' resident set before and after (and its peak during the load), and the deep size of the
  rate table (every object reachable from it counted once; small ints and None are shared and free);
* times the lookups on destinations of the deck: `RateTable.matches`, `destination_rate`,
  `least_cost_routing` and the whole `plan_call`, per call;
* optionally (default on) a second fresh process measures the load under tracemalloc: the bytes Python
  allocated for the catalog and still holds, independent of allocator slack.

Prints a Markdown table. Every process started here is stopped at the end, also on errors and Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(ROOT), str(HERE)]

TENANT = "default"


# ------------------------------------------------------------------------------------ in the fresh process

def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def _reset_peak() -> None:
    """Makes VmHWM start from the current RSS (Linux 4.0+), so the peak of the load alone is seen."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def deep_size(table) -> int:
    """Bytes of every object reachable from the table, each counted once (cached small ints/None excluded)."""
    seen: set[int] = set()
    total = 0
    shared = {id(None), id(True), id(False)}

    def add(obj) -> None:
        nonlocal total
        key = id(obj)
        if key in seen or key in shared:
            return
        if isinstance(obj, int) and -5 <= obj <= 256:
            return
        seen.add(key)
        total += sys.getsizeof(obj)

    add(table)
    for index in (table.numbers, table.raw):
        add(index)
        for key, rates in index.items():
            add(key)
            add(rates)
            for rate in rates:
                if id(rate) in seen:
                    continue
                add(rate)
                for name in rate.__slots__:
                    add(getattr(rate, name))
    add(table.number_lengths)
    add(table.raw_lengths)
    return total


async def _load(database_url: str, trace: bool) -> dict:
    import tracemalloc

    from agent.store.catalog import load_catalog
    from agent.store.database import create_pool

    pool = await create_pool(database_url, max_size=2)
    gc.collect()
    before_kb = _status_kb("VmRSS")
    _reset_peak()
    if trace:
        tracemalloc.start()
    catalog, seconds = await load_catalog(pool, 1)
    await pool.close()
    gc.collect()
    result = {"load_seconds": seconds, "rss_before_kb": before_kb, "rss_after_kb": _status_kb("VmRSS"),
              "rss_peak_kb": _status_kb("VmHWM")}
    if trace:
        current, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        result.update(traced_bytes=current, traced_peak_bytes=peak)
    return {"catalog": catalog, **result}


def _per_call(function, items, repeat: int = 3) -> float:
    """Best of `repeat` passes over `items`, in microseconds per call."""
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        for item in items:
            function(item)
        best = min(best, time.perf_counter() - started)
    return best / len(items) * 1e6


def measure(database_url: str, destinations_file: Path, lookups: int, trace: bool) -> dict:
    from datetime import datetime, timezone

    from agent.pricing.plan import plan_call
    from agent.pricing.routing import destination_rate, least_cost_routing

    loaded = asyncio.run(_load(database_url, trace))
    catalog = loaded.pop("catalog")
    table = catalog.table(TENANT)
    result = {**loaded, "rows": table.size, "prefixes": len(table.numbers) + len(table.raw),
              "probe_lengths": list(table.number_lengths)}
    if trace:
        return result
    result["deep_bytes"] = deep_size(table)
    destinations = destinations_file.read_text().split()[:lookups]
    # a PREPAID account with only the standard pricelist: the common case
    account = next(a for a in catalog.accounts.values()
                   if a.pricelist_tags == ("standard",) and a.type.value == "PREPAID")
    at = datetime.now(timezone.utc)
    matched = [list(table.matches(d)) for d in destinations]
    result["lookups"] = len(destinations)
    result["hit_share"] = sum(1 for m in matched if m) / len(destinations)
    result["matches_per_lookup"] = sum(len(m) for m in matched) / len(destinations)
    result["rates_per_lookup"] = sum(len(r) for m in matched for _, r in m) / len(destinations)
    result["carriers_per_route"] = sum(
        len(least_cost_routing(catalog, account, d, at)) for d in destinations) / len(destinations)
    result["us_matches"] = _per_call(lambda d: list(table.matches(d)), destinations)
    result["us_destination_rate"] = _per_call(lambda d: destination_rate(catalog, account, d, at), destinations)
    result["us_least_cost_routing"] = _per_call(
        lambda d: least_cost_routing(catalog, account, d, at), destinations)
    result["us_plan_call"] = _per_call(
        lambda d: plan_call(catalog, TENANT, account.account_tag, None, d, at), destinations)
    return result


# ------------------------------------------------------------------------------------------ the driver

def _fresh_process(database_url: str, destinations: Path, lookups: int, trace: bool, timeout: float) -> dict:
    argv = [sys.executable, str(Path(__file__).resolve()), "--measure", "--database-url", database_url,
            "--destinations-file", str(destinations), "--lookups", str(lookups)]
    if trace:
        argv.append("--tracemalloc")
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"measuring process failed:\n{done.stdout}\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def report(prefixes: int, rows: int, generated: float, imports: dict, plain: dict, traced: dict | None) -> str:
    mb = 1024 * 1024
    rss = (plain["rss_after_kb"] - plain["rss_before_kb"]) * 1024
    peak = (plain["rss_peak_kb"] - plain["rss_before_kb"]) * 1024
    loaded_prefixes, loaded_rows = plain["prefixes"], plain["rows"]
    lines = [
        f"Deck: {prefixes:,} prefixes, {rows:,} rate rows (generated in {generated:.1f}s);"
        f" loaded: {loaded_prefixes:,} prefixes / {loaded_rows:,} rates,"
        f" {len(plain['probe_lengths'])} distinct prefix lengths probed per lookup",
        "",
        "| measure | value | per prefix | per rate row |",
        "|---|---:|---:|---:|",
        f"| CLI import, catalog JSON (carriers, pricelists, accounts) | {imports['catalog']:.1f} s | | |",
        f"| CLI import, rate deck CSV (`python -m agent import rates`) | {imports['rates']:.1f} s"
        f" | | {rows / imports['rates']:,.0f} rows/s |",
        f"| catalog load (`load_catalog`, fresh process) | {plain['load_seconds']:.1f} s | |"
        f" {loaded_rows / plain['load_seconds']:,.0f} rows/s |",
        f"| RSS held after the load (after - before) | {rss / mb:,.0f} MB | {rss / loaded_prefixes:,.0f} B |"
        f" {rss / loaded_rows:,.0f} B |",
        f"| RSS peak during the load (peak - before) | {peak / mb:,.0f} MB | {peak / loaded_prefixes:,.0f} B |"
        f" {peak / loaded_rows:,.0f} B |",
        f"| deep size of the RateTable (objects reachable, once each) | {plain['deep_bytes'] / mb:,.0f} MB |"
        f" {plain['deep_bytes'] / loaded_prefixes:,.0f} B | {plain['deep_bytes'] / loaded_rows:,.0f} B |",
    ]
    if traced:
        lines += [
            f"| tracemalloc: held after the load | {traced['traced_bytes'] / mb:,.0f} MB |"
            f" {traced['traced_bytes'] / loaded_prefixes:,.0f} B | {traced['traced_bytes'] / loaded_rows:,.0f} B |",
            f"| tracemalloc: peak during the load | {traced['traced_peak_bytes'] / mb:,.0f} MB |"
            f" {traced['traced_peak_bytes'] / loaded_prefixes:,.0f} B |"
            f" {traced['traced_peak_bytes'] / loaded_rows:,.0f} B |",
            f"| catalog load under tracemalloc (slower) | {traced['load_seconds']:.1f} s | | |",
        ]
    lines += [
        "",
        f"Lookups: {plain['lookups']:,} destinations of the deck (`sip:NUMBER@host:port`),"
        f" {100 * plain['hit_share']:.0f}% matched, {plain['matches_per_lookup']:.2f} matching prefixes and"
        f" {plain['rates_per_lookup']:.2f} rates per lookup, {plain['carriers_per_route']:.2f} carriers per route;"
        f" account with one pricelist; best of 3 passes",
        "",
        "| call | µs per call |",
        "|---|---:|",
        f"| `RateTable.matches(destination)` (as a list) | {plain['us_matches']:.2f} |",
        f"| `destination_rate(...)` | {plain['us_destination_rate']:.2f} |",
        f"| `least_cost_routing(...)` (calls `matches` itself) | {plain['us_least_cost_routing']:.2f} |",
        f"| `matches` + `least_cost_routing` (sum of the two rows above) | {plain['us_matches'] + plain['us_least_cost_routing']:.2f} |",
        f"| `plan_call(...)` (what an authorization runs: rate + routing) | {plain['us_plan_call']:.2f} |",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prefixes", type=int, default=1_000_000)
    parser.add_argument("--carriers", type=int, default=10)
    parser.add_argument("--lookups", type=int, default=20_000, help="destinations timed (each 3 times)")
    parser.add_argument("--no-tracemalloc", action="store_true", help="skip the (slow) tracemalloc measurement")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--tracemalloc", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--database-url", help=argparse.SUPPRESS)
    parser.add_argument("--destinations-file", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.measure:  # the fresh process
        print(json.dumps(measure(args.database_url, args.destinations_file, args.lookups, args.tracemalloc)))
        return 0

    import generate
    from bench_auth import machine_description, run_cli
    from devstack import PostgresServer, scratch

    status = 0
    log = lambda text: print(f"[bench] {text}", file=sys.stderr, flush=True)  # noqa: E731
    try:
        with scratch("bench-table-", args.keep) as (workdir, stops):
            log(f"working in {workdir}")
            postgres = PostgresServer(workdir / "postgres")
            stops.append(lambda: postgres.stop("immediate"))
            postgres.start()
            log(f"PostgreSQL on {postgres.port}; generating {args.prefixes:,} prefixes")
            gen = generate.generate(workdir / "data", args.prefixes, account_count=100, carrier_count=args.carriers,
                                    destination_count=args.lookups, seed=args.seed, balances=False)
            log(f"{gen.rate_rows:,} rows in {gen.seconds:.1f}s ({gen.deck.stat().st_size / 2**20:.0f} MB); importing")
            no_redis = "redis://127.0.0.1:1/0"  # a catalog without balances never touches Redis
            imports = {}
            out, imports["catalog"] = run_cli(no_redis, postgres.url, "import", "catalog", str(gen.catalog))
            log(f"catalog: {out} ({imports['catalog']:.1f}s)")
            out, imports["rates"] = run_cli(no_redis, postgres.url, "import", "rates", str(gen.deck), "--quiet")
            log(f"rates: {out} ({imports['rates']:.1f}s); loading in a fresh process")
            plain = _fresh_process(postgres.url, gen.destinations, args.lookups, False, 1800)
            log(f"load {plain['load_seconds']:.1f}s, lookups done")
            traced = None
            if not args.no_tracemalloc:
                log("loading again under tracemalloc")
                traced = _fresh_process(postgres.url, gen.destinations, args.lookups, True, 3600)
            print(f"Machine: {machine_description()}\n")
            print(report(gen.prefixes, gen.rate_rows, gen.seconds, imports, plain, traced), flush=True)
    except KeyboardInterrupt:
        print("\n[bench] interrupted; stopping everything", file=sys.stderr)
        status = 130
    return status


if __name__ == "__main__":
    sys.exit(main())
