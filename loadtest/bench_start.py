"""Agent start with its deck already built: from `python -m agent serve` to the first authorized answer.

    python loadtest/bench_start.py --data DIR [--rounds 5] [--workers 2] [--baseline /path/to/other/checkout]

In a temporary folder, on free loopback ports: starts redis-server and PostgreSQL (devstack), imports the
catalog and deck of DIR (catalog.json, rates.csv, accounts.txt, destinations.txt: what loadtest/generate.py
or bench_table.py --data wrote) with the agent's CLI, which also builds the deck. Then, --rounds times, starts
the agent (`--workers` workers), sends authorizations (a fresh connection each, 20 ms apart) until one is
authorized, and records at that moment the CPU seconds each process of the agent has used; then stops it
(SIGTERM) and records how long the graceful stop took. With --baseline, the other checkout's agent runs in
alternate rounds on the same databases, with its own deck folder (built by one start not counted).

Prints one JSON line per round and a Markdown table (median and spread) with the load average.
Every process started here is stopped at the end, also on errors and Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(ROOT), str(HERE)]


def _load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def cpu_by_process(agent) -> dict[str, float]:
    """CPU seconds (user + system) of every live process of the agent, by its name (rating-worker-0...)."""
    tick = os.sysconf("SC_CLK_TCK")
    found: dict[str, float] = {}
    for pid in agent.pids():
        try:
            name = Path(f"/proc/{pid}/comm").read_text().strip()
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        found[name] = found.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / tick
    return found


def one_start(agent, authorizer, timeout: float = 120) -> dict:
    async def run() -> dict:
        started = time.perf_counter()
        ready = asyncio.ensure_future(asyncio.to_thread(agent.start, timeout))
        authorized = await authorizer.until_authorized(started + timeout)
        cpu = cpu_by_process(agent)
        await ready
        if authorized is None:
            raise TimeoutError(f"no authorization within {timeout:g} s of the agent's start")
        return {"first_authorized": authorized - started, "cpu": cpu}

    result = asyncio.run(run())
    stopping = time.perf_counter()
    agent.stop()
    result["stop"] = time.perf_counter() - stopping
    result["cpu_total"] = sum(result["cpu"].values())
    return result


def _cell(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="folder of catalog.json, rates.csv, accounts.txt, destinations.txt")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--baseline", help="another checkout of the agent, started in alternate rounds")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args(argv)

    from bench_table import Authorizer
    from devstack import AgentProcess, PostgresServer, RedisServer, scratch

    log = lambda text: print(f"[bench] {text}", file=sys.stderr, flush=True)  # noqa: E731
    data = Path(args.data)
    trees = {"this": ROOT}
    if args.baseline:
        trees["baseline"] = Path(args.baseline).resolve()
    try:
        with scratch("bench-start-", args.keep) as (workdir, stops):
            redis = RedisServer(workdir / "redis")
            stops.append(redis.stop)
            redis.start()
            postgres = PostgresServer(workdir / "postgres")
            stops.append(lambda: postgres.stop("immediate"))
            postgres.start()
            settings = {"workers": args.workers, "log_level": "WARNING"}

            def agent_of(label: str) -> AgentProcess:
                agent = AgentProcess(redis.url, postgres.url, workdir / label, **settings)
                (workdir / label).mkdir(exist_ok=True)
                agent.root = trees[label]
                stops.append(agent.stop)
                return agent

            started = time.perf_counter()
            agent_of("this").cli("import", "catalog", str(data / "catalog.json"), timeout=600)
            agent_of("this").cli("import", "rates", str(data / "rates.csv"), timeout=3600)
            log(f"catalog and deck imported and built in {time.perf_counter() - started:.1f} s")
            authorizer = Authorizer("", (data / "accounts.txt").read_text().split(),
                                    (data / "destinations.txt").read_text().split())
            for label in trees:  # each tree builds its own deck folder once, outside the rounds
                agent = agent_of(label)
                authorizer.url = agent.url
                log(f"{label}: first start (deck folder built if missing): "
                    f"{one_start(agent, authorizer, timeout=3600)['first_authorized']:.2f} s")
            results: dict[str, list[dict]] = {label: [] for label in trees}
            for round_ in range(args.rounds):
                for label in (list(trees) if round_ % 2 == 0 else list(reversed(trees))):
                    agent = agent_of(label)
                    authorizer.url = agent.url
                    load = _load()
                    result = {"tree": label, "round": round_, "load": load, **one_start(agent, authorizer)}
                    results[label].append(result)
                    print(json.dumps(result), flush=True)
            print(f"\nload average at the end: {_load()}; {args.workers} workers; deck: {data}\n")
            print("| tree | start to the first authorization, s | CPU s of all processes by then | graceful stop, s |")
            print("|---|---|---|---|")
            for label, rows in results.items():
                print(f"| {label} | {_cell([r['first_authorized'] for r in rows])}"
                      f" | {_cell([r['cpu_total'] for r in rows])} | {_cell([r['stop'] for r in rows])} |")
            names = sorted({name for rows in results.values() for r in rows for name in r["cpu"]})
            print("\n| tree | " + " | ".join(f"{name} CPU s" for name in names) + " |")
            print("|---|" + "---|" * len(names))
            for label, rows in results.items():
                print(f"| {label} | " + " | ".join(_cell([r["cpu"].get(name, 0.0) for r in rows]) for name in names)
                      + " |")
    except KeyboardInterrupt:
        print("\n[bench] interrupted; stopping everything", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
