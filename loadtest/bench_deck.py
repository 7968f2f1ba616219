"""A 1,000,000-rate deck imported through the HTTP endpoint while authorizations run: time and p99 latency.

    python loadtest/bench_deck.py [--rows 1000000] [--concurrency 8] [--workers 1] [--keep]

In a temporary folder, on free loopback ports: starts redis-server and PostgreSQL (devstack), loads a small
catalog (one carrier, one pricelist, 100 accounts), imports a first deck of ROWS rates with the CLI
(`rating-agent import rates`, timed), starts one agent (`python -m agent serve`, WORKERS worker
processes) with a management token, and runs an authorization loop (aiohttp, CONCURRENCY requests in
flight, unique transaction tags, random destinations of the deck). After a quiet baseline it uploads a
second deck of ROWS rates with other prices (`POST /management/pricelists/p1/rates?replace=true`) and
measures:

* import: from the start of the upload to the endpoint's answer (parsed, copied, merged, committed);
* activate: from the start of the upload until an authorization is rated on the new deck;
* p50/p99/max authorization latency before, and during import + activation; errors and timeouts.

Every step is bounded in time; every process started here is stopped at the end (also on errors and
Ctrl-C). The folder is removed unless --keep is given.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from devstack import (  # noqa: E402
    PostgresServer, RedisServer, free_port, scratch, stop_process, wait_for_port,
)

TOKEN = "bench-token"


def write_deck(path: Path, rows: int, rate: int, seed: int) -> list[str]:
    """ROWS distinct 8-digit prefixes under 39; returns a sample of destinations that hit them."""
    rng = random.Random(seed)
    prefixes = rng.sample(range(10_000_000, 100_000_000), rows)
    with path.open("w") as handle:
        handle.write("prefix,rate,rate_increment,connect_fee,description\n")
        for prefix in prefixes:
            handle.write(f"39{prefix},{rate},60,0,deck {rate}\n")
    return [f"sip:39{p}{rng.randrange(1000):03d}@example.com" for p in prefixes[:5000]]


def catalog_document(accounts: int) -> dict:
    return {
        "carriers": [{"carrier_tag": "c1", "host": "10.0.0.1", "port": 5060}],
        "pricelists": [{"pricelist_tag": "p1"}],
        "rates": [],
        "accounts": [{"account_tag": f"a{n}", "type": "PREPAID", "balance": 10**15, "pricelist_tags": ["p1"]}
                     for n in range(accounts)]
                    + [{"account_tag": "probe", "type": "PREPAID", "balance": 100, "pricelist_tags": ["p1"]}],
    }


def percentile(values: list[float], share: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


async def run_load(url: str, destinations: list[str], args, deck_path: Path) -> dict:
    import aiohttp

    samples: list[tuple[float, float]] = []  # (start, seconds)
    errors = 0
    stop = asyncio.Event()
    counter = 0
    run = f"{time.time_ns()}"

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal counter, errors
        while not stop.is_set():
            counter += 1
            body = {"transaction_tag": f"{run}-{counter}", "account_tag": f"a{counter % 100}",
                    "destination": random.choice(destinations)}
            started = time.perf_counter()
            try:
                async with session.post(url + "/v1/authorization", json=body,
                                        timeout=aiohttp.ClientTimeout(total=10)) as reply:
                    await reply.read()
                    if reply.status != 200:
                        errors += 1
            except (aiohttp.ClientError, asyncio.TimeoutError):
                errors += 1
            samples.append((started, time.perf_counter() - started))

    async def units_of(session, destination: str) -> int:
        """Units granted to the probe account (balance 100: 3000 s at 2 per minute, 1980 s at 3)."""
        body = {"transaction_tag": f"probe-{time.time_ns()}", "account_tag": "probe", "destination": destination}
        async with session.post(url + "/v1/authorization", json=body) as reply:
            units = (await reply.json())["max_available_units"]
        async with session.post(url + "/v1/rollback_transaction", json=body) as reply:
            await reply.read()
        return units

    connector = aiohttp.TCPConnector(limit=args.concurrency + 4)
    async with aiohttp.ClientSession(connector=connector) as session:
        old_units = await units_of(session, destinations[0])
        tasks = [asyncio.create_task(worker(session)) for _ in range(args.concurrency)]
        await asyncio.sleep(args.baseline)
        upload_started = time.perf_counter()
        with deck_path.open("rb") as handle:
            async with session.post(
                url + "/management/pricelists/p1/rates?carrier_tag=c1&replace=true", data=handle,
                headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "text/csv"},
                timeout=aiohttp.ClientTimeout(total=args.timeout),
            ) as reply:
                answer = await reply.json()
                if reply.status != 200:
                    raise RuntimeError(f"deck upload failed: {reply.status} {answer}")
        imported = time.perf_counter()
        deadline = imported + args.timeout
        while await units_of(session, destinations[0]) == old_units:
            if time.perf_counter() > deadline:
                raise RuntimeError("the new deck never became active")
            await asyncio.sleep(0.02)
        active = time.perf_counter()
        await asyncio.sleep(1.0)
        stop.set()
        await asyncio.gather(*tasks)
    before = [s for t, s in samples if t < upload_started]
    during = [s for t, s in samples if upload_started <= t <= active]
    return {
        "server_seconds": answer.get("seconds"), "rows": answer.get("rows"),
        "import_seconds": imported - upload_started, "activate_seconds": active - upload_started,
        "before": before, "during": during, "errors": errors,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--baseline", type=float, default=5.0, help="seconds of load before the upload")
    parser.add_argument("--timeout", type=float, default=900.0, help="bound of the import and of the activation")
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()

    try:
        with scratch("bench-deck-", args.keep) as (folder, stops):
            redis = RedisServer(folder / "redis")
            stops.append(redis.stop)
            redis.start()
            postgres = PostgresServer(folder / "postgres")
            stops.append(postgres.stop)
            postgres.start()
            env = {**os.environ, "RATING_REDIS_URL": redis.url, "RATING_DATABASE_URL": postgres.url,
                   "RATING_LOG_LEVEL": "WARNING"}
            cli = [sys.executable, "-m", "agent"]
            catalog = folder / "catalog.json"
            import json

            catalog.write_text(json.dumps(catalog_document(100)))
            subprocess.run([*cli, "import", "catalog", str(catalog)], cwd=ROOT, env=env, check=True, timeout=120)
            first, second = folder / "deck1.csv", folder / "deck2.csv"
            destinations = write_deck(first, args.rows, 2, seed=1)
            write_deck(second, args.rows, 3, seed=1)  # same prefixes, other price
            started = time.perf_counter()
            subprocess.run([*cli, "import", "rates", str(first), "--pricelist", "p1", "--carrier", "c1", "--quiet"],
                           cwd=ROOT, env=env, check=True, timeout=args.timeout)
            cli_seconds = time.perf_counter() - started

            port = free_port()
            agent = subprocess.Popen(
                [*cli, "serve"], cwd=ROOT, start_new_session=True,
                env={**env, "RATING_PORT": str(port), "RATING_WORKERS": str(args.workers),
                     "RATING_MANAGEMENT_TOKEN": TOKEN, "RATING_RECORD_RETENTION": "120"},
                stdout=(folder / "agent.log").open("wb"), stderr=subprocess.STDOUT,
            )
            stops.append(lambda: stop_process(agent, 20))
            wait_for_port(port, timeout=args.timeout)
            url = f"http://127.0.0.1:{port}"
            import urllib.request

            deadline = time.monotonic() + args.timeout
            while True:  # the port opens before the first catalog is in memory: wait for a rated answer
                request = urllib.request.Request(url + "/v1/authorization", method="POST", data=json.dumps({
                    "transaction_tag": "warm", "account_tag": "a0", "destination": destinations[0]}).encode())
                try:
                    with urllib.request.urlopen(request, timeout=5) as reply:
                        if json.loads(reply.read()).get("authorized"):
                            break
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError("agent not ready")
                time.sleep(0.5)

            result = asyncio.run(run_load(url, destinations, args, second))
            before, during = result["before"], result["during"]
            print(f"\n### {args.rows:,}-rate deck, agent with {args.workers} worker(s),"
                  f" {args.concurrency} requests in flight\n")
            print("| measure | value |\n|---|---|")
            print(f"| CLI import of the first deck (`import rates`, new rows) | {cli_seconds:.1f} s |")
            print(f"| HTTP import of the second deck (answer; server-side {result['server_seconds']} s) |"
                  f" {result['import_seconds']:.1f} s |")
            print(f"| import + activation (upload start → first authorization on the new deck) |"
                  f" {result['activate_seconds']:.1f} s |")
            for name, values in (("before", before), ("during import + activation", during)):
                if values:
                    print(f"| authorizations {name}: count, p50 / p99 / max | {len(values)},"
                          f" {percentile(values, .5) * 1000:.1f} / {percentile(values, .99) * 1000:.1f} /"
                          f" {max(values) * 1000:.1f} ms |")
            rate = len(during) / result["activate_seconds"] if result["activate_seconds"] else 0
            print(f"| authorizations/s during | {rate:.0f} (before: {len(before) / args.baseline:.0f}) |")
            print(f"| failed or timed-out authorizations | {result['errors']} |")
            if during:
                print(f"\nmean during: {statistics.mean(during) * 1000:.1f} ms")
            return 0
    except KeyboardInterrupt:
        print("\n[bench] interrupted; stopping everything", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
