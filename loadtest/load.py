"""`make load`: the Locust call-flow scenario against the `make run` stack, with data that fits it.

    python loadtest/load.py [--users 50] [--spawn-rate 50] [--duration 30s] [--hold 1] [--refusals 0.1]
                            [--prefixes 100000] [--accounts 1000] [--host http://127.0.0.1:8080]

1. generates a catalog with `loadtest/generate.py` into .data/load/ (once per set of arguments): a deck of
   `--prefixes` prefixes, `--accounts` accounts with balances no bounded run can use up and no limit on
   concurrent calls, plus a few accounts with no balance for the intended BALANCE_INSUFFICIENT refusals.
   The demo accounts of `make run` do not fit a load test (account 1000 allows 10 concurrent calls and
   holds 100,000: most calls of 50 users would be refused);
2. imports it into the running stack's Redis and PostgreSQL (the servers and deck folder of `make run`,
   found as devstack finds them: RATING_DEV_DATA, RATING_DEV_REDIS_PORT, RATING_DEV_POSTGRES_PORT, or
   RATING_REDIS_URL / RATING_DATABASE_URL / RATING_DECK_DIR), and waits until the agent rates with it;
3. runs `loadtest/locustfile.py` headless for `--duration` with `--users` callers;
4. prints call setups per second, latency percentiles per request and the share of refusals, split into
   the intended ones (the scenario's unknown accounts, unreachable destinations, broke accounts) and
   anything else (a failure). Exit status 1 when any request failed.

Start `make run` first (in another terminal). Bounded: `--duration` plus Locust's stop timeout.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "loadtest")]

import generate  # noqa: E402
from devstack import PostgresServer, RedisServer  # noqa: E402

BROKE_ACCOUNTS = 10
OPERATIONS = ("authorization", "begin", "end")


def stack_settings(args: argparse.Namespace) -> dict[str, str]:
    """The `make run` stack's servers and deck folder, as devstack/__main__.py sets them."""
    data = Path(os.environ.get("RATING_DEV_DATA", ROOT / ".data"))
    redis_server = RedisServer(data / "redis", port=int(os.environ.get("RATING_DEV_REDIS_PORT", 6390)))
    postgres = PostgresServer(data / "postgres", port=int(os.environ.get("RATING_DEV_POSTGRES_PORT", 5440)))
    return {
        "RATING_REDIS_URL": args.redis_url or os.environ.get("RATING_REDIS_URL", redis_server.url),
        "RATING_DATABASE_URL": args.database_url or os.environ.get("RATING_DATABASE_URL", postgres.url),
        "RATING_DECK_DIR": args.deck_dir or os.environ.get("RATING_DECK_DIR", str(data / "decks")),
    }


def prepare(folder: Path, args: argparse.Namespace) -> Path:
    """The generated data in `folder`, made again only when the arguments changed."""
    wanted = {"prefixes": args.prefixes, "accounts": args.accounts, "seed": args.seed, "broke": BROKE_ACCOUNTS}
    stamp = folder / "arguments.json"
    if stamp.exists() and json.loads(stamp.read_text()) == wanted:
        print(f"data: {folder} (already generated)", flush=True)
        return folder
    result = generate.generate(folder, args.prefixes, args.accounts, destination_count=2_000, seed=args.seed)
    document = json.loads(result.catalog.read_text())
    broke = [f"load-broke-{n}" for n in range(BROKE_ACCOUNTS)]
    document["accounts"] += [{"account_tag": tag, "name": f"No balance {tag}", "type": "PREPAID", "balance": 0,
                              "pricelist_tags": [generate.STANDARD_PRICELIST]} for tag in broke]
    result.catalog.write_text(json.dumps(document, indent=1) + "\n")
    (folder / "broke_accounts.txt").write_text("".join(tag + "\n" for tag in broke))
    stamp.write_text(json.dumps(wanted))
    print(f"data: {result.prefixes:,} prefixes, {result.rate_rows:,} rates, {result.account_count:,} accounts "
          f"(+{BROKE_ACCOUNTS} with no balance) in {result.seconds:.1f}s -> {folder}", flush=True)
    return folder


def agent_ready(host: str) -> bool:
    try:
        with urllib.request.urlopen(host + "/ready", timeout=2) as reply:
            return reply.status == 200
    except (OSError, urllib.error.HTTPError):
        return False


def post(host: str, operation: str, body: dict) -> dict:
    request = urllib.request.Request(f"{host}/v1/{operation}", data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=5) as reply:
        return json.loads(reply.read())


def import_data(folder: Path, env: dict[str, str], host: str, timeout: float = 120.0) -> None:
    """Imports the catalog and the deck (upserts: a second run changes nothing), then waits until the agent
    authorizes a generated account's call (its catalog follows the change log)."""
    started = time.monotonic()
    for argv in (["import", "catalog", str(folder / "catalog.json")],
                 ["import", "rates", str(folder / "rates.csv"), "--quiet"]):
        subprocess.run([sys.executable, "-m", "agent", *argv], cwd=ROOT, env={**os.environ, **env}, check=True,
                       stdout=subprocess.DEVNULL)
    account = (folder / "accounts.txt").read_text().split()[0]
    destination = (folder / "destinations.txt").read_text().split()[0]
    deadline = time.monotonic() + timeout
    while True:
        tag = f"load-probe-{time.time_ns()}"
        answer = post(host, "authorization", {"transaction_tag": tag, "account_tag": account,
                                              "destination": destination})
        post(host, "rollback_transaction", {"transaction_tag": tag})
        if answer.get("authorized"):
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"the agent does not rate the imported data: {answer}")
        time.sleep(0.2)
    print(f"imported into the running stack in {time.monotonic() - started:.1f}s", flush=True)


def run_locust(folder: Path, results: Path, args: argparse.Namespace) -> int:
    env = {**os.environ, "RATING_LOAD_DATA": str(folder), "RATING_LOAD_HOLD": str(args.hold),
           "RATING_LOAD_REFUSALS": str(args.refusals)}
    argv = [sys.executable, "-m", "locust", "-f", str(ROOT / "loadtest" / "locustfile.py"), "--headless",
            "-u", str(args.users), "-r", str(args.spawn_rate), "-t", args.duration, "--host", args.host,
            "--csv", str(results / "run"), "--only-summary", "--stop-timeout", "5", "--loglevel", "WARNING"]
    print(f"locust: {args.users} users for {args.duration} against {args.host} ...", flush=True)
    done = subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if not (results / "run_stats.csv").exists():
        raise RuntimeError(f"locust wrote no statistics (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return done.returncode


def summarize(results: Path) -> dict:
    """Call setups per second, percentiles per request, refusals by kind and failures, from Locust's CSV."""
    with open(results / "run_stats.csv") as handle:
        rows = {row["Name"]: row for row in csv.DictReader(handle)}
    with open(results / "run_failures.csv") as handle:
        failures = [(row["Name"], row["Error"], int(row["Occurrences"])) for row in csv.DictReader(handle)]
    intended = {name[len("authorization ("):-1]: int(row["Request Count"]) for name, row in rows.items()
                if name.startswith("authorization (")}
    calls = int(rows.get("authorization", {}).get("Request Count", 0)) + sum(intended.values())
    latency = {op: {p: float(rows[op][p]) for p in ("50%", "90%", "99%", "100%")} | {
               "count": int(rows[op]["Request Count"])} for op in OPERATIONS if op in rows}
    return {"calls": calls, "setups_per_s": float(rows.get("begin", {}).get("Requests/s", 0.0)),
            "latency_ms": latency, "intended": intended, "failures": failures,
            "failed": int(rows["Aggregated"]["Failure Count"])}


def report(summary: dict, args: argparse.Namespace) -> None:
    calls = max(summary["calls"], 1)
    print(f"\n{summary['calls']:,} calls in {args.duration} by {args.users} users (mean hold {args.hold:g} s)")
    print(f"call setups per second (begin requests/s): {summary['setups_per_s']:.1f}")
    print(f"{'latency (ms)':<16}{'requests':>10}{'p50':>8}{'p90':>8}{'p99':>8}{'max':>8}")
    for op, row in summary["latency_ms"].items():
        print(f"{op:<16}{row['count']:>10,}{row['50%']:>8g}{row['90%']:>8g}{row['99%']:>8g}{row['100%']:>8g}")
    refused = sum(summary["intended"].values())
    kinds = ", ".join(f"{kind} {100 * n / calls:.1f}%" for kind, n in sorted(summary["intended"].items()))
    print(f"refusals: {100 * refused / calls:.1f}% of the calls, all intended ({kinds or 'none'}; "
          f"asked for {100 * args.refusals:g}%)")
    if summary["failed"]:
        print(f"FAILED: {summary['failed']} requests ({100 * summary['failed'] / calls:.1f}% of the calls):")
        for name, error, count in summary["failures"]:
            print(f"  {count:>6} {name}: {error}")
    else:
        print("failures: none (no refusal other than the intended ones, every begin and end ok)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default=f"http://127.0.0.1:{os.environ.get('RATING_PORT', 8080)}",
                        help="the agent (default: make run's, RATING_PORT)")
    parser.add_argument("--users", type=int, default=50, help="simulated callers (default 50)")
    parser.add_argument("--spawn-rate", type=float, default=50, help="callers started per second (default 50)")
    parser.add_argument("--duration", default="30s", help="Locust run time, e.g. 30s, 5m (default 30s)")
    parser.add_argument("--hold", type=float, default=1.0, help="mean call hold time in seconds (default 1)")
    parser.add_argument("--refusals", type=float, default=0.1, help="share of calls meant to be refused (0.1)")
    parser.add_argument("--prefixes", type=int, default=100_000, help="prefixes of the generated deck (100000)")
    parser.add_argument("--accounts", type=int, default=1_000, help="generated accounts (default 1000)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--data", default=None, help="folder of the generated data (default .data/load)")
    parser.add_argument("--redis-url", default=None, help="the stack's Redis (default: make run's)")
    parser.add_argument("--database-url", default=None, help="the stack's PostgreSQL (default: make run's)")
    parser.add_argument("--deck-dir", default=None, help="the stack's deck folder (default: make run's)")
    args = parser.parse_args(argv)
    if args.users <= 0 or args.spawn_rate <= 0 or not 0 <= args.refusals <= 1:
        parser.error("--users and --spawn-rate must be positive, --refusals between 0 and 1")

    if not agent_ready(args.host):
        print(f"no ready agent at {args.host}: start the stack first (`make run` in another terminal)",
              file=sys.stderr)
        return 2
    env = stack_settings(args)
    folder = Path(args.data) if args.data else Path(os.environ.get("RATING_DEV_DATA", ROOT / ".data")) / "load"
    prepare(folder, args)
    import_data(folder, env, args.host)
    results = folder / "results"
    results.mkdir(exist_ok=True)
    for old in results.glob("run_*.csv"):
        old.unlink()
    run_locust(folder, results, args)
    summary = summarize(results)
    report(summary, args)
    print(f"Locust's statistics: {results}/run_stats.csv")
    return 1 if summary["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
