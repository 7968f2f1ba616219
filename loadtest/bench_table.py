"""The rate table at scale, on memory-mapped decks: import, build, activation, start, memory and lookups.

    python loadtest/bench_table.py [--prefixes 1000000] [--rounds 5] [--lookups 20000] [--load cli|copy]
                                   [--data DIR] [--keep]

In a temporary folder, on free loopback ports: starts redis-server and PostgreSQL (devstack), generates a
realistic deck (loadtest/generate.py; with --data DIR, generated once into DIR and reused), imports the
catalog with the agent's CLI and starts an agent (`python -m agent serve`, 2 workers) with no rates yet.
Then, while that agent serves:

* the deck goes in. `--load cli` (default): `python -m agent import rates deck.csv`, the real path: the
  import into PostgreSQL, then the CLI builds the deck and activates it. `--load copy`: the CSV copied
  straight into pricelist_rates by PostgreSQL (its keys and foreign keys dropped and added back around
  it, in this scratch database only), a `bulk` change recorded as the importer does, then
  `python -m agent build-decks`: for decks too large to wait for the importer;
* the phases are timed from outside, by polling: the import until its `bulk` change is visible, the build
  until the `deck` change that activates it (the CLI's log line splits it into reading PostgreSQL and
  building, when the CLI built it), the activation until every worker maps the new deck (its files in
  /proc/PID/maps) and until the first authorization rated on it;
  The agent's housekeeper, which also builds decks it finds missing, is paused meanwhile, so the build
  timed is the CLI's (they would race for the build lock);
* memory after some authorizations: the PSS of all the agent's processes (/proc/PID/smaps_rollup) before
  the import and after, and the PSS of the deck's file mappings alone (/proc/PID/smaps), per prefix.

Then the agent is stopped and started again with the deck built: time from start to the first
authorized answer. Last, in a fresh process, lookups over destinations of the deck with distinct longest
matches: `route` (price and carriers; an account of one pricelist, and one of every pricelist) and
`plan_call` on a freshly loaded catalog (a fresh Deck: nothing remembered, cold) and again on the same one
(warm), the median of --rounds rounds; and once more cold after the deck's pages were dropped from the page
cache. The garbage collector is frozen after loading, as in a worker (serve.py).

Prints Markdown tables. Every process started here is stopped at the end, also on errors and Ctrl-C; every
wait is bounded. The folder is removed unless --keep is given.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import re
import resource
import signal
import statistics
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(ROOT), str(HERE)]

from devstack import process_tree  # noqa: E402

TENANT = "default"
WORKERS = 2


# ------------------------------------------------------------------------------------------- /proc

def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def workers_of(agent) -> list[int]:
    """The agent's HTTP workers (named rating-worker-N by the supervisor), else every process under it."""
    pids = agent.pids()
    named = [pid for pid in pids if _comm(pid).startswith("rating-worker")]
    return named or pids[1:]


def maps_deck(pid: int, folder: str) -> bool:
    try:
        return folder in Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return False


def pss_kb(pid: int, under: str | None = None) -> int:
    """Proportional set size of a process, or of its mappings of files under `under` only."""
    try:
        if under is None:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    return int(line.split()[1])
            return 0
        total, inside = 0, False
        for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
            fields = line.split()
            if re.match(r"^[0-9a-f]+-[0-9a-f]+$", fields[0]):
                inside = len(fields) > 5 and fields[5].startswith(under)
            elif inside and fields[0] == "Pss:":
                total += int(fields[1])
        return total
    except OSError:
        return 0


def memory(agent, deck_dir: str) -> dict:
    pids = agent.pids()
    return {"processes": len(pids), "pss": sum(pss_kb(p) for p in pids) * 1024,
            "deck_pss": sum(pss_kb(p, deck_dir) for p in pids) * 1024}


POSTGRES_PID: int | None = None  # the bench's PostgreSQL server (its CPU time, with its ended backends')


def cpu_seconds(pid: int | None) -> float:
    """CPU time of a process and of its children, ended (waited for) or running; 0 if gone."""
    if pid is None:
        return 0.0
    total = 0.0
    for n, current in enumerate(process_tree(pid)):
        try:
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        times = [int(v) for v in fields[11:15]]  # utime, stime, cutime, cstime
        total += sum(times if n == 0 else times[:2])
    return total / os.sysconf("SC_CLK_TCK")


def drop_page_cache(folder: Path) -> None:
    """Evicts the deck's files from the page cache (pages no process maps), for lookups from disk."""
    for path in folder.rglob("*"):
        if path.is_file():
            with open(path, "rb") as handle:
                os.posix_fadvise(handle.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)


# ------------------------------------------------------------------------------------ authorizations

class Authorizer:
    """POST /v1/authorization with unique transaction tags; a fresh connection per request, so the kernel
    spreads them over the workers."""

    def __init__(self, url: str, accounts: list[str], destinations: list[str]) -> None:
        self.url, self.accounts, self.destinations = url, accounts, destinations
        self.count = 0
        self.run = f"bench-{time.time_ns()}"

    async def one(self, session, n: int | None = None) -> dict | None:
        n = self.count if n is None else n
        self.count += 1
        body = {"transaction_tag": f"{self.run}-{self.count}", "account_tag": self.accounts[n % len(self.accounts)],
                "destination": self.destinations[n % len(self.destinations)]}
        try:
            async with session.post(self.url + "/v1/authorization", json=body) as reply:
                return await reply.json() if reply.status == 200 else None
        except (OSError, asyncio.TimeoutError, ValueError):
            return None

    async def until_authorized(self, deadline: float, pause: float = 0.02) -> float | None:
        """Seconds (perf_counter) of the first authorized answer, or None at the deadline."""
        import aiohttp

        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True),
                                         timeout=aiohttp.ClientTimeout(total=2)) as session:
            while time.perf_counter() < deadline:
                answer = await self.one(session)
                if answer and answer.get("authorized"):
                    return time.perf_counter()
                await asyncio.sleep(pause)
        return None

    async def sample(self, count: int, concurrency: int = 8) -> dict[str, int]:
        import aiohttp

        outcomes: dict[str, int] = {}
        queue = list(range(count))

        async def work(session) -> None:
            while queue:
                answer = await self.one(session, queue.pop())
                key = "error" if answer is None else "authorized" if answer.get("authorized") else \
                    f"refused: {answer.get('unauthorized_reason')}"
                outcomes[key] = outcomes.get(key, 0) + 1

        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True),
                                         timeout=aiohttp.ClientTimeout(total=10)) as session:
            await asyncio.wait_for(asyncio.gather(*(work(session) for _ in range(concurrency))), 300)
        return outcomes


# -------------------------------------------------------------------------------------- the deck in

async def _changes(connection, kinds: tuple[str, ...] = ("bulk", "deck")) -> dict[str, int]:
    rows = await connection.fetch("SELECT kind, max(seq) AS seq FROM catalog_changes WHERE kind = ANY($1)"
                                  " GROUP BY kind", list(kinds))
    return {row["kind"]: row["seq"] for row in rows}


async def upload(url: str, deck: Path, timeout: float) -> tuple[int, bytes]:
    """POST /management/pricelists/{pricelist}/rates with the deck file as the body, streamed (the pricelist:
    the one its first row names; its carriers are its own column)."""
    import aiohttp

    with deck.open() as handle:
        header, first = handle.readline().rstrip("\n").split(","), handle.readline().rstrip("\n").split(",")
    pricelist = dict(zip(header, first))["pricelist_tag"]
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session:
        with deck.open("rb") as body:
            async with session.post(f"{url}/management/pricelists/{pricelist}/rates", data=body,
                                    headers={"Content-Type": "text/csv"}) as reply:
                return reply.status, await reply.read()


async def copy_load(database_url: str, deck: Path) -> float:
    """The CSV into pricelist_rates by PostgreSQL's own COPY, keys and foreign keys dropped during it (each
    row would check them one by one) and added back; then the `bulk` change an import records."""
    import asyncpg

    from agent.store import changes

    with open(deck, encoding="utf-8") as handle:
        header = handle.readline().strip().split(",")
    started = time.perf_counter()
    connection = await asyncpg.connect(database_url)
    try:
        async with connection.transaction():
            constraints = await connection.fetch(
                "SELECT conname, pg_get_constraintdef(oid) AS definition FROM pg_constraint"
                " WHERE conrelid = 'pricelist_rates'::regclass AND contype IN ('p', 'u', 'f') ORDER BY contype DESC")
            for row in constraints:
                await connection.execute(f'ALTER TABLE pricelist_rates DROP CONSTRAINT "{row["conname"]}"')
            await connection.copy_to_table("pricelist_rates", source=str(deck), columns=header, format="csv",
                                           header=True)
            await connection.execute("SET LOCAL maintenance_work_mem = '1GB'")
            for row in reversed(constraints):
                await connection.execute(
                    f'ALTER TABLE pricelist_rates ADD CONSTRAINT "{row["conname"]}" {row["definition"]}')
            await changes.record(connection, TENANT, "bulk")
    finally:
        await connection.close()
    return time.perf_counter() - started


def _log_moment(line: str) -> float | None:
    """The time.time() of a log line (`%(asctime)s`, local time, milliseconds)."""
    match = re.match(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3})", line)
    if match is None:
        return None
    return datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S").timestamp() + int(match.group(2)) / 1000


async def load_deck(args, agent, gen, deck_dir: str, authorizer: Authorizer, log) -> dict:
    """The deck into PostgreSQL, built and activated while `agent` serves; the moments of each phase."""
    import asyncpg

    watcher = await asyncpg.connect(agent.env["RATING_DATABASE_URL"])
    # The housekeeper builds decks too, and would race the CLI for the build lock: paused meanwhile, so
    # the CLI's own build (and its log line) is the one timed.
    keepers = [pid for pid in agent.pids() if _comm(pid) == "rating-keeper"]
    for pid in keepers:
        os.kill(pid, signal.SIGSTOP)
    try:
        return await _timeline(args, agent, gen, deck_dir, authorizer, log, watcher)
    finally:
        for pid in keepers:
            os.kill(pid, signal.SIGCONT)
        await watcher.close()


async def _timeline(args, agent, gen, deck_dir: str, authorizer: Authorizer, log, watcher) -> dict:
    env = {**agent.env, "RATING_LOG_LEVEL": "INFO"}
    workers = workers_of(agent)
    result: dict = {"workers": len(workers)}
    before = await _changes(watcher)
    # CPU used by the import (the CLI) and by PostgreSQL meanwhile: the work, whatever else shares the cores
    cpu_before = (resource.getrusage(resource.RUSAGE_CHILDREN), cpu_seconds(POSTGRES_PID))
    managers = [pid for pid in agent.pids() if _comm(pid) == "rating-manager"]  # an upload's import and build
    manager_before = sum(cpu_seconds(pid) for pid in managers)
    wall, started = time.time(), time.perf_counter()
    deadline = started + args.timeout
    if args.load == "copy":
        result["copy_seconds"] = await copy_load(agent.env["RATING_DATABASE_URL"], gen.deck)
        log(f"copied into PostgreSQL in {result['copy_seconds']:.1f}s; building")
        argv = ["build-decks"]
    else:
        argv = ["import", "rates", str(gen.deck), "--quiet"]
    if args.load == "upload":  # through the agent's port (its manager process imports and builds)
        process, output = None, asyncio.ensure_future(upload(agent.url, gen.deck, args.timeout))
    else:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "agent", *argv, cwd=ROOT, env=env, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        output = asyncio.ensure_future(process.communicate())
    first_authorized = asyncio.ensure_future(authorizer.until_authorized(deadline, pause=0.05))
    moments: dict[str, float] = {}
    try:
        while time.perf_counter() < deadline and ("mapped" not in moments or "exit" not in moments):
            now = time.perf_counter()
            if output.done() and "exit" not in moments:
                moments["exit"] = now
                if process is None:
                    status, answer = output.result()
                    if status != 200:
                        raise RuntimeError(f"the upload failed: {status} {answer[:3000]!r}")
                elif process.returncode != 0:
                    out, errors = output.result()
                    raise RuntimeError(f"agent {' '.join(argv)} failed:\n{out.decode()}\n{errors.decode()[-3000:]}")
            if "deck" not in moments:
                seen = await _changes(watcher)
                if "bulk" not in moments and seen.get("bulk", 0) > before.get("bulk", 0):
                    moments["bulk"] = now
                if seen.get("deck", 0) > before.get("deck", 0):
                    moments["deck"] = now
                    moments.setdefault("bulk", now)
            if "mapped" not in moments and all(maps_deck(pid, deck_dir) for pid in workers):
                moments["mapped"] = now
            await asyncio.sleep(0.02)
        if "mapped" not in moments:
            raise TimeoutError(f"the deck was not active in every worker after {args.timeout:.0f}s")
        authorized = await first_authorized
    finally:
        first_authorized.cancel()
        if process is None:
            output.cancel()
        elif process.returncode is None:
            process.kill()
            await process.wait()
    _, errors = (0, b"") if process is None else output.result()
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    result["cli_cpu"] = children.ru_utime + children.ru_stime - cpu_before[0].ru_utime - cpu_before[0].ru_stime
    result["postgres_cpu"] = cpu_seconds(POSTGRES_PID) - cpu_before[1]
    result["manager_cpu"] = sum(cpu_seconds(pid) for pid in managers) - manager_before
    built = re.search(r"^(.*)deck of tenant '[^']*': (\d+) rates read in ([\d.]+)s, built in ([\d.]+)s(.*)$",
                      errors.decode(), re.M)
    result["built_by"] = "the agent's deck builder (housekeeper)" if built is None else f"`{' '.join(argv[:2])}`"
    if process is None:
        result["built_by"] = "the upload, in the agent's manager"
        result["answered"] = moments["exit"] - started
    if built is not None:
        result.update(rows=int(built.group(2)), read=float(built.group(3)), build=float(built.group(4)),
                      build_log=built.group(5).strip())
        # built by the import itself, from its own rows while PostgreSQL writes them (store/decks.ImportBuild)
        result["during_import"] = "during its merge" in built.group(5) or "went to COPY" in built.group(5)
        logged = _log_moment(built.group(1))
        if logged is not None:  # the build's start, from the log line written at its end
            result["build_start"] = logged - wall - result["build"]
            if not result["during_import"]:
                result["build_start"] -= result["read"]
    for found in re.finditer(r"(\d+ rows of the deck copied .*|\d+ rows of other pricelists written in place .*"
                             r"|the deck's pairs .*|pricelist '.*' swapped in .*)$", errors.decode(), re.M):
        result.setdefault("import_log", []).append(found.group(1))  # the importer's own phases (INFO)
    result.update({name: moment - started for name, moment in moments.items()})
    result["first_authorized"] = None if authorized is None else authorized - started
    return result


# ----------------------------------------------------------------------------------------- lookups

async def _catalog(database_url: str, deck_dir: str):
    from agent.store.catalog import load_catalog
    from agent.store.database import create_pool

    pool = await create_pool(database_url, max_size=2)
    try:
        return await load_catalog(pool, deck_dir)
    finally:
        await pool.close()


def measure(database_url: str, deck_dir: str, destinations_file: Path, lookups: int, rounds: int) -> dict:
    """In a fresh process: cold and warm lookups, µs per call, per round."""
    from datetime import timezone

    from agent.pricing.destination import number_of
    from agent.pricing.plan import plan_call
    from agent.pricing.routing import route

    at = datetime.now(timezone.utc)
    catalog = asyncio.run(_catalog(database_url, deck_dir))
    table = catalog.table(TENANT)
    # One destination per longest match: a cold pass then remembers nothing it could use again.
    picked, seen = [], set()
    for destination in destinations_file.read_text().split():
        longest = table.longest(destination)
        key = longest[0] if longest else destination
        if key not in seen:
            seen.add(key)
            picked.append(destination)
            if len(picked) >= lookups:
                break
    account = next(a for a in catalog.accounts.values()
                   if a.pricelist_tags == ("standard",) and a.type.value == "PREPAID")
    # An account of every pricelist: a carrier may then have offers from several pricelists (routing's
    # general path over a chain, not the one-source-per-carrier path of the account above).
    every = next((a for a in catalog.accounts.values() if not a.pricelist_tags and not a.carrier_tags), account)
    calls = {
        "Deck.number_matches": lambda c, d: c.table(TENANT).base.number_matches(number_of(d)),
        "Deck.deck_keys": lambda c, d: c.table(TENANT).base.deck_keys(number_of(d)),
        "route": lambda c, d: route(c, account, d, at),
        "route, every pricelist": lambda c, d: route(c, every, d, at),
        "plan_call": lambda c, d: plan_call(c, TENANT, account.account_tag, None, d, at),
    }

    found = [route(catalog, account, d, at) for d in picked]
    result = {"lookups": len(picked), "priced": sum(1 for rate, _ in found if rate is not None) / len(picked),
              "carriers": sum(len(carriers) for _, carriers in found) / len(picked), "rounds": rounds,
              "table_type": type(table).__name__}
    del catalog, table, found  # its mappings would keep the deck's pages in memory below
    # As a worker runs (serve.py): what start-up made is kept out of the collector's passes, so they walk
    # only what the lookups make.
    gc.collect()
    gc.freeze()

    def per_call(function, fresh) -> tuple[float, float]:
        """(wall, CPU) µs per call of a pass over the destinations; CPU time discounts a busy host."""
        started, cpu = time.perf_counter(), time.process_time()
        for destination in picked:
            function(fresh, destination)
        return ((time.perf_counter() - started) / len(picked) * 1e6,
                (time.process_time() - cpu) / len(picked) * 1e6)

    result["load_before"] = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    for name, function in calls.items():
        passes: dict[str, list] = {"cold": [], "cleared": [], "warm": []}
        for _ in range(rounds):
            fresh = asyncio.run(_catalog(database_url, deck_dir))  # a new Deck: mapped anew, nothing remembered
            passes["cold"].append(per_call(function, fresh))
            passes["warm"].append(per_call(function, fresh))
            fresh.routes.clear()  # what a worker remembers, forgotten: its mappings stay
            fresh.table(TENANT).base.forget()
            passes["cleared"].append(per_call(function, fresh))
        result[name] = passes
    disk = []
    for _ in range(min(rounds, 3)):
        fresh = None
        gc.collect()
        drop_page_cache(Path(deck_dir))
        fresh = asyncio.run(_catalog(database_url, deck_dir))
        disk.append(per_call(calls["route"], fresh))
    result["route"]["disk"] = disk
    result["load_after"] = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    return result


def _fresh_process(database_url: str, deck_dir: str, destinations: Path, lookups: int, rounds: int,
                   timeout: float) -> dict:
    argv = [sys.executable, str(Path(__file__).resolve()), "--measure", "--database-url", database_url,
            "--deck-dir", deck_dir, "--destinations-file", str(destinations), "--lookups", str(lookups),
            "--rounds", str(rounds)]
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"measuring process failed:\n{done.stdout}\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------------ the driver

def generated(args, workdir: Path, log):
    """The generated catalog and deck: from --data when it holds these arguments' files, else made."""
    import generate

    wanted = {"prefixes": args.prefixes, "carriers": args.carriers, "accounts": 100,
              "destinations": args.destinations, "seed": args.seed}
    folder = Path(args.data) if args.data else workdir / "data"
    manifest = folder / "bench_table.json"
    if manifest.exists():
        saved = json.loads(manifest.read_text())
        if saved["arguments"] == wanted:
            log(f"reusing the deck generated in {folder}")
            return generate.Generated(**{**saved["generated"], **{k: Path(v) for k, v in saved["paths"].items()}})
    log(f"generating {args.prefixes:,} prefixes into {folder}")
    gen = generate.generate(folder, args.prefixes, account_count=100, carrier_count=args.carriers,
                            destination_count=args.destinations, seed=args.seed)
    paths = {k: str(getattr(gen, k)) for k in ("directory", "catalog", "deck", "destinations", "accounts")}
    manifest.write_text(json.dumps({"arguments": wanted, "paths": paths, "generated": {
        k: getattr(gen, k) for k in ("prefixes", "rate_rows", "account_count", "seconds")}}))
    return gen


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def report(args, gen, loaded: dict, deck_info: dict, baseline: dict, after: dict, start: dict,
           lookups: dict) -> str:
    mb, prefixes = 2**20, gen.prefixes
    rows = deck_info["rates"]
    lines = [
        f"Deck: {prefixes:,} prefixes, {rows:,} rates (generated in {gen.seconds:.0f}s); agent with"
        f" {WORKERS} workers; load `{args.load}`; load average {loaded['load_before']} before,"
        f" {loaded['load_after']} after the deck went in",
        "",
        "| phase | seconds | how it is told |",
        "|---|---:|---|",
    ]
    if args.load == "copy":
        lines.append(f"| load into PostgreSQL (COPY, keys added back) | {loaded['copy_seconds']:.1f} |"
                     " bench's own COPY, not the CLI import |")
    import_end = loaded.get("build_start", loaded["bulk"])
    if loaded.get("during_import"):  # the import builds the deck itself while PostgreSQL merges
        begun = loaded.get("build_start", float("nan"))
        lines += [
            f"| (a) import into PostgreSQL (`python -m agent import rates`), building the deck alongside |"
            f" {loaded['bulk']:.1f} | start to its commit (`bulk` change visible) |",
            f"| (a) of which: the CSV staged and the rates read for the build, until the build starts |"
            f" {begun:.1f} | start to the build's start (CLI log line) |",
            f"| (a) of which: the rates read for the build (COPY out of the import's transaction, parsed) |"
            f" {loaded['read']:.1f} | CLI log line |",
            f"| (a) of which, in a thread beside PostgreSQL's writes: building the files | {loaded['build']:.1f} |"
            " CLI log line |",
            f"| (a) of which: PostgreSQL's writes left after the build's start | {loaded['bulk'] - begun:.1f} |"
            " the build's start to the commit |",
        ]
    elif args.load == "cli":
        lines.append(f"| (a) import into PostgreSQL (`python -m agent import rates`) | {loaded['bulk']:.1f} |"
                     " start to its `bulk` change visible |")
    elif args.load == "upload":
        lines.append(f"| (a) upload (HTTP, the agent's manager) into PostgreSQL, building the deck alongside |"
                     f" {loaded['bulk']:.1f} | start to its commit (`bulk` change visible) |")
    if "read" in loaded and not loaded.get("during_import"):
        between = max(0.0, import_end - loaded["bulk"])
        lines += [
            f"| (b) deck build: from the `bulk` change to the build's start | {between:.1f} |"
            " CLI log line, minus the two below |",
            f"| (b) deck build: reading PostgreSQL (`read_columns`) | {loaded['read']:.1f} | CLI log line |",
            f"| (b) deck build: building the files (`build_columns`) | {loaded['build']:.1f} | CLI log line |",
        ]
    whole = "(b) after the commit: the build's end awaited, the deck sealed and activated" \
        if loaded.get("during_import") else "(b) deck build, whole"
    lines += [
        f"| {whole}: `bulk` change to the `deck` change | {loaded['deck'] - loaded['bulk']:.1f} |"
        f" polling catalog_changes; built by {loaded['built_by']} |",
        f"| (c) activation: `deck` change to every worker mapping it | {loaded['mapped'] - loaded['deck']:.2f} |"
        f" polling /proc/PID/maps of {loaded['workers']} workers |",
        f"| upload start to every worker rating with the deck | **{loaded['mapped']:.1f}** | (a)+(b)+(c) |",
        f"| CPU seconds meanwhile: the import's process / PostgreSQL (all its processes) |"
        f" {loaded.get('cli_cpu', float('nan')):.1f} / {loaded.get('postgres_cpu', float('nan')):.1f} |"
        " /proc, getrusage: the work, whatever else shares the cores |",
        f"| upload start to the first authorization rated on it | {loaded['first_authorized'] or float('nan'):.1f}"
        " | polling /v1/authorization |",
        f"| agent start with the deck built, to the first authorization | **{start['first_authorized']:.2f}** |"
        " `python -m agent serve`, polling /v1/authorization |",
        "",
        "| memory, all agent processes | value | per prefix | per rate |",
        "|---|---:|---:|---:|",
        f"| deck files on disk | {deck_info['bytes'] / mb:,.1f} MB | {deck_info['bytes'] / prefixes:,.1f} B |"
        f" {deck_info['bytes'] / rows:,.1f} B |",
        f"| PSS of the deck's mappings, summed over {after['processes']} processes (after"
        f" {after['authorizations']:,} authorizations) | {after['deck_pss'] / mb:,.1f} MB |"
        f" {after['deck_pss'] / prefixes:,.1f} B | {after['deck_pss'] / rows:,.1f} B |",
        f"| PSS of the deck's mappings after a restart and the first authorization (pages touched so far)"
        f" | {start['deck_pss'] / mb:,.1f} MB"
        f" | {start['deck_pss'] / prefixes:,.1f} B | |",
        f"| PSS of every agent process: before the deck / after | {baseline['pss'] / mb:,.0f} MB /"
        f" {after['pss'] / mb:,.0f} MB | {(after['pss'] - baseline['pss']) / prefixes:,.1f} B (the difference)"
        f" | |",
        "",
        f"Lookups in a fresh process: {lookups['lookups']:,} destinations with distinct longest matches,"
        f" {100 * lookups['priced']:.0f}% priced, {lookups['carriers']:.2f} carriers per route, account with"
        f" one pricelist, table {lookups['table_type']}; median of {lookups['rounds']} rounds, wall time (CPU"
        f" time of the process in brackets); each round a freshly loaded catalog (a new Deck, its files mapped"
        f" anew): cold, the same destinations again: warm, then with the routes and what the deck remembers"
        f" forgotten (mappings kept): memos cleared; load average {lookups['load_before']} before,"
        f" {lookups['load_after']} after",
        "",
        "| call | cold: fresh catalog, µs | cold: memos cleared, µs | warm, µs |"
        " cold: deck pages dropped from the page cache, µs |",
        "|---|---:|---:|---:|---:|",
    ]

    def cell(samples: list) -> str:
        if not samples:
            return ""
        walls = [s[0] for s in samples]
        return (f"{_median(walls):.1f} ({_median([s[1] for s in samples]):.1f} CPU; rounds"
                f" {min(walls):.1f}-{max(walls):.1f})")

    for name in ("Deck.number_matches", "Deck.deck_keys", "route", "route, every pricelist", "plan_call"):
        found = lookups.get(name)
        if found is None:
            continue
        lines.append(f"| `{name}` | {cell(found['cold'])} | {cell(found['cleared'])} | {cell(found['warm'])} |"
                     f" {cell(found.get('disk', []))} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prefixes", type=int, default=1_000_000)
    parser.add_argument("--carriers", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=5, help="rounds of cold and warm lookups (median)")
    # 10,000 destinations meet ~65,000 slots, within a process's memo (deck._MEMO_LIMIT): warm stays warm
    parser.add_argument("--lookups", type=int, default=10_000, help="destinations per lookup pass")
    parser.add_argument("--destinations", type=int, default=50_000, help="destinations generated")
    parser.add_argument("--authorizations", type=int, default=2_000, help="sent before measuring memory")
    parser.add_argument("--load", choices=("cli", "copy", "upload"), default="cli")
    parser.add_argument("--load-only", action="store_true",
                        help="stop once the deck is in every worker (no restart, no lookups): rounds of the load alone")
    parser.add_argument("--data", help="folder to keep the generated deck in and reuse it from")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds allowed for the deck to go in")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--database-url", help=argparse.SUPPRESS)
    parser.add_argument("--deck-dir", help=argparse.SUPPRESS)
    parser.add_argument("--destinations-file", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.measure:  # the fresh process
        print(json.dumps(measure(args.database_url, args.deck_dir, args.destinations_file, args.lookups,
                                 args.rounds)))
        return 0

    from bench_auth import machine_description, run_cli
    from devstack import AgentProcess, PostgresServer, RedisServer, scratch

    log = lambda text: print(f"[bench] {text}", file=sys.stderr, flush=True)  # noqa: E731
    load_average = lambda: " ".join(Path("/proc/loadavg").read_text().split()[:3])  # noqa: E731
    status = 0
    try:
        with scratch("bench-table-", args.keep) as (workdir, stops):
            log(f"working in {workdir}")
            redis = RedisServer(workdir / "redis")
            stops.append(redis.stop)
            redis.start()
            postgres = PostgresServer(workdir / "postgres")
            stops.append(lambda: postgres.stop("immediate"))
            postgres.start()
            global POSTGRES_PID
            POSTGRES_PID = postgres.process.pid
            gen = generated(args, workdir, log)
            out, seconds = run_cli(redis.url, postgres.url, "import", "catalog", str(gen.catalog))
            log(f"catalog: {out} ({seconds:.1f}s); starting the agent without rates")
            settings = {"workers": WORKERS, "log_level": "WARNING"}
            agent = AgentProcess(redis.url, postgres.url, workdir, **settings)
            stops.append(agent.stop)
            agent.start(timeout=120)
            deck_dir = agent.env["RATING_DECK_DIR"]
            authorizer = Authorizer(agent.url, gen.accounts.read_text().split(), gen.destinations.read_text().split())
            probe = asyncio.run(authorizer.sample(8))
            log(f"before the deck: {probe}")
            baseline = memory(agent, deck_dir)
            load_before = load_average()
            log(f"loading {gen.rate_rows:,} rates ({args.load})")
            loaded = asyncio.run(load_deck(args, agent, gen, deck_dir, authorizer, log))
            loaded.update(load_before=load_before, load_after=load_average())
            log(f"in: {json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in loaded.items()})}")
            if args.load_only:  # the load's phases alone, as one JSON line (loadtest/BENCHMARKS.md, issue 11)
                print(json.dumps({"load": args.load, "prefixes": gen.prefixes, "rates": gen.rate_rows, **{
                    k: round(v, 2) if isinstance(v, float) else v for k, v in loaded.items()}}), flush=True)
                return status
            outcomes = asyncio.run(authorizer.sample(args.authorizations))
            log(f"{args.authorizations:,} authorizations: {outcomes}")
            after = {**memory(agent, deck_dir), "authorizations": args.authorizations}
            folders = [p for p in Path(deck_dir).rglob("meta.json")]
            meta = json.loads(max(folders, key=lambda p: int(p.parent.name)).read_text())
            deck_info = {"rates": meta["rates"],
                         "bytes": sum(f.stat().st_size for f in max(folders, key=lambda p: int(p.parent.name)).parent.iterdir())}
            agent.stop()

            log("starting the agent again, the deck built")
            again = AgentProcess(redis.url, postgres.url, workdir, **settings)
            stops.append(again.stop)

            async def restart() -> dict:
                started = time.perf_counter()
                ready = asyncio.ensure_future(asyncio.to_thread(again.start, 120))
                authorized = await Authorizer(again.url, authorizer.accounts, authorizer.destinations) \
                    .until_authorized(started + 120)
                await ready
                if authorized is None:
                    raise TimeoutError("no authorization within 120s of the agent's start")
                return {"first_authorized": authorized - started}

            start = asyncio.run(restart())
            start.update(memory(again, deck_dir))
            log(f"restart: {start['first_authorized']:.2f}s to the first authorization")
            again.stop()

            log(f"lookups in a fresh process ({args.rounds} rounds)")
            lookups = _fresh_process(postgres.url, deck_dir, gen.destinations, args.lookups, args.rounds, 3600)
            print(f"Machine: {machine_description()}\n")
            print(report(args, gen, loaded, deck_info, baseline, after, start, lookups), flush=True)
    except KeyboardInterrupt:
        print("\n[bench] interrupted; stopping everything", file=sys.stderr)
        status = 130
    return status


if __name__ == "__main__":
    sys.exit(main())
