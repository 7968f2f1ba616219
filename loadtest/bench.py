"""`make bench`: the whole performance picture in one command.

    python loadtest/bench.py [--workers N] [--duration 10] [--locust-users 50] [--locust-seconds 20]
                             [--only-auth | --only-locust] [--agent-root DIR]

1. Authorization throughput with one worker and with N workers (default: one per core), each against the
   echo baseline measured in the same run on the same load generator (loadtest/bench_auth.py, wrk).
   Then the authorization's latency with one worker at half the rate it reached (wrk paced: each of
   rate * 10 ms / 1000 connections sends a request every 10 ms; the echo paced the same way, same run).
2. The Locust call-flow scenario (loadtest/locustfile.py: authorization, begin, hold, end, with refusals)
   against an agent with N workers: call setups per second, with zero failures required.

Prints the detailed tables of each step and a summary table ready to paste into the docs. Every run is
bounded in time; everything started is stopped at the end. `--agent-root DIR` runs the agent of another source
tree (a worktree of an earlier commit, for a before/after).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "loadtest"))

from devstack import AgentProcess, PostgresServer, RedisServer  # noqa: E402


PACE_MS = 10  # the paced run: each connection sends a request every 10 ms


def _auth_run(workers: int, duration: int, agent_root: Path | None = None, connections: int | None = None,
              pace_ms: int | None = None) -> dict:
    command = [sys.executable, str(ROOT / "loadtest" / "bench_auth.py"), "--workers", str(workers),
               "--duration", str(duration), "--warmup", "3", "--rounds", "2"]
    if agent_root is not None:
        command += ["--agent-root", str(agent_root)]
    if connections is not None:
        command += ["--connections", str(connections)]
    env = {**os.environ, **({"RATING_WRK_PACE_MS": str(pace_ms)} if pace_ms else {})}
    print(f"\n$ {'RATING_WRK_PACE_MS=%d ' % pace_ms if pace_ms else ''}{' '.join(command[1:])}", flush=True)
    done = subprocess.run(command, capture_output=True, text=True, timeout=1800, env=env)
    print(done.stdout[-4000:], flush=True)
    if done.returncode != 0:
        raise RuntimeError(f"bench_auth failed: {done.stderr[-2000:]}")
    rows = {}
    for line in done.stdout.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 6 and cells[0].split(":")[0] in ("echo", "agent"):
            rows[cells[0].split(":")[0]] = {
                "rps": float(cells[1].replace(",", "")), "p50": float(cells[2]), "p99": float(cells[3]),
                "ratio": float(cells[5]),
            }
    return rows


def _half_rate_run(single: dict, duration: int, agent_root: Path | None) -> dict:
    """The authorization's latency at half the requests/s one worker reached (`single`), echo alike."""
    connections = max(1, round(single["agent"]["rps"] / 2 * PACE_MS / 1000))
    paced = _auth_run(1, duration, agent_root, connections, PACE_MS)
    paced["connections"] = connections
    return paced


def _locust_run(workers: int, users: int, seconds: int, agent_root: Path | None = None) -> dict:
    import generate

    with tempfile.TemporaryDirectory(prefix="bench-calls-") as folder:
        base = Path(folder)
        redis_server = RedisServer(base / "redis").start()
        postgres = PostgresServer(base / "postgres").start()
        agent = None
        try:
            env = {**os.environ, "RATING_REDIS_URL": redis_server.url, "RATING_DATABASE_URL": postgres.url,
                   "RATING_LOG_LEVEL": "WARNING"}
            data = generate.generate(base / "data", prefix_count=20_000, account_count=200)
            broke = {"accounts": [{"account_tag": f"broke-{i}", "type": "PREPAID", "balance": 0}
                                  for i in range(10)]}
            (base / "broke.json").write_text(json.dumps(broke))
            (data.directory / "broke_accounts.txt").write_text("".join(f"broke-{i}\n" for i in range(10)))
            for argv in (["import", "catalog", str(data.catalog)], ["import", "rates", str(data.deck), "--quiet"],
                         ["import", "catalog", str(base / "broke.json")]):
                subprocess.run([sys.executable, "-m", "agent", *argv], env=env, cwd=ROOT, check=True,
                               capture_output=True, timeout=600)
            agent = AgentProcess(redis_server.url, postgres.url, base, workers=workers, log_level="WARNING")
            if agent_root is not None:
                agent.root = agent_root
            agent.start(timeout=120)
            url = agent.url
            command = [sys.executable, "-m", "locust", "-f", str(ROOT / "loadtest" / "locustfile.py"),
                       "--headless", "-u", str(users), "-r", str(users), "-t", f"{seconds}s", "--host", url,
                       "--csv", str(base / "run"), "--only-summary", "--stop-timeout", "5"]
            print(f"\n$ locust ... -u {users} -t {seconds}s against {workers} workers", flush=True)
            done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=seconds + 120,
                                  env={**os.environ, "RATING_LOAD_DATA": str(data.directory),
                                       "RATING_LOAD_HOLD": "1", "RATING_LOAD_REFUSALS": "0.1"})
            with open(base / "run_stats.csv") as handle:
                rows = {row["Name"]: row for row in csv.DictReader(handle)}
            total = rows["Aggregated"]
            print("\n".join(done.stdout.splitlines()[-25:]), flush=True)
            return {
                "setups": float(rows["begin"]["Requests/s"]),
                "requests": float(total["Requests/s"]),
                "failures": int(total["Failure Count"]),
                "p50": float(rows["authorization"]["50%"]),
                "p99": float(rows["authorization"]["99%"]),
            }
        finally:
            if agent is not None:
                agent.stop()
            postgres.stop()
            redis_server.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--duration", type=int, default=10, help="seconds per measured wrk run")
    parser.add_argument("--locust-users", type=int, default=300,
                        help="simulated callers; each places about one call per 1.1 s (1 s mean hold)")
    parser.add_argument("--locust-seconds", type=int, default=20)
    parser.add_argument("--only-locust", action="store_true", help="skip the wrk measurements")
    parser.add_argument("--only-auth", action="store_true", help="skip the Locust call flow")
    parser.add_argument("--agent-root", type=Path, default=None,
                        help="run the agent of this source tree (e.g. a worktree of an earlier commit)")
    args = parser.parse_args()
    calls = None if args.only_auth else _locust_run(args.workers, args.locust_users, args.locust_seconds,
                                                     args.agent_root)
    if args.only_locust:
        print(f"\nLocust call flow, {args.workers} workers, {args.locust_users} users: {calls['setups']:,.1f} call "
              f"setups/s, authorization p50 {calls['p50']:.0f} ms p99 {calls['p99']:.0f} ms, "
              f"{calls['requests']:,.1f} requests/s, {calls['failures']} failures")
        return 0 if calls["failures"] == 0 else 1
    single = _auth_run(1, args.duration, args.agent_root)
    several = _auth_run(args.workers, args.duration, args.agent_root) if args.workers != 1 else single
    paced = _half_rate_run(single, args.duration, args.agent_root)
    print("\n## Summary\n")
    print("| measurement | requests/s | p50 ms | p99 ms | ratio to echo |")
    print("|---|---:|---:|---:|---:|")
    print(f"| echo baseline (same run as 1 worker) | {single['echo']['rps']:,.0f} | {single['echo']['p50']:.2f} "
          f"| {single['echo']['p99']:.2f} | 1.00 |")
    print(f"| authorization, 1 worker | {single['agent']['rps']:,.0f} | {single['agent']['p50']:.2f} "
          f"| {single['agent']['p99']:.2f} | {single['agent']['ratio']:.2f} |")
    if args.workers != 1:
        print(f"| echo baseline (same run as {args.workers} workers) | {several['echo']['rps']:,.0f} "
              f"| {several['echo']['p50']:.2f} | {several['echo']['p99']:.2f} | 1.00 |")
        print(f"| authorization, {args.workers} workers | {several['agent']['rps']:,.0f} "
              f"| {several['agent']['p50']:.2f} | {several['agent']['p99']:.2f} | {several['agent']['ratio']:.2f} |")
    for name in ("echo", "agent"):
        print(f"| {name}, 1 worker, paced at half the agent's rate above ({paced['connections']} connections, "
              f"one request per {PACE_MS} ms each) | {paced[name]['rps']:,.0f} | {paced[name]['p50']:.2f} "
              f"| {paced[name]['p99']:.2f} | - |")
    if calls is None:
        return 0
    print(f"| Locust call flow, {args.workers} workers, {args.locust_users} users: call setups/s "
          f"| {calls['setups']:,.1f} | {calls['p50']:.0f} | {calls['p99']:.0f} | - |")
    print(f"\nLocust: {calls['requests']:,.1f} requests/s in all, {calls['failures']} failures.")
    return 0 if calls["failures"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
