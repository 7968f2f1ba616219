"""CPU instructions per authorization of one HTTP worker against the echo, counted by valgrind: no noise.

    python loadtest/bench_instructions.py [--prefixes 100000] [--accounts 1000] [--duration 10]
                                          [--agent-root DIR] [--agent-env NAME=VALUE] [--keep]

On this shared machine requests per second move by a tenth from one round to the next, more than most
changes are worth. Instructions do not: `valgrind --tool=callgrind` counts the ones a process executes,
the same for the same code and load whatever else runs. In a temporary folder this starts Redis and
PostgreSQL, imports the same catalog as bench_auth.py, then runs the echo and ONE agent worker (no
supervisor, no housekeeper) under callgrind with counting off; after a warm-up it counts during a wrk
run of each and prints instructions per request and their ratio (echo / agent: the throughput ratio the
agent would reach if both ran at the same instructions per second). Kernel work (socket reads and
writes) and Redis' own work are not in the counts; the agent is about 30 times slower under valgrind,
so its Redis batches are larger than at full speed. Needs valgrind (apt-get install valgrind) and wrk.

    python loadtest/bench_instructions.py --routes [--prefixes 100000] [--lookups 2000] [--agent-root DIR]

counts instead the instructions of one `route` (price and carriers, an account of one pricelist) over a
deck built by DIR's code from the generated rates (no servers): cold (a fresh deck and catalog), memos
cleared, and warm, over destinations with distinct longest matches, the garbage collector frozen first as in
a worker; counting is switched on around the routes alone (callgrind_control).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

from devstack import scratch  # noqa: E402

from bench_auth import ROOT, HttpServer, run_wrk, start_stack  # noqa: E402

WORKER = ("from agent.config import Settings; from agent.serve import run_worker; "
          "run_worker(Settings.load(), reuse_port=False)")


def callgrind(out: Path, *argv: str) -> list[str]:
    return ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}", *argv]


def count(server: HttpServer, out: Path, accounts: Path, destinations: Path, run_id: str, seconds: int,
          connections: int) -> tuple[int, int]:
    """(requests answered, instructions executed) during one wrk run with counting on."""
    pid = str(server.process.pid)
    subprocess.run(["callgrind_control", "-i", "on", pid], capture_output=True, check=True, timeout=60)
    result = run_wrk(server.url, accounts, destinations, run_id, seconds, connections, 1)
    subprocess.run(["callgrind_control", "-i", "off", pid], capture_output=True, check=True, timeout=60)
    subprocess.run(["callgrind_control", "-d", pid], capture_output=True, check=True, timeout=120)
    totals = [int(line.split()[1]) for dump in out.parent.glob(out.name + "*")
              for line in dump.read_text(errors="replace").splitlines() if line.startswith("totals:")]
    return result.requests, max(totals, default=0)


def route_child(root: Path, data: Path, lookups: int, which: str, decks: Path) -> int:
    """Under callgrind: builds (once per root) the deck of data's rates with root's code, then counts the
    routes of `which` pass (cold, cleared or warm) alone. Prints the routes counted."""
    import csv
    import gc
    import os
    from datetime import datetime, timezone

    sys.path.insert(0, str(root))
    from agent.pricing import deck, routing
    from agent.pricing.account import Account
    from agent.pricing.carrier import Carrier
    from agent.pricing.catalog import Catalog
    from agent.pricing.rate import Rate
    from agent.pricing.table import RateTable

    folder = decks / f"format-{deck.FORMAT}"
    if not (folder / "meta.json").exists():
        with open(data / "rates.csv", newline="") as file:
            rates = [Rate("t", row["pricelist_tag"], row["carrier_tag"], row["prefix"], int(row["connect_fee"]),
                          int(row["rate"]), int(row["rate_increment"]), int(row["interval_start"]),
                          row["description"] or None) for row in csv.DictReader(file)]
        deck.build(folder, "t", rates, 1)
        del rates
    tags = sorted({carrier for _, carrier in json.loads((folder / "meta.json").read_text())["sources"]} - {None})
    account = Account("t", "a", pricelist_tags=("standard",))
    plain = Catalog.of([account], [Carrier("t", tag, "127.0.0.1", 5060, "UDP", True) for tag in tags])

    def fresh() -> Catalog:
        return Catalog(plain.accounts, plain.carriers, {"t": RateTable().freeze().over(deck.Deck(folder), {})})

    at = datetime(2030, 1, 1, tzinfo=timezone.utc)
    catalog = fresh()
    picked, seen = [], set()
    for destination in (data / "destinations.txt").read_text().split():
        longest = catalog.table("t").longest(destination)
        if longest is not None and longest[0] not in seen:
            seen.add(longest[0])
            picked.append(destination)
            if len(picked) >= lookups:
                break
    catalog = fresh()
    gc.collect()
    gc.freeze()
    if which != "cold":
        for destination in picked:
            routing.route(catalog, account, destination, at)
        if which == "cleared":
            catalog.routes.clear()
            catalog.table("t").base.forget()
    control = ["callgrind_control", "-i"]
    subprocess.run([*control, "on", str(os.getpid())], capture_output=True, check=True, timeout=60)
    for destination in picked:
        routing.route(catalog, account, destination, at)
    subprocess.run([*control, "off", str(os.getpid())], capture_output=True, check=True, timeout=60)
    print(len(picked))
    return 0


def routes(args) -> int:
    """Instructions per `route`, cold, memos cleared and warm, of the deck's code at --agent-root."""
    import generate

    with scratch("bench-routes-", args.keep) as (workdir, _):
        data = workdir / "data"
        generate.generate(data, args.prefixes, account_count=10, destination_count=max(args.lookups * 5, 10_000))
        python = str(Path(sys.executable).resolve())
        print(f"| `route`, instructions per call ({args.prefixes:,} prefixes, agent at {args.agent_root}) | value |\n"
              "|---|---:|")
        for which in ("cold", "cleared", "warm"):
            out = workdir / f"{which}.callgrind"
            done = subprocess.run([*callgrind(out, python, __file__, "--route-child", which, "--agent-root",
                                              str(args.agent_root), "--data", str(data), "--lookups",
                                              str(args.lookups), "--decks", str(workdir / "decks"))],
                                  capture_output=True, text=True, timeout=3600, check=True)
            counted = int(done.stdout.split()[-1])
            totals = sum(int(line.split()[1]) for dump in workdir.glob(out.name + "*")
                         for line in dump.read_text(errors="replace").splitlines() if line.startswith("totals:"))
            print(f"| {which} ({counted:,} routes) | {totals / max(counted, 1):,.0f} |")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prefixes", type=int, default=100_000)
    parser.add_argument("--accounts", type=int, default=1_000)
    parser.add_argument("--duration", type=int, default=10, help="seconds of each counted run (max 60)")
    parser.add_argument("--warmup", type=int, default=20, help="seconds of each uncounted run first (max 120)")
    parser.add_argument("--destinations", type=int, default=2_000,
                        help="distinct destinations (few enough that the warm-up fills the routing memo)")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--agent-root", type=Path, default=ROOT, help="the checkout whose agent is measured")
    parser.add_argument("--agent-env", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (logs, callgrind files)")
    parser.add_argument("--routes", action="store_true", help="count one `route` instead (no servers)")
    parser.add_argument("--lookups", type=int, default=2_000, help="--routes: destinations routed per pass")
    parser.add_argument("--route-child", choices=("cold", "cleared", "warm"), help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--decks", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.route_child:
        return route_child(args.agent_root, args.data, args.lookups, args.route_child, args.decks)
    if args.routes:
        return routes(args)
    seconds = max(1, min(args.duration, 60))
    with scratch("bench-instructions-", args.keep) as (workdir, stops):
        log = lambda text: print(f"[bench] {text}", file=sys.stderr, flush=True)  # noqa: E731
        redis, postgres, gen, _ = start_stack(workdir, stops, log, args.prefixes, args.accounts,
                                              destinations=args.destinations)
        log("starting both servers under valgrind")
        python = str(Path(sys.executable).resolve())  # the interpreter itself, not a wrapper script
        outputs = {"echo": workdir / "echo.callgrind", "agent": workdir / "agent.callgrind"}
        echo = HttpServer("echo", callgrind(outputs["echo"], python, str(HERE / "echo.py"), "--port", "{port}"),
                          workdir / "echo.log")
        agent = HttpServer("agent", callgrind(outputs["agent"], python, "-c", WORKER), workdir / "agent.log", env={
            "RATING_HOST": "127.0.0.1", "RATING_REDIS_URL": redis.socket_url, "RATING_DATABASE_URL": postgres.url,
            "RATING_RECORD_RETENTION": "120", "RATING_LOG_LEVEL": "WARNING", "RATING_AUTHORIZATION_TTL": "3600",
            **dict(item.split("=", 1) for item in args.agent_env),
        }, cwd=args.agent_root)
        agent.env["RATING_PORT"] = str(agent.port)
        for server in (echo, agent):
            stops.append(server.stop)
            started = time.perf_counter()
            server.start(timeout=1200)
            log(f"{server.name} ready under valgrind in {time.perf_counter() - started:.0f}s")
        per_request = {}
        run_id = f"i{int(time.time())}"
        for name, server in (("echo", echo), ("agent", agent)):
            run_wrk(server.url, gen.accounts, gen.destinations, f"{run_id}w{name}", max(1, min(args.warmup, 120)),
                    args.connections, 1)
            requests, instructions = count(server, outputs[name], gen.accounts, gen.destinations,
                                           f"{run_id}{name}", seconds, args.connections)
            per_request[name] = instructions / max(requests, 1)
            log(f"{name}: {requests:,} requests, {instructions:,} instructions")
        print("| server | instructions per request |\n|---|---:|")
        for name, value in per_request.items():
            print(f"| {name} | {value:,.0f} |")
        print(f"\nratio echo / agent: {per_request['echo'] / per_request['agent']:.3f} "
              f"(agent at {args.agent_root})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
