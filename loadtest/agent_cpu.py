"""The agent's side of a call alone: CPU per call of its workers, housekeeper, Redis and PostgreSQL, for
agents of several source trees in one run (a before/after without Kamailio's share of the noise).

    python loadtest/agent_cpu.py --tree base=/tmp/base-worktree --tree new=. [--rate 200] [--calls 2000]
                                 [--rounds 3] [--redis-tcp]

Each tree gets its own Redis, PostgreSQL and agent (`python -m agent serve` from that tree, its default
workers), the catalog of loadtest/sip_load.py imported. Then, taking turns round by round, an HTTP client in
this process places `--calls` calls at `--rate` calls/s on each: authorization, begin, 100 ms, end, with the
bodies Kamailio's rating.cfg sends. Per call: CPU of each process (/proc, as sip_load.py --breakdown counts
it), Redis commands, write commands (inside functions too), FCALLs and AOF bytes, PostgreSQL commits and WAL
bytes, the authorization's latency as this
client saw it and the agent's mean (its histogram). Median (min-max) of the rounds, and each tree's total
against the first tree's. The client shares the machine: its own CPU is not counted, its latency is.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "loadtest")]

from devstack import AgentProcess, PostgresServer, RedisServer  # noqa: E402

import sip_load  # noqa: E402

HOLD = 0.1  # seconds between a call's begin and its end
# the write commands the library and the writer send (INFO commandstats names)
WRITES = ("hset", "hincrby", "hdel", "sadd", "srem", "zadd", "zrem", "del", "unlink", "expire", "pexpire", "set",
          "xadd", "xack", "xdel", "xautoclaim")


async def place_calls(url: str, rate: float, calls: int, prefix: str) -> list[float]:
    """`calls` calls started at `rate` per second; the authorizations' latencies (s)."""
    import aiohttp

    latencies: list[float] = []
    headers = {"Content-Type": "application/json"}
    async with aiohttp.ClientSession(url, connector=aiohttp.TCPConnector(limit=0)) as session:
        async def post(path: str, body: str) -> None:
            async with session.post(path, data=body, headers=headers) as reply:
                text = await reply.read()
                if reply.status != 200:
                    raise RuntimeError(f"{path}: {reply.status} {text[:200]!r}")

        async def call(number: int) -> None:
            fields = {"transaction_tag": f"{prefix}-{number}@127.0.0.1", "account_tag": sip_load.ACCOUNT,
                      "source": f"sip:{sip_load.ACCOUNT}@127.0.0.1:5062",
                      "destination": f"sip:{sip_load.NUMBER}@127.0.0.1:5060"}
            body = json.dumps(fields)
            started = time.perf_counter()
            await post("/v1/authorization", body)
            latencies.append(time.perf_counter() - started)
            begun = time.time()
            await post("/v1/begin_transaction", body)
            await asyncio.sleep(HOLD)
            await post("/v1/end_transaction", json.dumps(
                {**fields, "timestamp_begin": f"{begun:.6f}", "timestamp_end": f"{time.time():.6f}"}))

        tasks = []
        start = time.perf_counter()
        for number in range(calls):
            delay = start + number / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.ensure_future(call(number)))
        await asyncio.gather(*tasks)
    return latencies


def measure(name: str, stack: dict, args: argparse.Namespace, round_no: int) -> dict:
    redis, postgres, agent = stack["redis"], stack["postgres"], stack["agent"]
    roots = {"agent": agent.process.pid, "redis": redis.process.pid, "postgres": postgres.process.pid}
    redis_before, pg_before = sip_load.redis_info(redis.url), sip_load.postgres_stats(postgres.url)
    hist_before = sip_load.agent_histograms(agent.url)
    cpu_before, load_before = sip_load.cpu_snapshot(roots), os.getloadavg()[0]
    latencies = asyncio.run(place_calls(agent.url, args.rate, args.calls, f"{name}{round_no}"))
    time.sleep(3.0)  # the last outbox batch (--outbox-linger) and the agent's once-a-second metrics flush
    cpu_after = sip_load.cpu_snapshot(roots)
    redis_after, pg_after = sip_load.redis_info(redis.url), sip_load.postgres_stats(postgres.url)
    histogram = sip_load.histogram_summary(hist_before, sip_load.agent_histograms(agent.url)).get("authorization", {})
    cpu: dict[str, float] = {}
    for root, after in cpu_after.items():
        before = cpu_before.get(root, {})
        for pid, (comm, ticks) in after.items():
            part = root
            if root == "agent":
                worker = comm.startswith("rating-worker")
                part = sip_load.AGENT_PARTS.get(comm, "agent workers" if worker else "agent other")
            cpu[part] = cpu.get(part, 0.0) + ticks - before.get(pid, (comm, 0))[1]
    calls = args.calls
    latencies.sort()
    result = {
        "cpu_ms": {part: 1000 * ticks / sip_load.TICKS / calls for part, ticks in cpu.items()},
        "redis commands": (redis_after["commands"] - redis_before["commands"]) / calls,
        # write commands, inside functions too (INFO commandstats counts those one by one)
        "redis write commands": sum(redis_after.get(f"cmd:{name}", 0) - redis_before.get(f"cmd:{name}", 0)
                                    for name in WRITES) / calls,
        "redis FCALLs": (redis_after.get("cmd:fcall", 0) - redis_before.get("cmd:fcall", 0)) / calls,
        "redis AOF bytes": (redis_after["aof_bytes"] - redis_before["aof_bytes"]) / calls,
        "postgres commits": (pg_after["xact_commit"] - pg_before["xact_commit"]) / calls,
        "postgres WAL bytes": (pg_after["wal"] - pg_before["wal"]) / calls,
        "authorization p50 ms (client)": 1000 * latencies[len(latencies) // 2],
        "authorization p99 ms (client)": 1000 * latencies[int(len(latencies) * 0.99)],
        "authorization mean ms (agent)": histogram.get("mean_ms", float("nan")),
        "load average": (load_before + os.getloadavg()[0]) / 2,
    }
    print(f"{name} round {round_no}: total {sum(result['cpu_ms'].values()):.3f} ms/call, load "
          f"{result['load average']:.2f}", flush=True)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tree", action="append", required=True, metavar="NAME=DIR",
                        help="an agent source tree to measure (repeatable; the first is the baseline)")
    parser.add_argument("--rate", type=float, default=200.0, help="calls per second (default 200)")
    parser.add_argument("--calls", type=int, default=2000, help="calls per tree and round (default 2000)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds, the trees taking turns (default 3)")
    parser.add_argument("--redis-tcp", action="store_true", help="the agents reach Redis over TCP, not its Unix socket")
    args = parser.parse_args(argv)
    if args.rate <= 0 or args.calls <= 0 or args.rounds <= 0:
        parser.error("--rate, --calls and --rounds must be positive")
    workdir = Path(tempfile.mkdtemp(prefix="agent-cpu-"))
    stacks: dict[str, dict] = {}
    started: list = []
    try:
        for spec in args.tree:
            name, _, folder = spec.partition("=")
            if not folder or name in stacks:
                parser.error(f"--tree {spec}: expected NAME=DIR with a name of its own")
            redis = RedisServer(workdir / name / "redis").start()
            started.append(redis)
            postgres = PostgresServer(workdir / name / "postgres").start()
            started.append(postgres)
            agent = AgentProcess(redis.url if args.redis_tcp else redis.socket_url, postgres.url, workdir / name,
                                 log_level="WARNING", workers=0)
            agent.root = Path(folder).resolve()
            catalog = workdir / name / "catalog.json"
            catalog.write_text(json.dumps(sip_load.catalog(5070)))
            agent.cli("import", "catalog", str(catalog))
            started.append(agent.start())
            stacks[name] = {"redis": redis, "postgres": postgres, "agent": agent}
        results: dict[str, list[dict]] = {name: [] for name in stacks}
        for round_no in range(1, args.rounds + 1):
            for name, stack in stacks.items():
                results[name].append(measure(name, stack, args, round_no))
    finally:
        for component in reversed(started):
            if isinstance(component, PostgresServer):
                component.stop("immediate")
            else:
                component.stop()

    print(f"\n{args.calls} calls per tree and round at {args.rate:g}/s ({HOLD * 1000:.0f} ms calls), "
          f"{args.rounds} round(s); per call, median (min-max)")
    names = list(results)
    parts = sorted({part for rounds in results.values() for r in rounds for part in r["cpu_ms"]})
    print(f"{'':<32}" + "".join(f"{name:>26}" for name in names))
    for part in parts:
        print(f"{'CPU ms ' + part:<32}" + "".join(
            f"{sip_load.spread([r['cpu_ms'].get(part, 0.0) for r in results[name]], 3):>26}" for name in names))
    totals = {name: [sum(r["cpu_ms"].values()) for r in results[name]] for name in names}
    print(f"{'CPU ms total':<32}" + "".join(f"{sip_load.spread(totals[name], 3):>26}" for name in names))
    for key in [k for k in results[names[0]][0] if k != "cpu_ms"]:
        print(f"{key:<32}" + "".join(f"{sip_load.spread([r[key] for r in results[name]]):>26}" for name in names))
    baseline = statistics.median(totals[names[0]])
    for name in names[1:]:
        print(f"CPU per call {name}/{names[0]} (medians): {statistics.median(totals[name]) / baseline:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
