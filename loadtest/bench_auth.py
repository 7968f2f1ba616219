"""Authorization throughput of one agent process against the do-nothing echo server, in one command.

    python loadtest/bench_auth.py [--prefixes 100000] [--accounts 1000] [--duration 15] [--warmup 5]
                                  [--connections 32] [--threads 1] [--profile DIR] [--keep] [--cluster]

In a temporary folder, on free loopback ports: starts redis-server and PostgreSQL (devstack), generates a
realistic catalog (loadtest/generate.py) and imports it with the agent's CLI, starts ONE agent process
(`python -m agent serve`, RATING_RECORD_RETENTION=120, RATING_LOG_LEVEL=WARNING) and the echo server
(loadtest/echo.py), then runs the same wrk load (loadtest/wrk/authorization.lua: a unique transaction_tag
per request, random accounts and destinations) against the echo and then the agent, a warm-up run first
for each. Prints a Markdown table (requests/s, p50/p99 latency, ratio agent/echo), the CPU each process
used during the measured runs, and the share of authorized answers in a sample sent after the agent's run
(the agent must be rating and reserving, not refusing). With --profile DIR, one more run of the agent
is recorded with py-spy (`pip install py-spy`) and the hottest functions are printed. With --cluster, a
3-master Redis Cluster (no replicas) is started too, with a second agent process against it (its balances
seeded from PostgreSQL at its start), and every round runs the load against it as well: the report adds its
requests/s and the ratio to the agent on one server over TCP (the single server is then reached over TCP
too, as a cluster is).

Every run is bounded in time; every process started here is stopped at the end, also on errors and
Ctrl-C. The temporary folder is removed unless --keep is given.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(ROOT), str(HERE)]

from devstack import PostgresServer, RedisServer, free_port, process_tree, scratch, stop_process  # noqa: E402

import generate  # noqa: E402

WRK_SCRIPT = HERE / "wrk" / "authorization.lua"


# ----------------------------------------------------------------------------------------------- machine

def machine_description() -> str:
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = ""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory = f", {int(line.split()[1]) // 1024 // 1024} GiB RAM"
    except OSError:
        pass
    return (f"{os.cpu_count()} CPUs (nproc {len(os.sched_getaffinity(0))}), {model}{memory}, "
            f"Linux {platform.release()}, Python {platform.python_version()}")


def versions() -> str:
    found = []
    for name in ("aiohttp", "uvloop", "orjson", "redis", "hiredis", "asyncpg"):
        try:
            from importlib.metadata import version

            found.append(f"{name} {version(name)}")
        except Exception:  # noqa: BLE001 - only informative
            pass
    for command in (["redis-server", "--version"], ["wrk", "--version"]):
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=5)
            line = (done.stdout or done.stderr).splitlines()[0]
            found.append(" ".join(line.split()[:3]))
        except Exception:  # noqa: BLE001
            pass
    return ", ".join(found)


def git_revision(folder: Path) -> str:
    """The checkout's commit (and whether files differ from it), for knowing what was measured."""
    try:
        head = subprocess.run(["git", "-C", str(folder), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(folder), "status", "--porcelain", "--", "agent", "cache"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return f"{folder} (not a git checkout)"
    if not head:
        return f"{folder} (not a git checkout)"
    return f"commit {head}" + (" with local changes in agent/ or cache/" if dirty else "")


# ----------------------------------------------------------------------------------------- processes

@dataclass
class HttpServer:
    """A child HTTP server on a free port, ready when GET /status answers 204."""

    name: str
    argv: list[str]
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path = ROOT
    port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 120.0) -> "HttpServer":
        self._log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            [arg.replace("{port}", str(self.port)) for arg in self.argv], cwd=self.cwd,
            env={**os.environ, **self.env}, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True,  # a terminal's Ctrl-C reaches us; we stop it in order
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.url + "/status", timeout=1) as reply:
                    if reply.status == 204:
                        return self
            except OSError:
                time.sleep(0.1)
        raise TimeoutError(f"{self.name} not ready after {timeout}s:\n{self.log_tail()}")

    def log_tail(self, size: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-size:]
        except OSError:
            return ""

    def stop(self) -> None:
        stop_process(self.process)
        self.process = None
        if hasattr(self, "_log"):
            self._log.close()


# ----------------------------------------------------------------------------------------- CPU usage

_TICK = os.sysconf("SC_CLK_TCK")


def _cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICK  # utime + stime


def _machine_busy_seconds() -> float:
    """CPU seconds all processes of the machine spent busy so far (every core, /proc/stat)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, idle, iowait, irq, softirq, steal = (int(v) for v in fields[:8])
    return (user + nice + system + irq + softirq + steal) / _TICK


def named(pids: list[int], prefix: str) -> list[int]:
    """The processes among `pids` whose command name (what `top` shows) starts with `prefix`."""
    found = []
    for pid in pids:
        try:
            if Path(f"/proc/{pid}/comm").read_text().startswith(prefix):
                found.append(pid)
        except OSError:
            pass
    return found


class CpuMeter:
    """CPU seconds used by named groups of processes between `start()` and `stop()`."""

    def __init__(self, groups: dict[str, Callable[[], list[int]]]) -> None:
        self.groups = groups
        self._before: dict[str, dict[int, float]] = {}
        self.used: dict[str, float] = {}
        self.seconds = 0.0

    def _sample(self) -> dict[str, dict[int, float]]:
        found = {name: {pid: _cpu_seconds(pid) for pid in pids()} for name, pids in self.groups.items()}
        found["machine"] = {0: _machine_busy_seconds()}
        return found

    def start(self) -> None:
        self._started = time.monotonic()
        self._before = self._sample()

    def stop(self) -> dict[str, float]:
        after = self._sample()
        self.seconds = time.monotonic() - self._started
        self.used = {
            name: sum(cpu - self._before[name].get(pid, 0.0) for pid, cpu in after[name].items())
            for name in after
        }
        return self.used

    def shares(self) -> dict[str, float]:
        """Per group, the share of one core used (1.0 = one core busy all the time)."""
        return {name: used / self.seconds for name, used in self.used.items()} if self.seconds else {}


# ----------------------------------------------------------------------------------------------- wrk

@dataclass
class WrkResult:
    requests: int
    seconds: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    errors: int
    non_2xx: int
    cpu: dict[str, float] = field(default_factory=dict)

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


def run_wrk(url: str, accounts: Path, destinations: Path, run_id: str, duration: int, connections: int,
            threads: int, meter: CpuMeter | None = None) -> WrkResult:
    argv = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration}s", "--timeout", "5s",
            "-s", str(WRK_SCRIPT), url, "--", str(accounts), str(destinations), run_id]
    if meter is not None:
        meter.start()
    done = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60)
    if meter is not None:
        meter.stop()
    line = next((l for l in done.stdout.splitlines() if l.startswith("WRK_JSON ")), None)
    if done.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    data = json.loads(line[len("WRK_JSON "):])
    errors = sum(data[k] for k in ("errors_connect", "errors_read", "errors_write", "errors_timeout"))
    return WrkResult(
        data["requests"], data["duration_us"] / 1e6, data["p50_us"] / 1000, data["p90_us"] / 1000,
        data["p99_us"] / 1000, data["max_us"] / 1000, errors, data["errors_status"],
        meter.shares() if meter is not None else {},
    )


# -------------------------------------------------------------------------------------------- sample

def authorization_body(run_id: str, n: int, account: str, destination: str) -> bytes:
    """The body the wrk script sends (same fields, same shape)."""
    return json.dumps({
        "transaction_tag": f"{run_id}-{n}", "account_tag": account,
        "source": f"sip:{account}@127.0.0.1", "destination": destination,
    }, separators=(",", ":")).encode()


async def _sample(url: str, accounts: list[str], destinations: list[str], count: int, run_id: str,
                  concurrency: int = 16, timeout: float = 60.0) -> Counter:
    from aiohttp import ClientSession, ClientTimeout

    rng = random.Random(42)
    outcomes: Counter = Counter()
    queue = list(range(count))

    async def worker(session) -> None:
        while queue:
            n = queue.pop()
            body = authorization_body(run_id, n, rng.choice(accounts), rng.choice(destinations))
            async with session.post(url + "/v1/authorization", data=body,
                                    headers={"Content-Type": "application/json"}) as reply:
                if reply.status != 200:
                    outcomes[f"HTTP {reply.status}"] += 1
                    continue
                answer = await reply.json()
                outcomes["authorized" if answer.get("authorized") else
                         f"refused: {answer.get('unauthorized_reason')}"] += 1

    async with ClientSession(timeout=ClientTimeout(total=10)) as session:
        await asyncio.wait_for(asyncio.gather(*(worker(session) for _ in range(concurrency))), timeout)
    return outcomes


def sample_authorizations(url: str, accounts: Path, destinations: Path, count: int, run_id: str) -> Counter:
    return asyncio.run(_sample(url, accounts.read_text().split(), destinations.read_text().split(), count,
                               run_id))


# ------------------------------------------------------------------------------------------ py-spy

# Where an agent's CPU goes, by the first of these frames found in a sampled stack (checked in order).
PROFILE_CATEGORIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("outbox writer: Redis stream -> PostgreSQL (same process)", ("OutboxWriter.",)),
    ("call expiry loop", ("expire_calls",)),
    ("catalog listener / reload", ("CatalogKeeper.",)),
    ("redis-py: pipeline, encoding, socket writes, reply parsing",
     ("AutoPipeline._send", "AutoPipeline._flush", "/redis/")),
    ("pricing kernel: plan_call (matches, routing, Fraction)", ("plan_call",)),
    ("request validation (orjson.loads + coercions)", ("validate (", "parse_body")),
    ("FCALL arguments: party_json, meta_json, orjson.dumps", ("party_json", "meta_json", "fcall (")),
    ("response: json_response + orjson.dumps", ("json_response",)),
    ("rest of Transactions.authorization / _authorize", ("Transactions.",)),
    ("aiohttp: request handling, response writing", ("aiohttp/web_", "aiohttp/http_", "aiohttp/helpers")),
    ("asyncio plumbing (tasks, futures, timeouts)", ("asyncio/",)),
)


def profile_agent(pid: int, out_dir: Path, url: str, accounts: Path, destinations: Path, run_id: str,
                  duration: int, connections: int, threads: int, top: int = 25) -> tuple[WrkResult, str]:
    """One more wrk run with py-spy recording the agent; returns the run and a summary of the hot spots."""
    spy = shutil.which("py-spy")
    if spy is None:
        raise RuntimeError("py-spy is not installed (pip install py-spy)")
    out_dir.mkdir(parents=True, exist_ok=True)
    raw = out_dir / "agent.collapsed.txt"
    recorder = subprocess.Popen(
        [spy, "record", "--pid", str(pid), "--duration", str(duration), "--rate", "200", "--format", "raw",
         "--output", str(raw), "--subprocesses"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
    )
    try:
        time.sleep(1.0)  # let py-spy attach before the load starts
        result = run_wrk(url, accounts, destinations, run_id, duration, connections, threads)
        try:
            recorder.wait(30)
        except subprocess.TimeoutExpired:
            pass
    finally:
        stop_process(recorder, 10)
    if not raw.exists():
        raise RuntimeError(f"py-spy wrote nothing: {recorder.stderr.read().decode(errors='replace')}")
    return result, summarize_collapsed(raw, top)


def _stacks(path: Path) -> Iterator[tuple[list[str], int]]:
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            yield stack.split(";"), int(count)


def summarize_collapsed(path: Path, top: int = 25) -> str:
    """Shares of the samples by category, and per function (self and inclusive), as Markdown tables."""
    own: Counter = Counter()
    inclusive: Counter = Counter()
    categories: Counter = Counter()
    total = 0
    for frames, n in _stacks(path):
        total += n
        short = [_short(frame) for frame in frames]
        own[short[-1]] += n
        for frame in set(short):
            inclusive[frame] += n
        joined = ";".join(frames)
        for name, needles in PROFILE_CATEGORIES:
            if any(needle in joined for needle in needles):
                categories[name] += n
                break
        else:
            categories["event loop itself (uvloop: polling, socket reads, callbacks)"
                        if len(frames) <= 8 else "other"] += n
    if not total:
        return f"py-spy: no samples in {path}"
    lines = [f"py-spy: {total:,} samples of the agent's threads while busy ({path})", "",
             "| share of busy samples | where |", "|---:|---|"]
    lines += [f"| {100 * n / total:.1f}% | {name} |" for name, n in categories.most_common()]
    lines += ["", "| self % | function |", "|---:|---|"]
    lines += [f"| {100 * n / total:.1f} | `{name}` |" for name, n in own.most_common(top)]
    lines += ["", "| inclusive % | function |", "|---:|---|"]
    lines += [f"| {100 * n / total:.1f} | `{name}` |" for name, n in inclusive.most_common(top)
              if n < total * 0.999]
    return "\n".join(lines)


def _short(frame: str) -> str:
    """`func (path/to/module.py:123)` -> `func (package/module.py)`: lines merged so a function counts once."""
    name, _, where = frame.partition(" (")
    file = where.rstrip(")").rsplit(":", 1)[0]
    parts = file.split("/")
    if "site-packages" in parts:
        file = "/".join(parts[parts.index("site-packages") + 1:])
    elif len(parts) > 1 and parts[-2] in ("agent", "cache", "asyncio", "pricing", "store", "http"):
        file = "/".join(parts[-2:])
    else:
        file = parts[-1]
    return f"{name} ({file})" if file else name


# ------------------------------------------------------------------------------------------ the stack

def run_cli(redis_url: str, database_url: str, *argv: str, timeout: float = 1800) -> tuple[str, float]:
    env = {**os.environ, "RATING_REDIS_URL": redis_url, "RATING_DATABASE_URL": database_url,
           "RATING_LOG_LEVEL": "WARNING"}
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "agent", *argv], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"agent {' '.join(argv)} failed:\n{done.stdout}\n{done.stderr}")
    return done.stdout.strip(), seconds


def start_stack(workdir: Path, stops: list[Callable[[], None]], log: Callable[[str], None], prefixes: int,
                accounts: int, carriers: int = 10, destinations: int = 10_000, seed: int = 1,
                ) -> tuple[RedisServer, PostgresServer, generate.Generated, dict[str, float]]:
    """Redis and PostgreSQL in `workdir` (their stops added to `stops`) holding a generated catalog, imported
    with the agent's CLI; also the seconds each import took."""
    redis = RedisServer(workdir / "redis")
    stops.append(redis.stop)
    redis.start()
    postgres = PostgresServer(workdir / "postgres")
    stops.append(lambda: postgres.stop("immediate"))
    postgres.start()
    log(f"redis on {redis.port}, PostgreSQL on {postgres.port}; generating the catalog")
    gen = generate.generate(workdir / "data", prefixes, accounts, carriers, destination_count=destinations,
                            seed=seed)
    log(f"{gen.prefixes:,} prefixes / {gen.rate_rows:,} rows generated in {gen.seconds:.1f}s; importing")
    imports = {}
    out, imports["catalog"] = run_cli(redis.url, postgres.url, "import", "catalog", str(gen.catalog))
    log(f"catalog: {out} ({imports['catalog']:.1f}s)")
    out, imports["rates"] = run_cli(redis.url, postgres.url, "import", "rates", str(gen.deck), "--quiet")
    log(f"rates: {out} ({imports['rates']:.1f}s)")
    return redis, postgres, gen, imports


def postgres_pids(server: PostgresServer) -> list[int]:
    try:
        main = int((server.directory / "pgdata" / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return []
    return process_tree(main)


def redis_info(url: str) -> dict:
    import redis

    import cache

    if url.startswith("redis+cluster://"):
        host, _, port = url.split("://", 1)[1].split(",")[0].rpartition(":")
        client = redis.RedisCluster(host=host, port=int(port), decode_responses=True, socket_timeout=5)
    else:
        client = redis.Redis.from_url(url, decode_responses=True, socket_timeout=5)
    try:
        stats = client.info("commandstats").get("cmdstat_fcall", {})
        return {
            "outbox_backlog": sum(client.xlen(group.outbox) for group in cache.GROUPS),
            "open_calls": sum(client.zcard(group.deadlines) for group in cache.GROUPS),
            "used_memory_mb": client.info("memory").get("used_memory", 0) / 2**20,
            "keys": client.dbsize(),
            "fcall_usec": float(stats.get("usec_per_call", 0.0)),
            "fcall_calls": int(stats.get("calls", 0)),
        }
    finally:
        client.close()


def redis_batches(url: str) -> dict:
    """Commands per pipelined Redis batch and the batch round trip, averaged since the agent started."""
    with urllib.request.urlopen(url + "/metrics", timeout=10) as reply:
        text = reply.read().decode()
    found = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name in ("rating_redis_batch_commands_sum", "rating_redis_batch_commands_count",
                    "rating_redis_round_trip_seconds_sum"):
            found[name] = float(value)
    batches = found.get("rating_redis_batch_commands_count", 0.0)
    return {
        "commands_per_batch": found.get("rating_redis_batch_commands_sum", 0.0) / batches if batches else 0.0,
        "round_trip_ms": 1000 * found.get("rating_redis_round_trip_seconds_sum", 0.0) / batches if batches else 0.0,
    }


def postgres_query(server: PostgresServer, sql: str) -> str:
    psql = shutil.which("psql") or next(
        (str(b / "psql") for b in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)), "psql")
    done = subprocess.run([psql, "-h", "127.0.0.1", "-p", str(server.port), "-U", "postgres", "-d",
                           server.database, "-tAc", sql], capture_output=True, text=True, timeout=60)
    return done.stdout.strip() or done.stderr.strip()


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else 0.0


def _typical(runs: list[WrkResult]) -> WrkResult:
    """The run with the median throughput (its latencies belong to it)."""
    ordered = sorted(runs, key=lambda run: run.rps)
    return ordered[(len(ordered) - 1) // 2]


def _processes(workers: int) -> str:
    return "1 process" if workers == 1 else f"{workers or 'one per core'} worker processes"


def _per_request(run: WrkResult, group: str) -> float:
    """CPU microseconds a process group spent per request served (less sensitive to a busy machine)."""
    return run.cpu.get(group, 0.0) / run.rps * 1e6 if run.rps else 0.0


def report(args, gen, imports: dict, runs: dict[str, list[WrkResult]], sample: Counter, after: dict,
           records: str, agent_ready: float) -> str:
    echo, agent = _typical(runs["echo"]), _typical(runs["agent"])
    ratios = [a.rps / e.rps for e, a in zip(runs["echo"], runs["agent"]) if e.rps]
    ratio = _median(ratios)
    total = sum(sample.values())
    authorized = sample.get("authorized", 0)
    rounds = len(runs["agent"])
    lines = [
        f"Machine: {machine_description()}",
        f"Software: {versions()}",
        f"Agent: {git_revision(args.agent_root)}, RATING_WORKERS={args.workers}, Redis over"
        f" {'TCP (127.0.0.1)' if args.redis_tcp else 'its Unix socket'}",
        f"Load: `wrk -t{args.threads} -c{args.connections} -d{args.duration}s --timeout 5s`"
        f" (loadtest/wrk/authorization.lua), {rounds} round(s) echo then agent after one {args.warmup}s"
        f" warm-up each; POST /v1/authorization with a unique transaction_tag per request, a random account"
        f" of {gen.account_count:,} and a random destination of {args.destinations:,}",
        f"Catalog: {gen.prefixes:,} prefixes, {gen.rate_rows:,} rate rows, {args.carriers} carriers,"
        f" {gen.account_count:,} accounts (CLI import: catalog {imports['catalog']:.1f}s,"
        f" rates {imports['rates']:.1f}s; agent ready {agent_ready:.1f}s after its start)",
    ]
    if args.agent_root.resolve() != ROOT or args.agent_env:
        lines.append(f"Agent under test: `{args.agent_root}` with {' '.join(args.agent_env) or 'no extra variables'}")
    lines += [
        "",
        "| server | requests/s | p50 ms | p99 ms | errors | ratio to echo |",
        "|---|---:|---:|---:|---:|---:|",
        f"| echo: aiohttp + uvloop + orjson, fixed answer | {echo.rps:,.0f} | {echo.p50_ms:.2f} |"
        f" {echo.p99_ms:.2f} | {echo.errors + echo.non_2xx} | 1.00 |",
        f"| agent: {_processes(args.workers)} (rating, one FCALL each) | {agent.rps:,.0f} | {agent.p50_ms:.2f} |"
        f" {agent.p99_ms:.2f} | {agent.errors + agent.non_2xx} | {ratio:.2f} |",
        "",
        "Median round shown; ratio = median of the per-round ratios. Errors = socket errors + non-2xx.",
        "",
        "| round | echo req/s | agent req/s | ratio | CPU µs/request echo / agent (workers + housekeeper) / redis |"
        " CPU (cores) echo run: echo / machine | CPU agent run: agent (workers + housekeeper) / redis / PostgreSQL"
        " / wrk / machine |",
        "|---:|---:|---:|---:|---|---|---|",
    ]
    for n, (e, a) in enumerate(zip(runs["echo"], runs["agent"]), 1):
        ec, ac = e.cpu, a.cpu
        lines.append(
            f"| {n} | {e.rps:,.0f} | {a.rps:,.0f} | {a.rps / e.rps if e.rps else 0:.2f} |"
            f" {_per_request(e, 'server'):.0f} / {_per_request(a, 'server'):.0f} ({_per_request(a, 'workers'):.0f}"
            f" + {_per_request(a, 'housekeeper'):.0f}) / {_per_request(a, 'redis'):.0f} |"
            f" {ec.get('server', 0):.2f} / {ec.get('machine', 0):.2f} |"
            f" {ac.get('server', 0):.2f} ({ac.get('workers', 0):.2f} + {ac.get('housekeeper', 0):.2f}) /"
            f" {ac.get('redis', 0):.2f} / {ac.get('postgres', 0):.2f} /"
            f" {ac.get('wrk', 0):.2f} / {ac.get('machine', 0):.2f} |"
        )
    if "cluster" in runs:
        cluster = _typical(runs["cluster"])
        versus = _median([c.rps / a.rps for a, c in zip(runs["agent"], runs["cluster"]) if a.rps])
        lines += [
            "",
            "| Redis (agent: same processes) | requests/s | p50 ms | p99 ms | errors | ratio to one server |",
            "|---|---:|---:|---:|---:|---:|",
            f"| one redis-server over TCP | {agent.rps:,.0f} | {agent.p50_ms:.2f} | {agent.p99_ms:.2f} |"
            f" {agent.errors + agent.non_2xx} | 1.00 |",
            f"| Redis Cluster, 3 masters, no replicas | {cluster.rps:,.0f} | {cluster.p50_ms:.2f} |"
            f" {cluster.p99_ms:.2f} | {cluster.errors + cluster.non_2xx} | {versus:.2f} |",
            "",
            "| round | one server req/s | cluster req/s | ratio | CPU µs/request one server / cluster: agent, redis |",
            "|---:|---:|---:|---:|---|",
        ]
        for n, (a, c) in enumerate(zip(runs["agent"], runs["cluster"]), 1):
            lines.append(f"| {n} | {a.rps:,.0f} | {c.rps:,.0f} | {c.rps / a.rps if a.rps else 0:.2f} |"
                         f" {_per_request(a, 'server'):.0f}, {_per_request(a, 'redis'):.0f} /"
                         f" {_per_request(c, 'server'):.0f}, {_per_request(c, 'redis'):.0f} |")
    refusals = ", ".join(f"{k}: {v}" for k, v in sample.most_common() if k != "authorized")
    lines += [
        "",
        "CPU in cores (1.00 = one core busy for the whole run); `machine` is every process of the machine,",
        "others' included: more than the listed ones means something else was running. CPU µs/request is",
        "the process' CPU time divided by the requests it answered: the cost of one request.",
        "",
        f"Sample of {total:,} authorizations sent after the runs (same bodies, 16 concurrent):"
        f" **{100 * authorized / total if total else 0:.1f}% authorized**" + (f" ({refusals})" if refusals else ""),
        f"Redis: FCALL {after['fcall_usec']:.0f} us per call on average (server side, {after['fcall_calls']:,}"
        f" calls), {after['used_memory_mb']:.0f} MB in {after['keys']:,} keys, outbox backlog"
        f" {after['outbox_backlog']:,}, {after['open_calls']:,} open calls (they reach the outbox when they end);"
        f" PostgreSQL: {records} call records written by the outbox writer.",
        f"Agent to Redis: {after['commands_per_batch']:.1f} commands per pipelined write on average, each batch"
        f" answered in {after['round_trip_ms']:.2f} ms (since the agent started).",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prefixes", type=int, default=100_000)
    parser.add_argument("--accounts", type=int, default=1_000)
    parser.add_argument("--carriers", type=int, default=10)
    parser.add_argument("--destinations", type=int, default=10_000)
    parser.add_argument("--duration", type=int, default=15, help="seconds of each measured run (max 120)")
    parser.add_argument("--warmup", type=int, default=5, help="seconds of each warm-up run (max 60)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="measured runs per server, alternating echo and agent (max 10); medians reported")
    parser.add_argument("--workers", type=int, default=1,
                        help="the agent's RATING_WORKERS (default 1: one process, as the echo)")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--sample", type=int, default=1000, help="authorizations sent to check the answers")
    parser.add_argument("--authorization-ttl", type=int, default=3600,
                        help="the agent's RATING_AUTHORIZATION_TTL: the default keeps the reservations of earlier"
                             " runs from expiring during later ones (expiry is a cost of its own; a TTL"
                             " shorter than the runs measures it too)")
    parser.add_argument("--profile", type=Path, metavar="DIR",
                        help="also record the agent under load with py-spy into DIR and print hot spots")
    parser.add_argument("--agent-root", type=Path, default=ROOT,
                        help="run `python -m agent` from this checkout (A/B against a branch); default: this one")
    parser.add_argument("--agent-env", action="append", default=[], metavar="NAME=VALUE",
                        help="an extra environment variable for the agent (repeatable)")
    parser.add_argument("--redis-tcp", action="store_true",
                        help="agent to Redis over TCP on 127.0.0.1 instead of the Unix socket (same host)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (logs, data)")
    parser.add_argument("--cluster", action="store_true",
                        help="also run every round against a second agent on a 3-master Redis Cluster")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    args.duration = max(1, min(args.duration, 120))
    args.warmup = max(0, min(args.warmup, 60))
    args.rounds = max(1, min(args.rounds, 10))
    if shutil.which("wrk") is None:
        print("wrk is not installed (apt-get install wrk)", file=sys.stderr)
        return 2

    status = 0
    try:
        with scratch("bench-auth-", args.keep) as (workdir, stops):
            log = lambda text: print(f"[bench] {text}", file=sys.stderr, flush=True)  # noqa: E731
            log(f"working in {workdir}")
            redis, postgres, gen, imports = start_stack(workdir, stops, log, args.prefixes, args.accounts,
                                                        args.carriers, args.destinations, args.seed)

            if args.cluster:
                args.redis_tcp = True  # a cluster is reached over TCP: the single server too, for the ratio
            agent = HttpServer("agent", [sys.executable, "-m", "agent", "serve"], workdir / "agent.log", env={
                "RATING_HOST": "127.0.0.1", "RATING_REDIS_URL": redis.url if args.redis_tcp else redis.socket_url,
                "RATING_DATABASE_URL": postgres.url,
                "RATING_RECORD_RETENTION": "120", "RATING_LOG_LEVEL": "WARNING", "RATING_WORKERS": str(args.workers),
                "RATING_AUTHORIZATION_TTL": str(args.authorization_ttl),
                **dict(item.split("=", 1) for item in args.agent_env),
            }, cwd=args.agent_root)
            agent.env["RATING_PORT"] = str(agent.port)
            stops.append(agent.stop)
            started = time.perf_counter()
            agent.start()
            agent_ready = time.perf_counter() - started
            cluster_servers = clustered = None
            if args.cluster:
                from tests.conftest import RedisClusterServers

                cluster_servers = RedisClusterServers(workdir / "cluster", masters=3, replicas=0)
                stops.append(cluster_servers.stop)
                cluster_servers.start()
                clustered = HttpServer("cluster", [sys.executable, "-m", "agent", "serve"],
                                       workdir / "agent-cluster.log",
                                       env={**agent.env, "RATING_REDIS_URL": cluster_servers.url,
                                            "RATING_DECK_DIR": str(workdir / "decks-cluster")},
                                       cwd=args.agent_root)
                clustered.env["RATING_PORT"] = str(clustered.port)
                stops.append(clustered.stop)
                clustered.start()
                log(f"cluster agent (pid {clustered.process.pid}) on {clustered.port}, Redis Cluster on"
                    f" {cluster_servers.url}")
            echo = HttpServer("echo", [sys.executable, str(HERE / "echo.py"), "--port", "{port}"],
                              workdir / "echo.log")
            stops.append(echo.stop)
            echo.start()
            log(f"agent (pid {agent.process.pid}) ready in {agent_ready:.1f}s on {agent.port}, "
                f"echo on {echo.port}")

            servers = {"echo": echo, "agent": agent}
            if clustered is not None:
                servers["cluster"] = clustered
            run_id = f"b{int(time.time())}"
            if args.warmup:
                for name, server in servers.items():
                    log(f"{name}: warm-up {args.warmup}s")
                    run_wrk(server.url, gen.accounts, gen.destinations, f"{run_id}w{name}", args.warmup,
                            args.connections, args.threads)
            runs: dict[str, list[WrkResult]] = {name: [] for name in servers}
            for round_number in range(1, args.rounds + 1):
                for name, server in servers.items():
                    meter = CpuMeter({
                        "server": lambda s=server: process_tree(s.process.pid),
                        "workers": lambda s=server: named(process_tree(s.process.pid), "rating-worker"),
                        "housekeeper": lambda s=server: named(process_tree(s.process.pid), "rating-keeper"),
                        "redis": lambda n=name: (
                            [s.process.pid for s in cluster_servers.servers if s.process] if n == "cluster"
                            else [redis.process.pid] if redis.process else []),
                        "postgres": lambda: postgres_pids(postgres),
                    })
                    children_before = os.times()
                    result = run_wrk(server.url, gen.accounts, gen.destinations, f"{run_id}r{round_number}{name}",
                                     args.duration, args.connections, args.threads, meter)
                    children_after = os.times()
                    result.cpu["wrk"] = ((children_after.children_user + children_after.children_system)
                                         - (children_before.children_user + children_before.children_system)
                                         ) / meter.seconds
                    runs[name].append(result)
                    log(f"round {round_number} {name}: {result.rps:,.0f} requests/s, p50 {result.p50_ms:.2f} ms,"
                        f" p99 {result.p99_ms:.2f} ms, machine busy {result.cpu.get('machine', 0):.2f} cores")
                    if server.process.poll() is not None:
                        raise RuntimeError(f"the agent died:\n{server.log_tail()}")

            log(f"sampling {args.sample} authorizations")
            sample = sample_authorizations(agent.url, gen.accounts, gen.destinations, args.sample, f"{run_id}s")
            time.sleep(2.0)  # let the outbox writer catch up
            after = redis_info(redis.url)
            time.sleep(1.5)  # every worker's metrics flushed
            after.update(redis_batches(agent.url))
            records = postgres_query(postgres, "SELECT count(*) FROM transactions")
            print(report(args, gen, imports, runs, sample, after, records, agent_ready), flush=True)

            if args.profile:
                log(f"profiling the agent for {args.duration}s with py-spy into {args.profile}")
                profiled, summary = profile_agent(agent.process.pid, args.profile, agent.url, gen.accounts,
                                                  gen.destinations, f"{run_id}p", args.duration,
                                                  args.connections, args.threads)
                print(f"\nProfile run (py-spy attached, 200 samples/s): {profiled.rps:,.0f} requests/s\n")
                print(summary, flush=True)
            agent_log = agent.log_tail()
            if agent_log.strip():
                print(f"\n[bench] agent log (tail):\n{agent_log[-1500:]}", file=sys.stderr)
    except KeyboardInterrupt:
        print("\n[bench] interrupted; stopping everything", file=sys.stderr)
        status = 130
    return status


if __name__ == "__main__":
    sys.exit(main())
