"""Authorization latency while the catalog changes: account and rate mutations, a GraphQL flood, deck swaps
and a 1,000,000-row deck upload, each compared with a quiet phase of the same round.

    python loadtest/bench_deck.py [--prefixes 1000000] [--rounds 3] [--rate 200] [--phase-seconds 15]
                                  [--workers 2] [--upload-rows 1000000] [--data DIR] [--json FILE] [--keep]
                                  [--phases accounts,rates,flood,swap,upload,ryw] [--pin-client CPU]

(~35 min on 2 cores with the defaults; `--prefixes 20000 --upload-rows 20000 --rounds 1 --phase-seconds 3
--tries 5` checks the script in ~2 min.)

In a temporary folder, on free loopback ports: starts redis-server and PostgreSQL (devstack), generates a
realistic catalog and deck with loadtest/generate.py (PREFIXES prefixes, ~2 rates each over 10 carriers;
`--data DIR` keeps and reuses it), gives carrier01 a full A-Z deck (one rate per prefix, as a wholesale
carrier sends it) plus a few probe rates and a small `swap01` carrier deck, imports everything with the CLI
(`python -m agent import catalog|rates`, timed) and starts one agent (`python -m agent serve`, WORKERS
workers, a manager, a housekeeper) with a management token. Then, per round, with a steady open-loop load
of RATE authorizations/s (aiohttp, 8 client sessions, each authorization followed by a rollback; latency
of every authorization kept) sent by a load process of its own (this script, own event loop and sessions,
so the management work below does not delay it), these phases run one after the other (a 2 s gap between
them):

1. quiet: the baseline;
2. accounts: an `updateAccount` mutation (GraphQL, agent port) every 100 ms;
3. rates: an `updatePricelistRate` mutation every 100 ms;
4. flood: 4 concurrent senders of a 5,000-alias document and a 5,000 x `__typename` document, repeatedly;
5. swap: small replacement decks (SWAP_ROWS rows, `replace=true`) uploaded back to back through the agent
   port for at least PHASE_SECONDS (at least one), each verified by a probe authorization;
6. upload: a UPLOAD_ROWS-row deck (carrier01 of pricelist `standard`, `replace=true`, every price
   changed) through the agent port: upload start -> answer, the import (until the manager starts the deck
   build) and build (the build process's life) times, and whether the first authorizations after the
   answer (new connections, so any worker) are rated with the new price;
7. ryw: read-your-writes, under the same load: TRIES x (createAccount, then at once an authorization of
   that account: NOT_FOUND counted) and TRIES x (updatePricelistRate, then at once an authorization that
   must be rated with the new price: stale answers counted), each request on a new connection.

The agent runs from an export of HEAD (`git archive`, so edits in the working tree during the run do not
change what is measured; `--agent-root .` runs the working tree). Client-side latencies include the load
process's own delays on a loaded machine (reported: how late its scheduler fired, and how long its event
loop stalled, looked at every 5 ms: an authorization in flight during a stall of more than 2 ms is left out
of "p99 / max without them", the agent's and the host's share; the "client stalls" are the load process's
loop, not that of the process sending the changes); the workers' histograms (`/metrics`, scraped
around each phase) give a server-side view: authorizations >= 50 ms and the p99 bucket (timed from the
handler), how often the workers' event loops were 20 or 50 ms late (looked at every 10 ms: a request
arriving then waits as long before its handler) and Redis' p99 bucket. `--pin-client CPU` (a diagnostic,
not the default) puts this client, its load process and its sampler on one CPU and the agent, PostgreSQL
and Redis on the others. A sampler process records the CPU time of every process (each worker, manager,
deck builders, housekeeper, supervisor, PostgreSQL, Redis, this client with its load process) and of the
whole machine every 100 ms: each
phase reports the cores each used, what the rest of the machine used (other people's work), and the
cores used in the 0.5 s before the slowest authorization of the phase. Targets (the issue's): max < 50
ms, p99 <= 2 x the round's quiet p99, no errors. Everything is bounded in time; every process started
here is stopped at the end (also on errors and Ctrl-C); the folder is removed unless --keep is given.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import csv
import ctypes
import importlib.util
import json
import math
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from devstack import (  # noqa: E402
    _PR_SET_PDEATHSIG, AgentProcess, PostgresServer, RedisServer, _die_with_parent, process_tree, scratch,
    stop_process)

TOKEN = "bench-token"
PRICELIST = "standard"
BIG_CARRIER = "carrier01"   # gets a full A-Z deck; its replacement is the big upload
RATE_CARRIER = "carrier02"  # carries the probe rate of the rate read-your-writes test
SWAP_CARRIER = "swap01"     # a small carrier deck, swapped in phase 5
PROBE_BALANCE = 120_000     # units = (balance // rate) * 60 with the probe rates below (all under the cap)
PROBE_RATES = (2400, 1000, 1500, 2000, 3000)  # [0] initially, then cycling through the others
PROBES = {  # account -> (carrier, probe prefix); prefixes under 999, which no country code uses
    "probe-big": (BIG_CARRIER, "9990001"),
    "probe-swap": (SWAP_CARRIER, "9990002"),
    "probe-rate": (RATE_CARRIER, "9990003"),
}
PHASES = ("quiet", "accounts", "rates", "flood", "swap", "upload", "ryw")
GROUPS = ("worker-0", "worker-1", "manager", "builder", "housekeeper", "supervisor", "postgres", "redis",
          "client", "sampler")
_TICK = os.sysconf("SC_CLK_TCK")
CLIENT_LAG = 0.002  # seconds: the load process's loop this late counts as a stall of the client (Load.watch)


def probe_rate(index: int) -> int:
    return PROBE_RATES[0] if index == 0 else PROBE_RATES[1 + (index - 1) % (len(PROBE_RATES) - 1)]


def probe_units(rate: int) -> int:
    return (PROBE_BALANCE // rate) * 60


def probe_destination(account: str) -> str:
    return f"sip:{PROBES[account][1]}4455667@127.0.0.1:5060"


def percentile(values: list[float], share: float) -> float:
    """Nearest rank."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, math.ceil(share * len(ordered)) - 1))]


# ------------------------------------------------------------------------------------------ CPU sampler

def _stat(pid: int) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _own(fields: list[str]) -> float:
    return (int(fields[11]) + int(fields[12])) / _TICK  # utime + stime


def _reaped(fields: list[str]) -> float:
    return (int(fields[13]) + int(fields[14])) / _TICK  # cutime + cstime: children waited for


def _tree(pid: int) -> float:
    """CPU of `pid` and of all its descendants, alive or waited for."""
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        fields = _stat(current)
        if fields is not None:
            total += _own(fields) + _reaped(fields)
            todo.extend(_children(current))
    return total


def sample_once(roots: dict[str, int], boot_offset: float) -> dict:
    """Cumulative CPU seconds per group; deck builders (children of the manager or the housekeeper) listed."""
    cpu = dict.fromkeys(GROUPS, 0.0)
    builders = []
    agent = roots["agent"]
    fields = _stat(agent)
    if fields is not None:
        cpu["supervisor"] = _own(fields)
        for child in _children(agent):
            name, child_fields = _comm(child), _stat(child)
            if child_fields is None:
                continue
            if name.startswith("rating-worker-"):
                cpu[name[len("rating-"):]] = cpu.get(name[len("rating-"):], 0.0) + _own(child_fields)
                continue
            group = {"rating-manager": "manager", "rating-keeper": "housekeeper"}.get(name, "builder")
            cpu[group] += _own(child_fields)
            cpu["builder"] += _reaped(child_fields)  # finished deck builders
            for grandchild in _children(child):
                cpu["builder"] += _tree(grandchild)
                started = _stat(grandchild)
                if started is not None:
                    builders.append([grandchild, group, boot_offset + int(started[19]) / _TICK])
    cpu["postgres"] = _tree(roots["postgres"])
    fields = _stat(roots["redis"])
    cpu["redis"] = _own(fields) if fields else 0.0
    # The client: this script, its load process (a new one each round) and any other child of it that is not
    # a server or the sampler, alive or waited for (a finished round's load process moves to the reaped part).
    fields = _stat(roots["client"])
    if fields is not None:
        cpu["client"] = _own(fields) + _reaped(fields)
        servers = {roots["agent"], roots["postgres"], roots["redis"], os.getpid()}
        cpu["client"] += sum(_tree(child) for child in _children(roots["client"]) if child not in servers)
    fields = _stat(os.getpid())
    cpu["sampler"] = _own(fields) if fields else 0.0
    values = Path("/proc/stat").read_text().splitlines()[0].split()[1:9]
    user, nice, system, idle, iowait, irq, softirq, steal = (int(v) for v in values)
    machine = (user + nice + system + irq + softirq + steal) / _TICK
    load = float(Path("/proc/loadavg").read_text().split()[0])
    return {"t": time.time(), "cpu": cpu, "machine": machine, "load": load, "builders": builders}


def run_sampler(out: str, roots: dict[str, int], interval: float, until: float) -> int:
    """The sampler process: a JSON line per sample until `until`, or until its parent is gone."""
    parent = os.getppid()
    with open(out, "a", buffering=1) as handle:
        while time.time() < until and os.getppid() == parent:
            uptime = float(Path("/proc/uptime").read_text().split()[0])
            handle.write(json.dumps(sample_once(roots, time.time() - uptime)) + "\n")
            time.sleep(interval)
    return 0


class Samples:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.rows: list[dict] = []
        self._read = 0  # bytes of whole lines parsed so far

    def reload(self) -> None:
        """Parses the lines written since the last reload: this runs on the client's event loop after every
        swap, and parsing the whole file again (thousands of lines) stalled that loop for ~30 ms each time."""
        with self.path.open("rb") as handle:
            handle.seek(self._read)
            text = handle.read()
        complete = text[:text.rfind(b"\n") + 1]  # a line being written is left for the next reload
        self._read += len(complete)
        for line in complete.splitlines():
            self.rows.append(json.loads(line))

    def _at(self, moment: float) -> dict | None:
        best = None
        for row in self.rows:
            if row["t"] <= moment:
                best = row
            else:
                break
        return best

    def cores(self, start: float, end: float) -> dict[str, float]:
        """Cores used per group between two instants (wall clock), plus `others` (the rest of the machine)."""
        first, last = self._at(start), self._at(end)
        if first is None or last is None or last["t"] <= first["t"]:
            return {}
        seconds = last["t"] - first["t"]
        used = {g: max(0.0, last["cpu"].get(g, 0.0) - first["cpu"].get(g, 0.0)) / seconds for g in GROUPS}
        used["machine"] = (last["machine"] - first["machine"]) / seconds
        used["others"] = max(0.0, used["machine"] - sum(used[g] for g in GROUPS))
        return used

    def load(self, start: float, end: float) -> float:
        values = [row["load"] for row in self.rows if start <= row["t"] <= end]
        return max(values) if values else float("nan")

    def builders(self, start: float, end: float) -> list[tuple[int, str, float, float]]:
        """Deck builder processes seen between two instants: (pid, started by, start, last seen)."""
        seen: dict[int, list] = {}
        for row in self.rows:
            if not start - 1 <= row["t"] <= end + 1:
                continue
            for pid, parent, began in row["builders"]:
                if began < start - 1:
                    continue
                entry = seen.setdefault(pid, [pid, parent, began, row["t"]])
                entry[3] = row["t"]
        return [tuple(entry) for entry in sorted(seen.values(), key=lambda e: e[2])]


# ------------------------------------------------------------------------------------------- data

@dataclass
class Data:
    folder: Path
    catalog: Path
    deck: Path
    accounts: list[str]           # PREPAID accounts for the load
    destinations: list[str]
    prefixes: list[str]           # every prefix of the generated deck, in deck order
    rate_targets: list[tuple[str, str, str]]  # (pricelist, carrier, prefix) of existing rates
    swap_prefixes: list[str]
    rows: int = 0
    generate_seconds: float = 0.0


def _generator():
    spec = importlib.util.spec_from_file_location("loadtest_generate", ROOT / "loadtest" / "generate.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def prepare_data(folder: Path, work: Path, prefixes: int, accounts: int, upload_rows: int, swap_rows: int,
                 seed: int) -> Data:
    """generate.py's data (reused when `folder` has it), then the catalog and deck this bench imports."""
    started = time.perf_counter()
    stamp = folder / "bench-deck.json"
    wanted = {"prefixes": prefixes, "accounts": accounts, "seed": seed}
    if not (stamp.exists() and json.loads(stamp.read_text()) == wanted and (folder / "rates.csv").exists()):
        print(f"[bench] generating {prefixes:,} prefixes into {folder}", file=sys.stderr)
        _generator().generate(folder, prefixes, accounts, seed=seed)
        stamp.write_text(json.dumps(wanted))
    generated = time.perf_counter() - started

    document = json.loads((folder / "catalog.json").read_text())
    load_accounts = [a["account_tag"] for a in document["accounts"] if a.get("type") == "PREPAID"]
    document["carriers"].append({"carrier_tag": SWAP_CARRIER, "host": "127.0.0.1", "port": 5099,
                                 "protocol": "UDP", "active": True})
    for tag, (carrier, _) in PROBES.items():
        document["accounts"].append({"account_tag": tag, "type": "PREPAID", "balance": PROBE_BALANCE,
                                     "pricelist_tags": [PRICELIST], "carrier_tags": [carrier]})
    catalog = work / "catalog.json"
    catalog.write_text(json.dumps(document))

    # The generated deck with carrier01's rates of `standard` replaced by a full A-Z deck of that carrier.
    rng = random.Random(seed)
    deck = work / "initial.csv"
    all_prefixes: list[str] = []
    targets: list[tuple[str, str, str]] = []
    rows = 0
    with (folder / "rates.csv").open(newline="") as source, deck.open("w", newline="") as out:
        reader = csv.reader(source)
        header = next(reader)
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(header)
        column = {name: n for n, name in enumerate(header)}
        last = None
        for row in reader:
            prefix = row[column["prefix"]]
            if prefix != last:
                all_prefixes.append(prefix)
                last = prefix
            if row[column["pricelist_tag"]] == PRICELIST and row[column["carrier_tag"]] == BIG_CARRIER:
                continue
            writer.writerow(row)
            rows += 1
            if rng.random() < 0.002:
                targets.append((row[column["pricelist_tag"]], row[column["carrier_tag"]], prefix))
        big = big_deck_rows(all_prefixes, upload_rows if upload_rows > 0 else len(all_prefixes) + 1, 0)
        for prefix, rate in big:
            writer.writerow(_full_row(header, PRICELIST, BIG_CARRIER, prefix, rate))
            rows += 1
        swap_prefixes = all_prefixes[:: max(1, len(all_prefixes) // max(1, swap_rows - 1))][: swap_rows - 1]
        for prefix, rate in swap_deck_rows(swap_prefixes, 0):
            writer.writerow(_full_row(header, PRICELIST, SWAP_CARRIER, prefix, rate))
            rows += 1
        writer.writerow(_full_row(header, PRICELIST, RATE_CARRIER, PROBES["probe-rate"][1], probe_rate(0)))
        rows += 1
    destinations = (folder / "destinations.txt").read_text().split()
    return Data(folder, catalog, deck, load_accounts, destinations, all_prefixes, targets, swap_prefixes, rows,
                generated)


def _full_row(header: list[str], pricelist: str, carrier: str, prefix: str, rate: int) -> list:
    values = {"pricelist_tag": pricelist, "carrier_tag": carrier, "prefix": prefix, "connect_fee": 0,
              "rate": rate, "rate_increment": 60, "interval_start": 0, "description": f"{carrier} A-Z"}
    return [values.get(name, "") for name in header]


def big_deck_rows(prefixes: list[str], rows: int, version: int) -> list[tuple[str, int]]:
    """carrier01's deck, version `version`: ROWS-1 prefixes of the deck and the probe; every price differs
    from the previous version's."""
    chosen = prefixes[: rows - 1]
    result = [(prefix, 20 + (n * 7919) % 980 + version) for n, prefix in enumerate(chosen)]
    result.append((PROBES["probe-big"][1], probe_rate(version)))
    return result


def swap_deck_rows(prefixes: list[str], version: int) -> list[tuple[str, int]]:
    result = [(prefix, 30 + (n * 104_729) % 700 + version) for n, prefix in enumerate(prefixes)]
    result.append((PROBES["probe-swap"][1], probe_rate(version)))
    return result


def write_carrier_deck(path: Path, rows: list[tuple[str, int]]) -> None:
    with path.open("w") as handle:
        handle.write("prefix,connect_fee,rate,rate_increment,interval_start,description\n")
        handle.writelines(f"{prefix},0,{rate},60,0,A-Z\n" for prefix, rate in rows)


# ----------------------------------------------------------------------------------------- the load

@dataclass
class Phase:
    name: str
    start: float = 0.0      # wall clock
    end: float = 0.0
    notes: dict = field(default_factory=dict)
    server: dict = field(default_factory=dict)


class Load:
    """Open-loop authorizations at `rate`/s, each followed by a rollback, over several client sessions."""

    def __init__(self, url: str, sessions: list, accounts: list[str], destinations: list[str], rate: float,
                 max_in_flight: int = 256) -> None:
        self.url, self.sessions, self.rate = url, sessions, rate
        self.accounts, self.destinations = accounts, destinations
        self.max_in_flight = max_in_flight
        # (wall start, seconds, outcome): outcome "" ok, "http NNN", "timeout", "error", or the refusal reason
        self.samples: list[tuple[float, float, str]] = []
        self.late: list[tuple[float, float]] = []  # (wall, seconds the scheduler was late), when > 5 ms
        # (wall, seconds) the client's own event loop ran a 5 ms timer late, when > CLIENT_LAG: it read no
        # answer meanwhile, so an authorization in flight then is slower by the client's doing (`delayed`)
        self.stalls: list[tuple[float, float]] = []
        self.skipped = 0
        self.rollback_errors = 0
        self._stop = asyncio.Event()
        self._tasks: set[asyncio.Task] = set()
        self._run = f"{time.time_ns()}"

    async def _one(self, n: int) -> None:
        import aiohttp

        session = self.sessions[n % len(self.sessions)]
        body = {"transaction_tag": f"load-{self._run}-{n}", "account_tag": self.accounts[n % len(self.accounts)],
                "destination": self.destinations[(n * 7) % len(self.destinations)]}
        wall, started = time.time(), time.perf_counter()
        outcome = ""
        try:
            async with session.post(self.url + "/v1/authorization", json=body,
                                    timeout=aiohttp.ClientTimeout(total=10)) as reply:
                payload = await reply.read()
                if reply.status != 200:
                    outcome = f"http {reply.status}"
                else:
                    answer = json.loads(payload)
                    if not answer.get("authorized"):
                        outcome = answer.get("unauthorized_reason") or "refused"
        except asyncio.TimeoutError:
            outcome = "timeout"
        except aiohttp.ClientError as exc:
            outcome = f"error {type(exc).__name__}"
        self.samples.append((wall, time.perf_counter() - started, outcome))
        try:
            async with session.post(self.url + "/v1/rollback_transaction", json=body,
                                    timeout=aiohttp.ClientTimeout(total=10)) as reply:
                await reply.read()
                if reply.status != 200:
                    self.rollback_errors += 1
        except (aiohttp.ClientError, asyncio.TimeoutError):
            self.rollback_errors += 1

    async def run(self, bound: float) -> None:
        """Until stopped, at most `bound` seconds."""
        interval = 1.0 / self.rate
        began = time.perf_counter()
        planned = began
        n = 0
        while not self._stop.is_set() and time.perf_counter() - began < bound:
            delay = planned - time.perf_counter()
            if delay > 0:
                try:
                    await asyncio.wait_for(self._stop.wait(), delay)
                    break
                except asyncio.TimeoutError:
                    pass
            late = time.perf_counter() - planned
            if late > 0.005:
                self.late.append((time.time(), late))
            if late > 1.0:  # far behind: do not send a burst to catch up
                skipped = int(late / interval)
                self.skipped += skipped
                planned += skipped * interval
            if len(self._tasks) >= self.max_in_flight:
                self.skipped += 1
            else:
                task = asyncio.create_task(self._one(n))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            n += 1
            planned += interval

    async def watch(self, bound: float, tick: float = 0.005) -> None:
        """The client's own event loop lag, until stopped (at most `bound` seconds)."""
        began = time.perf_counter()
        while not self._stop.is_set() and time.perf_counter() - began < bound:
            due = time.perf_counter() + tick
            await asyncio.sleep(tick)
            late = time.perf_counter() - due
            if late > CLIENT_LAG:
                self.stalls.append((time.time(), late))

    def delayed(self, wall: float, seconds: float) -> bool:
        """Whether the client's loop stalled (> CLIENT_LAG) while an authorization sent at `wall` was in flight."""
        end = wall + seconds
        i = bisect.bisect_left(self.stalls, (wall,))
        # A stall seen at t lasted from t - lag to t, and the next one began after t: of the stalls seen
        # after `wall`, only the first can have begun before `end` if any did.
        return i < len(self.stalls) and self.stalls[i][0] - self.stalls[i][1] <= end

    async def stop(self) -> None:
        self._stop.set()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=30)

    def measured(self) -> dict:
        return {"samples": self.samples, "late": self.late, "stalls": self.stalls, "skipped": self.skipped,
                "rollback_errors": self.rollback_errors}

    @classmethod
    def restored(cls, measured: dict) -> "Load":
        """A Load holding what `measured` returned in the load process (for phase_stats and `delayed`)."""
        load = cls("", [], [], [], 1.0)
        # JSON gives lists: `delayed` bisects `stalls` with a tuple, so tuples again
        load.samples = [tuple(s) for s in measured["samples"]]
        load.late = [tuple(s) for s in measured["late"]]
        load.stalls = [tuple(s) for s in measured["stalls"]]
        load.skipped, load.rollback_errors = measured["skipped"], measured["rollback_errors"]
        return load


def run_load(spec_path: str) -> int:
    """The load process (`--load SPEC`): a Load on an event loop of its own until its stdin is readable (the
    parent wrote to or closed it, or died), its parent is gone, or the bound is reached; then its
    measurements as JSON to the spec's `out`."""
    spec = json.loads(Path(spec_path).read_text())
    # SIGTERM when the parent dies (set here, not in a preexec function: the parent has threads by then);
    # the parent may have died before it was set: _load_main also checks os.getppid()
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if spec["cpu"] is not None:  # --pin-client; set before any thread starts, so they all inherit it
        os.sched_setaffinity(0, {spec["cpu"]})
    runner = asyncio.run
    if spec["uvloop"]:
        import uvloop
        runner = uvloop.run
    measured = runner(_load_main(spec))
    if measured is None:
        return 1  # the parent is gone: nobody to read it
    out = Path(spec["out"])
    part = out.with_name(out.name + ".part")
    part.write_text(json.dumps(measured))
    part.replace(out)  # whole or absent
    return 0


async def _load_main(spec: dict) -> dict | None:
    import aiohttp

    parent = os.getppid()
    sessions = [aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=32, keepalive_timeout=60))
                for _ in range(spec["sessions"])]
    try:
        load = Load(spec["url"], sessions, spec["accounts"], spec["destinations"], spec["rate"])
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        stdin = sys.stdin.fileno()

        def readable() -> None:  # anything or EOF; removed at once, since EOF stays readable
            loop.remove_reader(stdin)
            stopping.set()

        loop.add_reader(stdin, readable)
        runner = asyncio.create_task(load.run(bound=spec["bound"]))
        watcher = asyncio.create_task(load.watch(bound=spec["bound"]))
        print("ready", flush=True)
        while not stopping.is_set() and not runner.done() and os.getppid() == parent:
            try:
                await asyncio.wait_for(stopping.wait(), 0.5)
            except asyncio.TimeoutError:
                pass
        await load.stop()
        await asyncio.gather(runner, watcher)
        return load.measured() if os.getppid() == parent else None
    finally:
        for session in sessions:
            await session.close()


class LoadProcess:
    """The parent's side of the load process: the management work of this client (GraphQL, deck uploads
    through aiohttp, probes, parsing the sampler's file) blocks this event loop for tens of ms at times, and
    a load on the same loop would count those delays as the agent's."""

    def __init__(self, work: Path, number: int, url: str, data: Data, args: argparse.Namespace) -> None:
        self.spec_path = work / f"load-{number}.spec.json"
        self.out = work / f"load-{number}.json"
        self.spec = {"url": url, "accounts": data.accounts, "destinations": data.destinations, "rate": args.rate,
                     "sessions": args.client_sessions, "bound": args.round_bound, "cpu": args.pin_client,
                     "out": str(self.out)}
        self.process: subprocess.Popen | None = None

    async def start(self, timeout: float = 60.0) -> None:
        """Returns once the load is running."""
        self.out.unlink(missing_ok=True)
        # the same kind of loop as this one's
        self.spec["uvloop"] = type(asyncio.get_running_loop()).__module__.startswith("uvloop")
        self.spec_path.write_text(json.dumps(self.spec))
        # stdin: closing it stops the load, also when this process dies (the child's death signal and parent
        # check as other ways); a session of its own, so a Ctrl-C reaches this process alone, which stops it
        self.process = subprocess.Popen([sys.executable, __file__, "--load", str(self.spec_path)],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, start_new_session=True)
        try:
            line = await asyncio.wait_for(asyncio.to_thread(self.process.stdout.readline), timeout)
        except BaseException:
            self._end()
            raise
        if line.strip() != b"ready":
            self._end()
            raise RuntimeError(f"the load process did not start (exit code {self.process.returncode})")

    async def stop(self, timeout: float = 90.0) -> Load:
        """Stops the load and returns its measurements."""
        try:
            try:
                self.process.stdin.close()
            except BrokenPipeError:
                pass  # already gone: its exit code says how
            await asyncio.to_thread(self.process.wait, timeout)
        finally:
            self._end()
        if self.process.returncode != 0 or not self.out.exists():
            raise RuntimeError(f"the load process failed (exit code {self.process.returncode})")
        measured = json.loads(self.out.read_text())
        self.out.unlink()
        return Load.restored(measured)

    def _end(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        for pipe in (self.process.stdin, self.process.stdout):
            try:
                pipe.close()
            except OSError:
                pass


def phase_stats(load: Load, phase: Phase) -> dict:
    chosen = [(s, o) for t, s, o in load.samples if phase.start <= t <= phase.end]
    latencies = [s * 1000 for s, _ in chosen]
    failed = [o for _, o in chosen if o and (o.startswith(("http", "error")) or o == "timeout")]
    refused = [o for _, o in chosen if o and o not in failed]
    slowest = max(((s, t) for t, s, _ in load.samples if phase.start <= t <= phase.end), default=(0.0, 0.0))
    late = [s for t, s in load.late if phase.start <= t <= phase.end]
    stalls = [s for t, s in load.stalls if phase.start <= t <= phase.end]
    clean = [s * 1000 for t, s, _ in load.samples if phase.start <= t <= phase.end and not load.delayed(t, s)]
    seconds = max(1e-9, phase.end - phase.start)
    return {
        "count": len(chosen), "rate": len(chosen) / seconds, "seconds": seconds,
        "p50": percentile(latencies, .5), "p99": percentile(latencies, .99),
        "max": max(latencies) if latencies else float("nan"),
        "errors": len(failed), "refused": len(refused), "over_50ms": sum(v >= 50 for v in latencies),
        "kinds": sorted({*failed, *refused}), "slowest_at": slowest[1],
        "client_late_max": max(late) * 1000 if late else 0.0,
        "client_stall_max": max(stalls) * 1000 if stalls else 0.0,
        # the authorizations during which the client's own loop did not stall: the agent's (and the host's) share
        "clean_count": len(clean), "clean_p99": percentile(clean, .99),
        "clean_max": max(clean) if clean else float("nan"),
    }


# ------------------------------------------------------------------------------------------ changes

class Management:
    def __init__(self, url: str, session) -> None:
        self.url, self.session = url, session
        self.headers = {"Authorization": f"Bearer {TOKEN}"}

    async def graphql(self, query: str, variables: dict | None = None, timeout: float = 30) -> tuple[int, dict]:
        import aiohttp

        async with self.session.post(self.url + "/graphql", json={"query": query, "variables": variables or {}},
                                     headers=self.headers, timeout=aiohttp.ClientTimeout(total=timeout)) as reply:
            text = await reply.read()
            try:
                return reply.status, json.loads(text)
            except ValueError:
                return reply.status, {"raw": text[:200].decode(errors="replace")}

    async def upload(self, path: Path, carrier: str, timeout: float) -> tuple[int, dict, float]:
        import aiohttp

        started = time.perf_counter()
        with path.open("rb") as handle:
            async with self.session.post(
                    f"{self.url}/management/pricelists/{PRICELIST}/rates?carrier_tag={carrier}&replace=true",
                    data=handle, headers={**self.headers, "Content-Type": "text/csv"},
                    timeout=aiohttp.ClientTimeout(total=timeout)) as reply:
                text = await reply.read()
        try:
            answer = json.loads(text)
        except ValueError:
            answer = {"raw": text[:200].decode(errors="replace")}
        return reply.status, answer, time.perf_counter() - started


class Activity:
    """PostgreSQL statements of the agent that run for 0.5 s or more while watched (pg_stat_activity)."""

    def __init__(self, dsn: str, interval: float = 0.25) -> None:
        self.dsn, self.interval = dsn, interval
        self.stop = asyncio.Event()

    async def watch(self) -> list[tuple[float, float, str]]:
        import asyncpg

        seen: dict[tuple[int, float], list] = {}
        connection = await asyncpg.connect(self.dsn, timeout=10)
        try:
            while not self.stop.is_set():
                rows = await connection.fetch(
                    "SELECT pid, extract(epoch FROM query_start)::float8 AS began,"
                    " extract(epoch FROM clock_timestamp())::float8 AS now, left(query, 70) AS text,"
                    " coalesce(wait_event_type || ':' || wait_event, '') AS wait"
                    " FROM pg_stat_activity WHERE datname = current_database() AND state = 'active'"
                    " AND pid <> pg_backend_pid()")
                for row in rows:
                    entry = seen.setdefault((row["pid"], row["began"]), [row["began"], row["now"], row["text"], set()])
                    entry[1] = row["now"]
                    if row["wait"]:
                        entry[3].add(row["wait"])
                try:
                    await asyncio.wait_for(self.stop.wait(), self.interval)
                except asyncio.TimeoutError:
                    pass
        finally:
            await connection.close()
        found = []
        for began, last, text, waits in sorted(seen.values()):
            if last - began >= 0.5:
                text = " ".join(text.split())
                found.append((began, last - began, text + (f" [waits: {', '.join(sorted(waits))}]" if waits else "")))
        return found


UPDATE_ACCOUNT = "mutation($t: String!, $n: String) { updateAccount(account_tag: $t, name: $n) { account_tag } }"
UPDATE_RATE = ("mutation($p: String!, $c: String!, $x: String!, $r: Int) { updatePricelistRate(pricelist_tag: $p,"
               " carrier_tag: $c, prefix: $x, rate: $r, rate_increment: 60, connect_fee: 0, interval_start: 0)"
               " { prefix rate } }")
CREATE_ACCOUNT = ("mutation($t: String!) { createAccount(account_tag: $t, type: PREPAID, balance: 1000000000,"
                  " pricelist_tags: [\"standard\"]) { account_tag } }")
ALIASES = "{ " + " ".join(f"a{n}: __typename" for n in range(5000)) + " }"
SAME_NAME = "{ " + " ".join(["__typename"] * 5000) + " }"


async def every_100ms(seconds: float, send) -> dict:
    """Calls `send(n)` every 100 ms (sequentially: a slow answer delays the next) for `seconds`."""
    answers, failures = [], []
    began = time.perf_counter()
    planned = began
    n = 0
    while time.perf_counter() - began < seconds:
        delay = planned - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        started = time.perf_counter()
        try:
            status, body = await send(n)
            if status != 200 or body.get("errors"):
                failures.append(f"{status} {str(body)[:120]}")
        except Exception as exc:  # noqa: BLE001 - counted and reported
            failures.append(repr(exc)[:120])
        answers.append((time.perf_counter() - started) * 1000)
        n += 1
        planned += 0.1
    return {"changes": n, "answer_p50_ms": round(percentile(answers, .5), 1),
            "answer_max_ms": round(max(answers, default=0), 1),
            "change_failures": len(failures), "failure_sample": failures[:2]}


async def flood(manage: Management, seconds: float, senders: int = 4) -> dict:
    statuses: dict[int, int] = {}
    answers: list[float] = []
    sample: list[str] = []
    deadline = time.perf_counter() + seconds

    async def sender(index: int) -> None:
        n = index
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            try:
                status, body = await manage.graphql(ALIASES if n % 2 else SAME_NAME, timeout=60)
                if len(sample) < 2 and n < 2:
                    sample.append(str(body.get("errors", body))[:160])
            except Exception as exc:  # noqa: BLE001
                status = -1
                sample.append(repr(exc)[:160])
            statuses[status] = statuses.get(status, 0) + 1
            answers.append((time.perf_counter() - started) * 1000)
            n += 1

    await asyncio.gather(*(sender(i) for i in range(senders)))
    return {"documents": sum(statuses.values()), "statuses": statuses,
            "answer_p50_ms": round(percentile(answers, .5), 1), "answer_max_ms": round(max(answers, default=0), 1),
            "answer_sample": sample[:1]}


async def probe(url: str, session, account: str) -> tuple[int, float, str]:
    """(units, seconds, refusal) of one authorization (rolled back) of a probe account."""
    body = {"transaction_tag": f"probe-{time.time_ns()}", "account_tag": account,
            "destination": probe_destination(account)}
    started = time.perf_counter()
    async with session.post(url + "/v1/authorization", json=body) as reply:
        answer = await reply.json()
    seconds = time.perf_counter() - started
    async with session.post(url + "/v1/rollback_transaction", json=body) as reply:
        await reply.read()
    return answer.get("max_available_units", -1), seconds, answer.get("unauthorized_reason") or ""


async def verify(url: str, fresh, account: str, rate: int, tries: int = 8) -> dict:
    """`tries` authorizations, each on a new connection (any worker), right after a change's answer."""
    expected = probe_units(rate)
    units = [(await probe(url, fresh, account))[0] for _ in range(tries)]
    return {"expected_units": expected, "new_price_seen": sum(u == expected for u in units), "probes": tries,
            "units_seen": sorted(set(units))}


# ------------------------------------------------------------------------------------------ server side

_SAMPLE = re.compile(r'^(rating_request_duration_seconds_bucket|rating_requests_total|rating_event_loop_lag_seconds_bucket'
                     r'|rating_redis_round_trip_seconds_bucket)\{([^}]*)\} (\S+)$')


async def scrape(ctx) -> dict:
    """The agent's authorization latency histogram and answers by status (summed over the workers)."""
    import aiohttp

    found: dict = {"buckets": {}, "statuses": {}, "waits": 0.0, "lag": {}, "redis": {}}
    try:
        async with ctx.manage.session.get(ctx.url + "/metrics", timeout=aiohttp.ClientTimeout(total=10)) as reply:
            text = await reply.text()
    except (aiohttp.ClientError, asyncio.TimeoutError):
        return found
    for line in text.splitlines():
        if line.startswith("rating_catalog_waits_total "):  # requests that waited for their worker's catch-up
            found["waits"] = float(line.split()[1])
        matched = _SAMPLE.match(line)
        if matched is None:
            continue
        name, labels, value = matched.groups()
        labels = dict(re.findall(r'(\w+)="([^"]*)"', labels))
        if name.startswith(("rating_event_loop", "rating_redis")):  # the workers' loops, every Redis batch
            found["lag" if name.startswith("rating_event_loop") else "redis"][float(labels["le"])] = float(value)
            continue
        if labels.get("endpoint") != "authorization":
            continue
        if name.endswith("_bucket"):
            found["buckets"][float(labels["le"])] = float(value)
        else:
            found["statuses"][labels.get("status", "")] = float(value)
    return found


def server_side(before: dict, after: dict) -> dict:
    """Authorizations the workers answered between two scrapes: count, >= 50 ms, the p99 bucket, non-200."""
    buckets = sorted((le, after["buckets"][le] - before["buckets"].get(le, 0.0)) for le in after["buckets"])
    if not buckets or buckets[-1][1] <= 0:
        return {}
    total = buckets[-1][1]
    under_50 = next((n for le, n in buckets if abs(le - 0.05) < 1e-9), float("nan"))
    p99 = next((le for le, n in buckets if n >= 0.99 * total), float("inf"))
    failed = sum(after["statuses"].get(k, 0.0) - before["statuses"].get(k, 0.0)
                 for k in after["statuses"] if k != "200")
    lag = _histogram(before.get("lag", {}), after.get("lag", {}))
    redis = _histogram(before.get("redis", {}), after.get("redis", {}))
    return {"count": int(total), "over_50ms": int(total - under_50), "p99_le_ms": p99 * 1000,
            "non_200": int(failed), "waits": int(after.get("waits", 0.0) - before.get("waits", 0.0)),
            # the workers' event loops, looked at every 10 ms: looks 20 ms or 50 ms late, the latest bucket
            "lag_over_20ms": lag["over"](0.02), "lag_over_50ms": lag["over"](0.05), "lag_max_le_ms": lag["top"],
            "redis_p99_le_ms": redis["p99"], "redis_max_le_ms": redis["top"]}


def _histogram(before: dict, after: dict) -> dict:
    """A cumulative histogram's counts between two scrapes: a count above a bound, the p99 and top buckets (ms)."""
    buckets = sorted((le, after[le] - before.get(le, 0.0)) for le in after)
    total = buckets[-1][1] if buckets else 0.0
    counts = dict(buckets)
    top = next((le for le, n in buckets if n >= total), float("inf")) if total else 0.0
    p99 = next((le for le, n in buckets if n >= 0.99 * total), float("inf")) if total else 0.0
    return {"over": lambda bound: int(total - counts.get(bound, total)), "top": top * 1000, "p99": p99 * 1000}


# ------------------------------------------------------------------------------------------ a round

@dataclass
class Context:
    url: str
    data: Data
    args: argparse.Namespace
    work: Path
    fresh: object          # a session that opens a new connection per request
    manage: Management
    samples: Samples
    database_url: str = ""
    swaps: int = 0
    rate_tries: int = 0


async def run_round(ctx: Context, number: int) -> tuple[list[Phase], dict]:
    args, data = ctx.args, ctx.data
    big_path = ctx.work / f"upload-{number}.csv"
    write_carrier_deck(big_path, big_deck_rows(data.prefixes, args.upload_rows, number))
    loader = LoadProcess(ctx.work, number, ctx.url, data, args)
    await loader.start()
    phases: list[Phase] = []
    rng = random.Random(number)

    async def phase(name: str, work) -> Phase:
        before = await scrape(ctx)
        current = Phase(name, time.time())
        try:
            current.notes = await work() or {}
        finally:
            current.end = time.time()
        phases.append(current)
        print(f"[bench] round {number}: {name} done in {current.end - current.start:.1f} s {current.notes}",
              file=sys.stderr)
        await asyncio.sleep(min(1.1, args.gap))  # workers add their counts to the shared metrics every second
        current.server = server_side(before, await scrape(ctx))
        await asyncio.sleep(max(0.0, args.gap - 1.1))
        return current

    async def quiet():
        await asyncio.sleep(args.phase_seconds)

    async def accounts():
        return await every_100ms(args.phase_seconds, lambda n: ctx.manage.graphql(
            UPDATE_ACCOUNT, {"t": data.accounts[(n * 13) % len(data.accounts)], "n": f"bench r{number} #{n}"}))

    async def rates():
        def send(n):
            pricelist, carrier, prefix = data.rate_targets[rng.randrange(len(data.rate_targets))]
            return ctx.manage.graphql(UPDATE_RATE, {"p": pricelist, "c": carrier, "x": prefix,
                                                   "r": rng.randint(5, 900)})
        return await every_100ms(args.phase_seconds, send)

    async def flooding():
        return await flood(ctx.manage, args.phase_seconds)

    async def timed_upload(path: Path, carrier: str, account: str, version: int) -> dict:
        """One upload through the agent port: answer, import/build split, statements, probes after it."""
        watcher = Activity(ctx.database_url)
        watching = asyncio.create_task(watcher.watch())
        wall = time.time()
        try:
            status, answer, seconds = await ctx.manage.upload(path, carrier, args.upload_timeout)
        finally:
            answered = time.time()
            watcher.stop.set()
            statements = await watching
        checked = await verify(ctx.url, ctx.fresh, account, probe_rate(version))
        ctx.samples.reload()
        builders = [b for b in ctx.samples.builders(wall, answered) if b[2] >= wall - 0.5]
        by_manager = [b for b in builders if b[1] == "manager"]
        notes = {"status": status, "answer_s": round(seconds, 1), "server_s": answer.get("seconds"),
                 "rows": answer.get("rows"), "removed": answer.get("removed"), **checked}
        if by_manager:
            first = by_manager[0]
            notes["import_s"] = round(first[2] - wall, 1)   # upload start -> the manager starts the build
            notes["build_s"] = round(first[3] - first[2], 1)  # the build process's life (seen every 0.1 s)
            notes["after_build_s"] = round(answered - first[3], 1)
        notes["builders"] = [f"{b[1]} {b[2] - wall:.1f}-{b[3] - wall:.1f} s" for b in builders]
        notes["statements"] = [f"{start - wall:.1f}+{length:.1f} s {text}" for start, length, text in statements]
        return notes

    async def swap():
        done = []
        began = time.perf_counter()
        while not done or time.perf_counter() - began < args.phase_seconds:
            ctx.swaps += 1
            path = ctx.work / "swap.csv"
            write_carrier_deck(path, swap_deck_rows(data.swap_prefixes, ctx.swaps))
            done.append(await timed_upload(path, SWAP_CARRIER, "probe-swap", ctx.swaps))
            if done[-1]["status"] != 200:
                break
        await asyncio.sleep(args.tail)
        return {"swaps": done}

    async def upload():
        notes = await timed_upload(big_path, BIG_CARRIER, "probe-big", number)
        await asyncio.sleep(args.tail)
        return notes

    async def ryw():
        not_found = other_refusals = failures = 0
        for n in range(args.tries):
            tag = f"ryw-{number}-{n}-{time.time_ns()}"
            status, body = await ctx.manage.graphql(CREATE_ACCOUNT, {"t": tag})
            if status != 200 or body.get("errors"):
                failures += 1
                continue
            request = {"transaction_tag": f"ryw-{tag}", "account_tag": tag, "destination": data.destinations[n]}
            async with ctx.fresh.post(ctx.url + "/v1/authorization", json=request) as reply:
                answer = await reply.json()
            async with ctx.fresh.post(ctx.url + "/v1/rollback_transaction", json=request) as reply:
                await reply.read()
            reason = answer.get("unauthorized_reason")
            not_found += reason == "NOT_FOUND"
            other_refusals += bool(reason) and reason != "NOT_FOUND"
        stale = rate_failures = 0
        for _ in range(args.tries):
            ctx.rate_tries += 1
            rate = probe_rate(ctx.rate_tries)
            carrier, prefix = PROBES["probe-rate"]
            status, body = await ctx.manage.graphql(UPDATE_RATE, {"p": PRICELIST, "c": carrier, "x": prefix,
                                                                  "r": rate})
            if status != 200 or body.get("errors"):
                rate_failures += 1
                continue
            units, _, _ = await probe(ctx.url, ctx.fresh, "probe-rate")
            stale += units != probe_units(rate)
        return {"create_then_authorize": args.tries, "not_found": not_found, "other_refusals": other_refusals,
                "create_failures": failures, "rate_then_authorize": args.tries, "stale_price": stale,
                "rate_failures": rate_failures}

    try:
        await asyncio.sleep(args.warmup)
        await phase("quiet", quiet)  # always: the other phases are compared with it
        for name, work in (("accounts", accounts), ("rates", rates), ("flood", flooding), ("swap", swap),
                           ("upload", upload), ("ryw", ryw)):
            if name in args.phases and (name != "upload" or args.upload_rows > 0):
                await phase(name, work)
    finally:
        try:
            load = await loader.stop()
        finally:
            big_path.unlink(missing_ok=True)
    ctx.samples.reload()
    results = {}
    for current in phases:
        stats = phase_stats(load, current)
        stats["cpu"] = ctx.samples.cores(current.start, current.end)
        stats["cpu_before_slowest"] = ctx.samples.cores(stats["slowest_at"] - 0.5, stats["slowest_at"] + 0.1)
        stats["load"] = ctx.samples.load(current.start, current.end)
        stats["notes"] = current.notes
        stats["server"] = current.server
        results[current.name] = stats
    results["_"] = {"skipped": load.skipped, "rollback_errors": load.rollback_errors}
    return phases, results


async def bench(url: str, data: Data, args, work: Path, samples: Samples, database_url: str) -> list[dict]:
    import aiohttp

    try:
        import uvloop  # noqa: F401 - the client's loop (see main)
    except ImportError:
        pass
    fresh = aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True),
                                  timeout=aiohttp.ClientTimeout(total=30))
    manager_session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=16))
    ctx = Context(url, data, args, work, fresh, Management(url, manager_session), samples, database_url)
    rounds = []
    try:
        for probe_account in PROBES:  # the probes are rated as imported
            units, _, reason = await probe(url, fresh, probe_account)
            if units != probe_units(probe_rate(0)):
                raise RuntimeError(f"{probe_account}: {units} units ({reason}), {probe_units(probe_rate(0))} expected")
        for number in range(1, args.rounds + 1):
            if time.monotonic() > args.deadline:
                print("[bench] out of time: no more rounds", file=sys.stderr)
                break
            _, results = await run_round(ctx, number)
            rounds.append(results)
            print_round(number, results)
            if args.json:
                Path(args.json).write_text(json.dumps(rounds, default=str))
    finally:
        for session in (fresh, manager_session):
            await session.close()
    return rounds


# ------------------------------------------------------------------------------------------ report

def _ms(value: float) -> str:
    return "nan" if value != value else (f"{value:,.0f}" if value >= 100 else f"{value:.1f}")


def _verdict(stats: dict, quiet: dict) -> str:
    misses = []
    if not stats["max"] < 50:
        misses.append("max")
    if stats is not quiet and not stats["p99"] <= 2 * quiet["p99"]:
        misses.append("p99")
    if stats["errors"] or stats["refused"]:
        misses.append("errors")
    return "ok" if not misses else "MISS " + "+".join(misses)


def _server(server: dict | None) -> str:
    if not server:
        return "-"
    bound = "> 2,500" if server["p99_le_ms"] == float("inf") else f"<= {server['p99_le_ms']:g}"
    return f"{server['over_50ms']} of {server['count']:,}, {bound} ms" + (
        f", {server['non_200']} non-200" if server["non_200"] else "") + (
        f", {server['waits']} waited for a catch-up" if server.get("waits") else "")


def _loops(server: dict | None) -> str:
    """The workers' event loops (looks 20 / 50 ms late or more, the latest bucket) and Redis' p99 bucket."""
    if not server or "lag_max_le_ms" not in server:
        return "-"
    return (f"{server['lag_over_20ms']} / {server['lag_over_50ms']}, <= {server['lag_max_le_ms']:g} ms;"
            f" Redis p99 <= {server['redis_p99_le_ms']:g} ms")


def _clean(stats: dict) -> str:
    """p99 / max of the authorizations during which the client's loop did not stall, and their share."""
    if not stats.get("clean_count"):
        return "-"
    return (f"{_ms(stats['clean_p99'])} / {_ms(stats['clean_max'])}"
            f" ({stats['clean_count'] / max(1, stats['count']):.0%})")


def _cores(cpu: dict) -> str:
    shown = [(g, cpu.get(g, 0.0)) for g in (*GROUPS, "others") if cpu.get(g, 0.0) >= 0.02]
    return ", ".join(f"{g} {v:.2f}" for g, v in shown) + (f" (machine {cpu['machine']:.2f})" if cpu else "")


def print_round(number: int, results: dict) -> None:
    quiet = results["quiet"]
    print(f"\n#### round {number}\n")
    print("| phase | auths | /s | p50 ms | p99 ms | max ms | p99 / quiet | errors | refused | target |"
          " client stalls max ms | p99 / max ms without them | workers' loops >= 20 / 50 ms, Redis |"
          " cores used (1.0 = a core) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---|---|---|")
    for name in PHASES:
        stats = results.get(name)
        if stats is None:
            continue
        print(f"| {name} | {stats['count']:,} | {stats['rate']:.0f} | {_ms(stats['p50'])} | {_ms(stats['p99'])} |"
              f" {_ms(stats['max'])} | {stats['p99'] / quiet['p99']:.2f} | {stats['errors']} | {stats['refused']} |"
              f" {_verdict(stats, quiet)} | {_ms(stats.get('client_stall_max', float('nan')))} | {_clean(stats)} |"
              f" {_loops(stats.get('server'))} | {_cores(stats['cpu'])} |")
    sys.stdout.flush()


def _spread(values: list[float], digits: str = "ms") -> str:
    values = [v for v in values if v == v]
    if not values:
        return "-"
    low, mid, high = min(values), statistics.median(values), max(values)
    if digits == "ratio":
        return f"{mid:.2f} ({low:.2f}-{high:.2f})"
    if digits == "int":
        return f"{mid:g} ({low:g}-{high:g})"
    return f"{_ms(mid)} ({_ms(low)}-{_ms(high)})"


def print_report(rounds: list[dict], header: dict) -> None:
    print("\n## Authorization latency while the catalog changes\n")
    for key, value in header.items():
        print(f"* {key}: {value}")
    targets = ("targets: max < 50 ms, p99 <= 2 x the round's quiet p99, 0 errors (refusals counted as errors);"
               " others' cores: CPU the rest of the machine (other people's work) used meanwhile, of 2")
    print(f"\nMedians over {len(rounds)} round(s), (min-max) in brackets; {targets}.")
    for name in PHASES:
        present = [r for r in rounds if name in r]
        if not present:
            continue
        print(f"\n### {name}\n")
        print("| round | auths | /s | p50 ms | p99 ms | max ms | >= 50 ms | p99 / quiet p99 | errors | refused |"
              " target | server: >= 50 ms, p99 bucket | workers' loops >= 20 / 50 ms, Redis |"
              " client stalls max ms | p99 / max ms without them | others' cores |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|---|---:|---|---:|")
        for n, r in enumerate(rounds, 1):
            if name not in r:
                continue
            s, q = r[name], r["quiet"]
            kinds = f" ({', '.join(s['kinds'])})" if s["kinds"] else ""
            print(f"| {n} | {s['count']:,} | {s['rate']:.0f} | {_ms(s['p50'])} | {_ms(s['p99'])} | {_ms(s['max'])} |"
                  f" {s['over_50ms']} | {s['p99'] / q['p99']:.2f} | {s['errors']}{kinds} | {s['refused']} |"
                  f" {_verdict(s, q)} | {_server(s.get('server'))} | {_loops(s.get('server'))} |"
                  f" {_ms(s.get('client_stall_max', float('nan')))} | {_clean(s)} |"
                  f" {s['cpu'].get('others', float('nan')):.2f} |")
        col = lambda key: [r[name][key] for r in present]  # noqa: E731
        ratios = [r[name]["p99"] / r["quiet"]["p99"] for r in present]
        others = [r[name]["cpu"].get("others", float("nan")) for r in present]
        print(f"| **median (min-max)** | | | {_spread(col('p50'))} | {_spread(col('p99'))} | {_spread(col('max'))} |"
              f" {_spread(col('over_50ms'), 'int')} | {_spread(ratios, 'ratio')} | {_spread(col('errors'), 'int')} |"
              f" {_spread(col('refused'), 'int')} | | | | | | {_spread(others, 'ratio')} |")
        cpu = {g: statistics.median([r[name]["cpu"].get(g, 0.0) for r in present])
               for g in (*GROUPS, "others", "machine")}
        slow = {g: statistics.median([r[name]["cpu_before_slowest"].get(g, 0.0) for r in present])
                for g in (*GROUPS, "others", "machine")}
        print(f"\ncores used (median): {_cores(cpu)}  \n"
              f"in the 0.5 s before each round's slowest authorization (median): {_cores(slow)}  \n"
              f"load average (1 min, highest seen): {_spread(col('load'), 'ratio')};"
              f" client scheduler late by up to {_spread(col('client_late_max'))} ms")
        for n, r in enumerate(rounds, 1):
            if name in r and r[name]["notes"]:
                print(f"* round {n}: {json.dumps(r[name]['notes'])}")
    print_changes(rounds)
    print()
    for n, r in enumerate(rounds, 1):
        print(f"* round {n}: authorizations skipped by the client (too many in flight or far behind):"
              f" {r['_']['skipped']}, failed rollbacks: {r['_']['rollback_errors']}")
    sys.stdout.flush()


class Agent(AgentProcess):
    """devstack's AgentProcess, run from `root` (a snapshot of a commit, or the working tree)."""

    def __init__(self, root: Path, *args, **settings) -> None:
        super().__init__(*args, **settings)
        self.root = root

    def cli(self, *argv: str, timeout: float = 600) -> subprocess.CompletedProcess:
        done = subprocess.run([sys.executable, "-m", "agent", *argv], cwd=self.root, env=self.env,
                              capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            raise RuntimeError(f"agent {' '.join(argv)} failed:\n{done.stdout}\n{done.stderr}")
        return done

    def start(self, timeout: float = 30.0) -> "Agent":
        import urllib.request

        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "agent", "serve"], cwd=self.root, env=self.env,
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True, preexec_fn=_die_with_parent(),
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"agent exited: {self.log_path.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(self.url + "/ready", timeout=0.5) as reply:
                    if reply.status == 200:
                        return self
            except OSError:
                time.sleep(0.1)
        raise TimeoutError(f"agent not ready: {self.log_path.read_text()[-3000:]}")


def agent_source(folder: Path, given: str | None) -> tuple[Path, str]:
    """Where the agent runs from, and what it is: `given`, or an export of HEAD (others may be editing the
    working tree while this runs)."""
    if given:
        return Path(given).resolve(), f"working tree {given} at {git_revision()}"
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True,
                            check=True, timeout=10).stdout.strip()
    target = folder / "agent-src"
    target.mkdir()
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", commit, "agent", "cache", "setup.py"],
                             capture_output=True, check=True, timeout=60).stdout
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True, timeout=60)
    # routing's C extension is not in git: built in the export as `make install` builds it in a checkout
    subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--inplace"], cwd=target, check=True,
                   capture_output=True, timeout=300)
    subject = subprocess.run(["git", "-C", str(ROOT), "log", "-1", "--format=%h %s", commit], capture_output=True,
                             text=True, timeout=10).stdout.strip()
    return target, f"{commit} (exported with git archive; {subject[:90]})"


def print_changes(rounds: list[dict]) -> None:
    """The changes themselves: mutation answers, uploads (import / build), read-your-writes."""
    print("\n### the changes\n")
    print("| round | phase | sent | answer p50 / max ms | failed |\n|---|---|---:|---|---:|")
    for n, r in enumerate(rounds, 1):
        for name in ("accounts", "rates", "flood"):
            notes = r.get(name, {}).get("notes", {})
            if notes:
                sent = notes.get("changes", notes.get("documents", 0))
                failed = notes.get("change_failures", sum(v for k, v in notes.get("statuses", {}).items()
                                                          if str(k) != "400"))
                print(f"| {n} | {name} | {sent} | {_ms(notes['answer_p50_ms'])} / {_ms(notes['answer_max_ms'])} |"
                      f" {failed} |")
    print("\n| round | upload | rows | removed | start -> answer s | import s | build s | build end -> answer s |"
          " authorizations right after the answer with the new price |\n|---|---|---:|---:|---:|---:|---:|---:|---|")
    for n, r in enumerate(rounds, 1):
        uploads = [("swap", u) for u in r.get("swap", {}).get("notes", {}).get("swaps", [])]
        if r.get("upload", {}).get("notes"):
            uploads.append(("upload", r["upload"]["notes"]))
        for kind, u in uploads:
            print(f"| {n} | {kind} | {u.get('rows')} | {u.get('removed')} | {u.get('answer_s')} |"
                  f" {u.get('import_s', '-')} | {u.get('build_s', '-')} | {u.get('after_build_s', '-')} | {u.get('new_price_seen')} of"
                  f" {u.get('probes')} (units {u.get('units_seen')}, expected {u.get('expected_units')}) |")
    print("\n| round | createAccount -> authorization: NOT_FOUND | other refusals | updatePricelistRate ->"
          " authorization: old price |\n|---|---|---:|---|")
    for n, r in enumerate(rounds, 1):
        notes = r.get("ryw", {}).get("notes", {})
        if notes:
            print(f"| {n} | {notes['not_found']} of {notes['create_then_authorize']}"
                  f" ({notes['create_failures']} creates failed) | {notes['other_refusals']} |"
                  f" {notes['stale_price']} of {notes['rate_then_authorize']} ({notes['rate_failures']} failed) |")


def git_revision() -> str:
    try:
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--", "agent", "cache"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + (" (agent/ or cache/ modified)" if dirty else "")


def _pin_threads(pid: int, cpus: set[int]) -> None:
    """Every thread of `pid` on `cpus` (an affinity is per thread; threads and children made later inherit it)."""
    try:
        threads = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        return
    for thread in threads:
        try:
            os.sched_setaffinity(thread, cpus)
        except OSError:
            pass  # gone meanwhile


def pin(client_cpu: int, servers: list[int]) -> str:
    """--pin-client: this process on `client_cpu` (the sampler and the load processes, started later, inherit
    it; a load process also sets it itself), every process of the `servers` trees on the other CPUs."""
    others = os.sched_getaffinity(0) - {client_cpu}
    count = 0
    for root in servers:
        for pid in process_tree(root):
            _pin_threads(pid, others)
            count += 1
    _pin_threads(os.getpid(), {client_cpu})
    return (f"diagnostic: client, its load process and sampler on CPU {client_cpu}, {count} server processes"
            f" (agent, PostgreSQL, Redis) on CPUs {', '.join(map(str, sorted(others)))}")


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return Path("/proc/loadavg").read_text().strip()


# ------------------------------------------------------------------------------------------ main

def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prefixes", type=int, default=1_000_000, help="prefixes of the generated deck")
    parser.add_argument("--accounts", type=int, default=1000)
    parser.add_argument("--upload-rows", type=int, default=1_000_000, help="rows of the big upload (0: none)")
    parser.add_argument("--swap-rows", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rate", type=float, default=200.0, help="authorizations per second")
    parser.add_argument("--client-sessions", type=int, default=8, help="client sessions (connection pools)")
    parser.add_argument("--phase-seconds", type=float, default=15.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--gap", type=float, default=2.0, help="seconds between phases (not measured)")
    parser.add_argument("--tail", type=float, default=2.0, help="seconds measured after a deck upload's answer")
    parser.add_argument("--tries", type=int, default=100, help="read-your-writes tries of each kind per round")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--upload-timeout", type=float, default=900.0)
    parser.add_argument("--time-limit", type=float, default=3600.0, help="no round starts after this many seconds")
    parser.add_argument("--data", help="folder for generate.py's output, kept and reused (default: temporary)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", help="also write the measurements of every round to this file")
    parser.add_argument("--agent-root", help="run the agent from this checkout (default: an export of HEAD)")
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--phases", default=",".join(PHASES[1:]),
                        help="phases to run after the quiet one, comma-separated (default: all)")
    parser.add_argument("--pin-client", type=int, metavar="CPU",
                        help="diagnostic: this client (its load process and sampler too) on CPU alone, the agent,"
                             " PostgreSQL and Redis on the other CPUs, so the client's own delays are not the agent's")
    parser.add_argument("--sampler", nargs=4, metavar=("OUT", "ROOTS", "INTERVAL", "UNTIL"), help=argparse.SUPPRESS)
    parser.add_argument("--load", metavar="SPEC", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.sampler:
        out, roots, interval, until = args.sampler
        return run_sampler(out, json.loads(roots), float(interval), float(until))
    if args.load:
        return run_load(args.load)
    args.phases = [name for name in args.phases.split(",") if name]
    unknown = set(args.phases) - set(PHASES)
    if unknown:
        parser.error(f"--phases: unknown {', '.join(sorted(unknown))} (known: {', '.join(PHASES[1:])})")
    if args.pin_client is not None and (args.pin_client not in os.sched_getaffinity(0)
                                        or len(os.sched_getaffinity(0)) < 2):
        parser.error(f"--pin-client {args.pin_client}: not one of at least two CPUs this process may use")
    args.deadline = time.monotonic() + args.time_limit
    args.round_bound = args.time_limit + 600

    try:
        with scratch("bench-deck-", args.keep) as (folder, stops):
            source, commit = agent_source(folder, args.agent_root)
            header = {"agent commit": commit, "machine at start": uptime(),
                      "cpus": f"{os.cpu_count()} (affinity {len(os.sched_getaffinity(0))})"}
            data_dir = Path(args.data) if args.data else folder / "data"
            data = prepare_data(data_dir, folder, args.prefixes, args.accounts, args.upload_rows, args.swap_rows,
                                args.seed)
            redis = RedisServer(folder / "redis")
            stops.append(redis.stop)
            redis.start()
            postgres = PostgresServer(folder / "postgres")
            stops.append(postgres.stop)
            postgres.start()
            agent = Agent(source, redis.url, postgres.url, folder, workers=args.workers, management_token=TOKEN,
                          record_retention=120, log_level="INFO")
            started = time.perf_counter()
            agent.cli("import", "catalog", str(data.catalog), timeout=600)
            catalog_seconds = time.perf_counter() - started
            started = time.perf_counter()
            done = agent.cli("import", "rates", str(data.deck), "--quiet", timeout=args.upload_timeout * 2)
            import_seconds = time.perf_counter() - started
            print(f"[bench] imported {data.rows:,} rates in {import_seconds:.0f} s: {done.stdout.strip()}"
                  f" {done.stderr.strip()[-300:]}", file=sys.stderr)
            stops.append(agent.stop)
            started = time.perf_counter()
            agent.start(timeout=args.upload_timeout)
            ready_seconds = time.perf_counter() - started

            if args.pin_client is not None:
                header["pinned"] = pin(args.pin_client, [agent.process.pid, postgres.process.pid,
                                                         redis.process.pid])
            sample_path = folder / "cpu.jsonl"
            roots = {"agent": agent.process.pid, "postgres": postgres.process.pid, "redis": redis.process.pid,
                     "client": os.getpid()}
            sampler = subprocess.Popen(
                [sys.executable, __file__, "--sampler", str(sample_path), json.dumps(roots), "0.1",
                 str(time.time() + args.time_limit + 1800)], stdin=subprocess.DEVNULL)
            stops.append(lambda: stop_process(sampler, 5))
            time.sleep(0.5)
            samples = Samples(sample_path)
            try:
                import uvloop
                runner = uvloop.run
            except ImportError:
                runner = asyncio.run
            header.update({
                "data": f"generate.py --prefixes {args.prefixes:,} --accounts {args.accounts:,}"
                        f" ({len(data.prefixes):,} prefixes; generated in {data.generate_seconds:.0f} s or reused);"
                        f" {BIG_CARRIER} given a full A-Z deck ({args.upload_rows:,} rows), {SWAP_CARRIER}"
                        f" {args.swap_rows:,} rows: {data.rows:,} rates imported",
                "CLI imports": f"catalog {catalog_seconds:.1f} s, rates {import_seconds:.0f} s (deck build included);"
                               f" agent ready in {ready_seconds:.1f} s",
                "agent": f"{args.workers} workers + manager + housekeeper, Redis over TCP, all on loopback",
                "load": f"{args.rate:.0f} authorizations/s open loop (each then rolled back), from a process of"
                        f" its own, over {args.client_sessions} client sessions, {args.phase_seconds:g} s phases,"
                        f" {len(data.accounts)} PREPAID accounts, {len(data.destinations):,} destinations",
            })
            rounds = runner(bench(agent.url, data, args, folder, samples, postgres.url))
            header["machine at end"] = uptime()
            log = agent.log_path.read_text(errors="replace").splitlines()
            problems = [line for line in log if " ERROR " in line or " WARNING " in line or "Traceback" in line]
            header["agent log"] = f"{len(log)} lines, {len(problems)} warnings/errors" + (
                f"; first: `{problems[0][:200]}`" if problems else "")
            if rounds:
                print_report(rounds, header)
            return 0
    except KeyboardInterrupt:
        print("\n[bench] interrupted; stopping everything", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
