"""SIP load through a real Kamailio, without and with rating, in one run.

    python loadtest/sip_load.py [--rate 300] [--calls 3000] [--hold-ms 100] [--rounds 1]
    python loadtest/sip_load.py --breakdown --rate 200 --calls 2000 --rounds 3
    python loadtest/sip_load.py --step 150,200,250,300,400,600,800 --step-seconds 8 --rounds 2
    python loadtest/sip_load.py --overload --modes rating --rate 300 --calls 3000 --rounds 3 [--max-in-flight 0]

Starts on free loopback ports, in a temporary folder: Redis, PostgreSQL, the agent
(`python -m agent serve`), one SIPp carrier answering every call, then for each mode a Kamailio from
kamailio/kamailio.cfg and a SIPp caller making `--calls` calls at `--rate` calls/s, each lasting
`--hold-ms`:

  relay   Kamailio relays and tracks dialogs, no rating (WITH_RATING not defined)
  rating  the same plus the agent: authorization (transaction suspended), begin and end per call
  zero    (named in --modes) rating against a zero-cost agent: loadtest/echo.py --canyan answers the requests
          with fixed valid answers (authorized, the carrier; ok), no Redis, no PostgreSQL: what rating costs
          Kamailio (and the machine) when the agent costs almost nothing
  NAME    (with --config NAME=DIR, repeatable) rating with the kamailio.cfg and rating.cfg of DIR instead: an
          A/B of configuration changes against the same agent, Redis and PostgreSQL, in the same run
  NAME    (with --agent NAME=DIR, repeatable) rating through the agent of source tree DIR (e.g. a worktree of an
          earlier commit), with a Redis and a PostgreSQL of its own so that each agent's CPU, commands and
          rows are counted apart: an A/B of agent changes in the same run

and prints, per mode, answered calls per second, failed calls and retransmissions, then the ratio
rating/relay. With `--rounds N` the modes take turns N times and every number is the median of the rounds,
with their range. Kamailio knows the SIPp caller as a trusted peer (WITH_IPAUTH: 127.0.0.1, any port, billed
to the load account, not rate-limited by pike), so no call is digest-challenged. Bounded: `--calls` calls per
mode and round, `--timeout` seconds per mode and round at most.

`--breakdown` also reports, per call, where the time goes:
  - CPU (user + system, from /proc/PID/stat before and after, children included) of Kamailio (split into the
    http_async_client workers, found as the processes holding the connections to the agent, and the rest),
    the agent's HTTP workers, manager, housekeeper and supervisor, Redis, PostgreSQL, the SIPp caller and
    the SIPp carrier;
  - the latency of each of the three agent requests as Kamailio saw it (RATING_TIMING: a log line when the
    request is sent and when its answer is routed; also curl's own duration) and as the agent saw it (its
    `rating_request_duration_seconds` histogram from /metrics, so percentiles are bucket bounds);
  - SIPp's INVITE -> 200 time per call (-trace_rtt), retransmissions and failures; UDP datagrams dropped, machine-
    wide and per socket (Kamailio's SIP socket, the caller's, the carrier's: `ss -uam`, with their buffer sizes);
  - TCP connections between Kamailio and the agent (distinct ones seen by `ss` every 0.25 s, open at the
    end, and the kernel's passive opens during the run: machine-wide, so an upper bound);
  - Redis commands and writes per call (INFO: commandstats, rdb_changes_since_last_save, AOF bytes) and
    PostgreSQL transactions, rows and WAL bytes per call (pg_stat_database, pg_current_wal_lsn);
  - what the configuration's JSON handling costs: a Kamailio of its own runs the jansson_set / jansson_get /
    jansson_array_size calls of one call in a loop and times them against an empty loop.
The log lines cost Kamailio CPU themselves: `--no-timing` leaves them out (CPU then as in production).

The agent reaches Redis over its Unix socket, as README advises for an agent on Redis' host (cheaper than TCP for
both); `--redis-tcp` uses TCP instead.

`--step R1,R2,...` finds every mode's highest clean rate (0 failed calls and fewer than 1% of the calls
retransmitted, in most rounds) among these rates, `--step-seconds` of calls per round, and prints the ratio of
each rating mode's to the relay's. A mode not clean at a rate is not run at the higher ones.

`--overload` (past the clean rate): a call refused by the rating (500 Rating is not available, 503 Rating is
overloaded: loadtest/sip/uac_overload.xml) is an outcome, not a failure; it reports the offered and answered
calls per second (the goodput), the refusals and their INVITE -> refusal times (> 50 ms counted), and INVITE ->
200. `--max-in-flight N` sets the agent's bound (0: none), for a run without it to compare with.

Needs kamailio, sipp and http_async_client.so (kamailio/build-http-async-client.sh provides them).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "kamailio")]

from devstack import AgentProcess, PostgresServer, RedisServer, process_tree  # noqa: E402
from kamailio_harness import (  # noqa: E402
    Carrier, Kamailio, SetupError, add_trusted_peer, create_auth_database, ensure_kamailio, free_port, read_stats,
    system_modules_dir,
)

LOAD_UAC = ROOT / "loadtest" / "sip" / "uac_load.xml"
OVERLOAD_UAC = ROOT / "loadtest" / "sip" / "uac_overload.xml"  # --overload: refusals are an expected outcome
ACCOUNT = "load-caller"
NUMBER = "39040123456"
OPERATIONS = ("authorization", "begin_transaction", "end_transaction")
AGENT_ENDPOINTS = {"authorization": "authorization", "begin_transaction": "begin", "end_transaction": "end"}
AGENT_PARTS = {"rating-keeper": "agent housekeeper", "rating-manager": "agent manager",
               "rating-super": "agent supervisor"}


def catalog(carrier_port: int) -> dict:
    return {
        "carriers": [{"carrier_tag": "load-carrier", "host": "127.0.0.1", "port": carrier_port,
                      "protocol": "UDP", "active": True}],
        "pricelists": [{"pricelist_tag": "load", "name": "load test", "currency": "EUR"}],
        "rates": [{"pricelist_tag": "load", "carrier_tag": "load-carrier", "prefix": "39", "connect_fee": 0,
                   "rate": 1, "rate_increment": 1, "interval_start": 0, "description": "load"}],
        "accounts": [{"account_tag": ACCOUNT, "type": "PREPAID", "balance": 10**12,
                      "max_concurrent_transactions": 100_000, "pricelist_tags": ["load"], "active": True}],
    }


TICKS = os.sysconf("SC_CLK_TCK")


# ---- CPU from /proc ----

def _stat(pid: int) -> tuple[str, int, int] | None:
    """(command name, parent pid, CPU ticks of the process and of its children it has waited for)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            text = handle.read()
    except OSError:
        return None
    comm = text[text.index("(") + 1:text.rindex(")")]
    fields = text.rsplit(")", 1)[1].split()
    # fields[0] is field 3 (state): ppid is field 4, utime 14, stime 15, cutime 16, cstime 17
    return comm, int(fields[1]), sum(int(f) for f in fields[11:15])


def cpu_snapshot(roots: dict[str, int]) -> dict[str, dict[int, tuple[str, int]]]:
    """Per named root: every process of its tree, with its command name and CPU ticks (children included:
    the CPU of a process that exits during the run moves into its parent's count, nothing is lost)."""
    snapshot: dict[str, dict[int, tuple[str, int]]] = {}
    for name, root in roots.items():
        snapshot[name] = {}
        for pid in process_tree(root):
            found = _stat(pid)
            if found:
                snapshot[name][pid] = (found[0], found[2])
    return snapshot


def cpu_seconds(pid: int, group: bool = False) -> float:
    """CPU time (user + system) used so far by a process, or by every process of its tree."""
    pids = process_tree(pid) if group else [pid]
    return sum((_stat(p) or ("", 0, 0))[2] for p in pids) / TICKS


# ---- connections between Kamailio and the agent ----

def agent_connections(agent_port: int) -> list[tuple[str, int | None]]:
    """Established TCP connections to the agent's port: (client address:port, pid holding the client end)."""
    done = subprocess.run(["ss", "-tnpH", "state", "established", "dport", f"= :{agent_port}"],
                          capture_output=True, text=True, timeout=10)
    found = []
    for line in done.stdout.splitlines():
        parts = line.split()
        if len(parts) < 3:
            continue
        local = parts[2]
        pid = re.search(r"pid=(\d+)", line)
        found.append((local, int(pid.group(1)) if pid else None))
    return found


def passive_opens() -> int:
    """The kernel's count of accepted TCP connections (machine-wide: other jobs count too)."""
    lines = Path("/proc/net/snmp").read_text().splitlines()
    tcp = [line.split() for line in lines if line.startswith("Tcp:")]
    return int(tcp[1][tcp[0].index("PassiveOpens")])


def udp_counters() -> dict[str, int]:
    """The kernel's UDP counters (machine-wide): RcvbufErrors counts datagrams dropped on a full socket."""
    lines = [line.split() for line in Path("/proc/net/snmp").read_text().splitlines() if line.startswith("Udp:")]
    return dict(zip(lines[0][1:], map(int, lines[1][1:])))


_UDP_SOCKET = re.compile(r"127\.0\.0\.1:(\d+)\s+\S+\s+skmem:\(([^)]*)\)")


def udp_sockets() -> dict[int, tuple[int, int]]:
    """Per UDP port on 127.0.0.1: (receive buffer in bytes, datagrams dropped on it so far) from `ss -uam`."""
    done = subprocess.run(["ss", "-uamnH"], capture_output=True, text=True, timeout=10)
    found = {}
    for port, skmem in _UDP_SOCKET.findall(done.stdout):
        fields = {f.rstrip("0123456789"): int(f.lstrip("abcdefghijklmnopqrstuvwxyz") or 0) for f in skmem.split(",")}
        found[int(port)] = (fields.get("rb", 0), fields.get("d", 0))
    return found


def wchan(pid: int) -> str:
    """Where in the kernel a process sleeps ("0": running or runnable)."""
    try:
        return Path(f"/proc/{pid}/wchan").read_text() or "0"
    except OSError:
        return "?"


class ConnectionWatch(threading.Thread):
    """Samples the connections to the agent every `interval` seconds until stopped, and, every
    `wchan_interval`, where each Kamailio process is waiting (/proc/PID/wchan)."""

    def __init__(self, agent_port: int | None, kamailio_pid: int, interval: float = 0.25,
                 wchan_interval: float = 0.02) -> None:
        super().__init__(daemon=True)
        self.agent_port, self.interval, self.wchan_interval = agent_port, interval, wchan_interval
        self.kamailio_pids = process_tree(kamailio_pid)
        self.seen: set[str] = set()
        self.pids: set[int] = set()
        self.most = 0
        self.waits: dict[int, dict[str, int]] = {}
        # per UDP port: receive buffer, first and last drop count seen (a socket's count only grows)
        self.udp: dict[int, list[int]] = {}
        self._stop_event = threading.Event()

    def sample(self) -> None:
        for port, (rcvbuf, drops) in udp_sockets().items():
            seen = self.udp.setdefault(port, [rcvbuf, drops, drops])
            seen[0], seen[2] = rcvbuf, max(seen[2], drops)
        if self.agent_port is None:
            return
        found = agent_connections(self.agent_port)
        self.most = max(self.most, len(found))
        for local, pid in found:
            self.seen.add(local)
            if pid:
                self.pids.add(pid)

    def run(self) -> None:
        next_sample = 0.0
        while not self._stop_event.is_set():
            if time.monotonic() >= next_sample:
                self.sample()
                next_sample = time.monotonic() + self.interval
            for pid in self.kamailio_pids:
                where = self.waits.setdefault(pid, {})
                name = wchan(pid)
                where[name] = where.get(name, 0) + 1
            self._stop_event.wait(self.wchan_interval)

    def wait_summary(self, http_pids: set[int]) -> dict[str, dict[str, float]]:
        """Per kind of Kamailio process (SIP/UDP workers are the ones that waited in the UDP receive, HTTP
        workers hold the agent connections): the share of samples in each kernel wait."""
        kinds: dict[str, dict[str, int]] = {}
        for pid, where in self.waits.items():
            if pid in http_pids:
                kind = "http workers"
            elif any("udp" in name or "skb" in name for name in where):
                kind = "sip workers"
            else:
                kind = "other"
            total = kinds.setdefault(kind, {})
            for name, count in where.items():
                total[name] = total.get(name, 0) + count
        out = {}
        for kind, where in kinds.items():
            samples = sum(where.values())
            out[kind] = {name: count / samples for name, count in sorted(where.items(), key=lambda i: -i[1])[:5]}
        return out

    def stop(self) -> None:
        self._stop_event.set()
        self.join(10)
        self.sample()


# ---- Redis, PostgreSQL, agent metrics ----

def redis_info(url: str) -> dict[str, float]:
    import redis

    client = redis.Redis.from_url(url, decode_responses=True)
    try:
        info = client.info("all")
    finally:
        client.close()
    out = {"commands": info.get("total_commands_processed", 0), "writes": info.get("rdb_changes_since_last_save", 0),
           "aof_bytes": info.get("aof_current_size", 0)}
    for key, value in info.items():
        if key.startswith("cmdstat_") and isinstance(value, dict):
            out["cmd:" + key[8:]] = value.get("calls", 0)
    return out


def postgres_stats(url: str) -> dict[str, float]:
    import asyncpg

    async def read() -> dict[str, float]:
        connection = await asyncpg.connect(url)
        try:
            row = await connection.fetchrow(
                "SELECT xact_commit, tup_inserted, tup_updated, tup_deleted, tup_fetched,"
                " pg_current_wal_lsn() - '0/0'::pg_lsn AS wal FROM pg_stat_database WHERE datname = current_database()")
            return {key: float(row[key]) for key in row.keys()}
        finally:
            await connection.close()

    return asyncio.run(read())


_BUCKET = re.compile(r'^rating_request_duration_seconds_bucket\{endpoint="([^"]+)",le="([^"]+)"\} ([0-9.e+]+)$')
_SUM = re.compile(r'^rating_request_duration_seconds_(sum|count)\{endpoint="([^"]+)"\} ([0-9.e+]+)$')


def agent_histograms(agent_url: str) -> dict[str, dict]:
    """The agent's latency histogram per endpoint: cumulative bucket counts by upper bound, sum, count."""
    with urllib.request.urlopen(agent_url + "/metrics", timeout=10) as reply:
        text = reply.read().decode()
    found: dict[str, dict] = {}
    for line in text.splitlines():
        match = _BUCKET.match(line)
        if match:
            endpoint, bound, value = match.groups()
            entry = found.setdefault(endpoint, {"buckets": {}, "sum": 0.0, "count": 0.0})
            entry["buckets"][float(bound)] = float(value)
            continue
        match = _SUM.match(line)
        if match:
            kind, endpoint, value = match.groups()
            found.setdefault(endpoint, {"buckets": {}, "sum": 0.0, "count": 0.0})[kind] = float(value)
    return found


def histogram_summary(before: dict, after: dict) -> dict[str, dict]:
    out = {}
    for endpoint, now in after.items():
        was = before.get(endpoint, {"buckets": {}, "sum": 0.0, "count": 0.0})
        count = now["count"] - was["count"]
        if count <= 0:
            continue
        bounds = sorted(now["buckets"])
        cumulative = [(b, now["buckets"][b] - was["buckets"].get(b, 0.0)) for b in bounds]

        def bound_of(share: float) -> float:
            for b, c in cumulative:
                if c >= share * count:
                    return b
            return float("inf")

        out[endpoint] = {"count": count, "mean_ms": 1000 * (now["sum"] - was["sum"]) / count,
                         "p50_ms": 1000 * bound_of(0.5), "p99_ms": 1000 * bound_of(0.99),
                         "over_5ms": 1 - dict(cumulative).get(0.005, 0.0) / count}
    return out


# ---- Kamailio's RTIME log lines (RATING_TIMING) ----

_RTIME = re.compile(r"RTIME (send|recv) (\S+) (\S+) (\d+\.\d+)(?: (\d+) (\d+))?")


def percentile(values: list[float], share: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def kamailio_timings(log_text: str) -> dict[str, dict]:
    """Per operation: the time from just before http_async_query to the start of the answer's route (ms),
    and curl's own duration of the transfer (ms)."""
    sent: dict[str, tuple[str, float]] = {}
    answered: dict[str, tuple[float, float]] = {}
    for match in _RTIME.finditer(log_text):
        kind, op, key, moment, curl_us, _status = match.groups()
        if kind == "send":
            sent[key] = (op, float(moment))
        else:
            answered[key] = (float(moment), int(curl_us or 0) / 1000.0)
    waits: dict[str, list[float]] = {op: [] for op in OPERATIONS}
    curls: dict[str, list[float]] = {op: [] for op in OPERATIONS}
    unanswered = {op: 0 for op in OPERATIONS}
    for key, (op, moment) in sent.items():
        if key not in answered:
            unanswered[op] = unanswered.get(op, 0) + 1
            continue
        done, curl_ms = answered[key]
        waits.setdefault(op, []).append(1000 * (done - moment))
        curls.setdefault(op, []).append(curl_ms)
    out = {}
    for op, values in waits.items():
        if not values and not unanswered.get(op):
            continue
        out[op] = {"count": len(values), "unanswered": unanswered.get(op, 0),
                   "p50_ms": percentile(values, 0.5), "p90_ms": percentile(values, 0.9),
                   "p99_ms": percentile(values, 0.99), "max_ms": max(values, default=float("nan")),
                   "over_100ms": sum(v > 100 for v in values) / max(len(values), 1),
                   "curl_p50_ms": percentile(curls[op], 0.5), "curl_p99_ms": percentile(curls[op], 0.99)}
    return out


def sipp_rtts(workdir: Path) -> list[float]:
    """INVITE -> 200 times (ms) of the calls of the SIPp caller run in `workdir` (-trace_rtt)."""
    values: list[float] = []
    for path in workdir.glob("*_rtt.csv"):
        for line in path.read_text(errors="replace").splitlines()[1:]:
            parts = line.split(";")
            if len(parts) >= 2:
                try:
                    values.append(float(parts[1]))
                except ValueError:
                    pass
        path.unlink()
    return values


def overload_outcome(workdir: Path, result: dict, args: argparse.Namespace) -> dict:
    """--overload: answered and refused calls from the caller's response times (uac_overload.xml: timer 1 is
    INVITE -> 200, 2 INVITE -> 503 (shed by the agent), 3 INVITE -> 500 (too slow)), the goodput, and how fast
    the refusals came."""
    times: dict[str, list[float]] = {"1": [], "2": [], "3": []}
    for path in workdir.glob("*_rtt.csv"):
        for line in path.read_text(errors="replace").splitlines()[1:]:
            parts = line.split(";")
            if len(parts) >= 3 and parts[2].strip() in times:
                try:
                    times[parts[2].strip()].append(float(parts[1]))
                except ValueError:
                    pass
    answered, shed, slow = times["1"], times["2"], times["3"]
    refused = shed + slow
    busy = max(result["seconds"] - args.hold_ms / 1000.0, 1e-6)
    return {"answered": len(answered), "refused": len(refused), "shed": len(shed), "timed_out": len(slow),
            "calls_per_s": len(answered) / busy, "offered_per_s": result["created"] / busy,
            "refusal_ms": {"p50": percentile(refused, 0.5), "p99": percentile(refused, 0.99),
                           "max": max(refused, default=float("nan")), "over_50": sum(v > 50 for v in refused)},
            "shed_ms": {"p50": percentile(shed, 0.5), "p99": percentile(shed, 0.99),
                        "over_50": sum(v > 50 for v in shed)},
            "answer_ms": {"p50": percentile(answered, 0.5), "p99": percentile(answered, 0.99)}}


# ---- the SIPp caller ----

def run_load(workdir: Path, proxy_port: int, args: argparse.Namespace, during=None, port: int | None = None) -> dict:
    """One SIPp caller at a fixed rate; returns its counters, its own CPU and the answered calls/s.
    `during` is called every 0.1 s while it runs."""
    port = port or free_port()
    stat_file = workdir / f"caller-{port}.csv"
    argv = [
        "sipp", f"127.0.0.1:{proxy_port}", "-sf", str(OVERLOAD_UAC if args.overload else LOAD_UAC), "-s", NUMBER,
        "-set", "account", ACCOUNT,
        "-i", "127.0.0.1", "-p", str(port), "-m", str(args.calls), "-r", str(args.rate), "-rp", "1000",
        "-d", str(args.hold_ms), "-l", str(max(args.calls, 10)), "-nostdin", "-max_socket", "65000",
        "-timeout", f"{args.timeout}s", "-recv_timeout", "10000", "-max_retrans", "5",
        "-trace_stat", "-stf", str(stat_file), "-fd", "1",
        "-trace_err", "-error_file", str(workdir / f"caller-{port}.errors"),
    ]
    if args.sipp_buff:
        argv += ["-buff_size", str(args.sipp_buff)]
    if args.breakdown or args.overload:
        argv += ["-trace_rtt", "-rtt_freq", "1"]
    started = time.monotonic()
    process = subprocess.Popen(argv, cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               stdin=subprocess.DEVNULL)
    deadline = started + args.timeout + 30
    usage = None
    status = 0
    while True:
        pid, status, usage = os.wait4(process.pid, os.WNOHANG)
        if pid:
            break
        if time.monotonic() > deadline:
            process.kill()
            _, status, usage = os.wait4(process.pid, 0)
            break
        if during:
            during()
        time.sleep(0.1)
    process.returncode = os.waitstatus_to_exitcode(status)
    elapsed = time.monotonic() - started
    stats = read_stats(stat_file)
    answered = stats.get("SuccessfulCall(C)", 0)
    # calls are created over calls/rate seconds and the last one lasts hold_ms more
    busy = max(elapsed - args.hold_ms / 1000.0, 1e-6)
    return {
        "created": stats.get("TotalCallCreated", 0),
        "answered": answered,
        "failed": stats.get("FailedCall(C)", 0),
        "unfinished": args.calls - answered - stats.get("FailedCall(C)", 0),
        "retransmissions": stats.get("Retransmissions(C)", 0),
        "seconds": round(elapsed, 2),
        "calls_per_s": answered / busy,
        "sipp_exit": process.returncode,
        "caller_cpu_s": usage.ru_utime + usage.ru_stime if usage else 0.0,
        "failures": {k: v for k, v in stats.items() if k.startswith("Failed") and k != "FailedCall(C)" and v},
    }


# ---- the cost of the configuration's JSON handling ----

JSON_LOOPS = 20000
# one call's JSON work in rating.cfg: the authorization body (4 jansson_set) and its answer (authorized,
# units, carriers, their count, then the first carrier), the begin body (4) and its answer (ok), the end
# body (6) and its answer (transaction_tag, ok)
_JSON_PHASES = {
    "empty": "",
    "per_call": """
        $var(b) = "{}";
        jansson_set("string", "transaction_tag", "$var(ci)", "$var(b)");
        jansson_set("string", "account_tag", "$var(acc)", "$var(b)");
        jansson_set("string", "source", "$var(fu)", "$var(b)");
        jansson_set("string", "destination", "$var(tu)", "$var(b)");
        jansson_get("authorized", "$var(answer)", "$var(x)");
        jansson_get("max_available_units", "$var(answer)", "$var(x)");
        jansson_get("carriers", "$var(answer)", "$var(c)");
        jansson_array_size("", "$var(c)", "$var(x)");
        jansson_array_size("", "$var(c)", "$var(x)");
        jansson_get("[0]", "$var(c)", "$var(x)");
        $var(b) = "{}";
        jansson_set("string", "transaction_tag", "$var(ci)", "$var(b)");
        jansson_set("string", "account_tag", "$var(acc)", "$var(b)");
        jansson_set("string", "source", "$var(fu)", "$var(b)");
        jansson_set("string", "destination", "$var(tu)", "$var(b)");
        jansson_get("ok", "$var(ok)", "$var(x)");
        $var(b) = "{}";
        jansson_set("string", "transaction_tag", "$var(ci)", "$var(b)");
        jansson_set("string", "account_tag", "$var(acc)", "$var(b)");
        jansson_set("string", "source", "$var(fu)", "$var(b)");
        jansson_set("string", "destination", "$var(tu)", "$var(b)");
        jansson_set("string", "timestamp_begin", "$var(ts)", "$var(b)");
        jansson_set("string", "timestamp_end", "$var(ts)", "$var(b)");
        jansson_get("transaction_tag", "$var(ok)", "$var(x)");
        jansson_get("ok", "$var(ok)", "$var(x)");
""",
    # the same as rating.cfg does it now: bodies written out (route RATING_BODY), "ok" checked by a regular
    # expression (route RATING_CHECK_OK), the kept end's Call-ID not read back from the answer
    "per_call_direct": """
        $var(r_all) = $var(ci) + $var(acc) + $var(fu) + $var(tu);
        if ($var(r_all) =~ "[\\"\\\\[:cntrl:]]") { $var(b) = ""; }
        $var(b) = "{\\"transaction_tag\\":\\"" + $var(ci) + "\\",\\"account_tag\\":\\"" + $var(acc)
            + "\\",\\"source\\":\\"" + $var(fu) + "\\",\\"destination\\":\\"" + $var(tu) + "\\"}";
        jansson_get("authorized", "$var(answer)", "$var(x)");
        jansson_get("max_available_units", "$var(answer)", "$var(x)");
        jansson_get("carriers", "$var(answer)", "$var(c)");
        jansson_array_size("", "$var(c)", "$var(x)");
        jansson_array_size("", "$var(c)", "$var(x)");
        jansson_get("[0]", "$var(c)", "$var(x)");
        $var(r_all) = $var(ci) + $var(acc) + $var(fu) + $var(tu);
        if ($var(r_all) =~ "[\\"\\\\[:cntrl:]]") { $var(b) = ""; }
        $var(b) = "{\\"transaction_tag\\":\\"" + $var(ci) + "\\",\\"account_tag\\":\\"" + $var(acc)
            + "\\",\\"source\\":\\"" + $var(fu) + "\\",\\"destination\\":\\"" + $var(tu) + "\\"}";
        if ($var(ok) =~ "^\\{\\"ok\\":true[,}]") { $var(x) = 1; }
        $var(r_all) = $var(ci) + $var(acc) + $var(fu) + $var(tu);
        if ($var(r_all) =~ "[\\"\\\\[:cntrl:]]") { $var(b) = ""; }
        $var(b) = "{\\"transaction_tag\\":\\"" + $var(ci) + "\\",\\"account_tag\\":\\"" + $var(acc)
            + "\\",\\"source\\":\\"" + $var(fu) + "\\",\\"destination\\":\\"" + $var(tu)
            + "\\",\\"timestamp_begin\\":\\"" + $var(ts) + "\\",\\"timestamp_end\\":\\"" + $var(ts) + "\\"}";
        if ($var(ok) =~ "^\\{\\"ok\\":true[,}]") { $var(x) = 1; }
""",
    "one_body_jansson": """
        $var(b) = "{}";
        jansson_set("string", "transaction_tag", "$var(ci)", "$var(b)");
        jansson_set("string", "account_tag", "$var(acc)", "$var(b)");
        jansson_set("string", "source", "$var(fu)", "$var(b)");
        jansson_set("string", "destination", "$var(tu)", "$var(b)");
""",
    "one_get": """
        jansson_get("authorized", "$var(answer)", "$var(x)");
""",
}


def _kamailio_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def json_cost(workdir: Path, loops: int = JSON_LOOPS) -> dict[str, float]:
    """µs per iteration of each JSON phase, the empty loop's time subtracted, in a Kamailio of its own."""
    workdir.mkdir(parents=True, exist_ok=True)
    answer = json.dumps({
        "tenant": "default", "transaction_tag": "3a1f8c2e7b9d4f60@127.0.0.1", "account_tag": ACCOUNT,
        "destination_account_tag": None, "authorized": True, "authorized_destination": False,
        "unauthorized_account_tag": None, "unauthorized_reason": None, "max_available_units": 3600,
        "balance": 999999999, "carriers": ["UDP:127.0.0.1:5070"]})
    # compact, as the agent (orjson) writes it
    ok = json.dumps({"ok": True, "tenant": "default", "transaction_tag": "3a1f8c2e7b9d4f60@127.0.0.1",
                     "account_tag": ACCOUNT, "destination_account_tag": None}, separators=(",", ":"))
    body = []
    for name, code in _JSON_PHASES.items():
        body.append(f"""
    $var(i) = 0;
    $var(t0) = $TV(Sn);
    while ($var(i) < {loops}) {{
        $var(i) = $var(i) + 1;{code}
    }}
    xlog("L_ALERT", "JSONBENCH {name} $var(t0) $TV(Sn)\\n");""")
    cfg = f"""#!KAMAILIO
debug=1
log_stderror=yes
children=1
disable_tcp=yes
listen=udp:127.0.0.1:{free_port()}
max_while_loops={loops + 10}
mpath="{system_modules_dir()}"
loadmodule "pv.so"
loadmodule "xlog.so"
loadmodule "jansson.so"

event_route[core:worker-one-init] {{
    $var(ci) = "3a1f8c2e7b9d4f60@127.0.0.1";
    $var(acc) = "{ACCOUNT}";
    $var(fu) = "sip:{ACCOUNT}@127.0.0.1:5062";
    $var(tu) = "sip:{NUMBER}@127.0.0.1:5060";
    $var(ts) = "1764600000.123456";
    $var(answer) = {_kamailio_string(answer)};
    $var(ok) = {_kamailio_string(ok)};
    $var(x) = 0;
    $var(c) = "";{''.join(body)}
    xlog("L_ALERT", "JSONBENCH done\\n");
}}

request_route {{
    drop;
}}
"""
    path = workdir / "json-bench.cfg"
    path.write_text(cfg)
    log_path = workdir / "json-bench.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(["kamailio", "-f", str(path), "-DD", "-E", "-m", "64", "-M", "8", "-Y", str(workdir),
                                    "-w", str(workdir)], cwd=workdir, stdout=log, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and "JSONBENCH done" not in log_path.read_text(errors="replace"):
            if process.poll() is not None:
                raise SetupError(f"the JSON benchmark Kamailio exited: {log_path.read_text()[-2000:]}")
            time.sleep(0.2)
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(10)
    times = {m.group(1): float(m.group(3)) - float(m.group(2))
             for m in re.finditer(r"JSONBENCH (\w+) (\d+\.\d+) (\d+\.\d+)", log_path.read_text(errors="replace"))}
    empty = times.get("empty", 0.0)
    return {name: 1e6 * (seconds - empty) / loops for name, seconds in times.items() if name != "empty"}


# ---- one measured run of one mode ----

class ZeroAgent:
    """The zero mode's agent (loadtest/echo.py --canyan), with what measure() reads of an AgentProcess."""

    def __init__(self, workdir: Path, carrier_port: int) -> None:
        self.port = free_port()
        self.carrier = f"UDP:127.0.0.1:{carrier_port}"
        self.log_path = workdir / f"zero-agent-{self.port}.log"
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "ZeroAgent":
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, str(ROOT / "loadtest" / "echo.py"), "--canyan", "--port", str(self.port),
                 "--carrier", self.carrier], stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True)
        deadline = time.monotonic() + 15
        while True:  # bounded: until it answers
            try:
                with urllib.request.urlopen(self.url + "/ready", timeout=1):
                    return self
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise SetupError(f"the zero agent did not start: {self.log_path.read_text()[-2000:]}")
                time.sleep(0.1)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(10)
        self.process = None


class ConfigKamailio(Kamailio):
    """A harness Kamailio whose kamailio.cfg and rating.cfg come from another folder (an A/B of the config)."""

    config_dir: Path | None = None

    def write_config(self) -> Path:
        cfg = super().write_config()
        if self.config_dir is not None:
            for name in ("kamailio.cfg", "rating.cfg"):
                shutil.copy(self.config_dir / name, self.workdir / name)
        return cfg


def measure(mode: str, round_no: int, defines: dict, config_dir: Path | None, components: dict, auth_db: str,
            workdir: Path, args: argparse.Namespace) -> dict:
    agent, redis, postgres = components["agent"], components["redis"], components["postgres"]
    carrier = components["carrier"]
    kamailio = ConfigKamailio(workdir / f"kamailio-{mode}-{round_no}", defines={**defines, "WITH_AUTH": False},
                              auth_db=auth_db, ip_auth=True, shm_mb=args.shm_mb)
    kamailio.config_dir = config_dir
    kamailio.start()
    try:
        print(f"{mode} (round {round_no}): {args.calls} calls at {args.rate:g}/s, {args.hold_ms} ms each, "
              f"load average {os.getloadavg()[0]:.2f} ...", flush=True)
        roots = {"kamailio": kamailio.process.pid, "agent": agent.process.pid, "redis": redis.process.pid,
                 "postgres": postgres.process.pid, "carrier": carrier.process.pid}
        watch = (ConnectionWatch(agent.port if "WITH_RATING" in defines else None, kamailio.process.pid)
                 if args.breakdown else None)
        if args.breakdown:
            redis_before, pg_before = redis_info(redis.url), postgres_stats(postgres.url)
            hist_before, opens_before = agent_histograms(agent.url), passive_opens()
            udp_before = udp_counters()
        load_before = os.getloadavg()[0]
        cpu_before = cpu_snapshot(roots)
        if watch:
            watch.start()
        caller_port = free_port()
        result = run_load(kamailio.workdir, kamailio.port, args, port=caller_port)
        if args.overload:
            result.update(overload_outcome(kamailio.workdir, result, args))
        if watch:
            watch.stop()
        if args.breakdown:
            time.sleep(1.0 + 2.5)  # the last calls' ends, the agent's once-a-second metrics flush
        cpu_after = cpu_snapshot(roots)
        result["load_average"] = (load_before + os.getloadavg()[0]) / 2
        calls = max(result["created"], 1)
        http_pids = watch.pids if watch else set()
        cpu: dict[str, float] = {}
        for name, after in cpu_after.items():
            before = cpu_before.get(name, {})
            for pid, (comm, ticks) in after.items():
                used = ticks - before.get(pid, (comm, 0))[1]
                if name == "kamailio":
                    part = "kamailio http workers" if pid in http_pids else "kamailio other"
                elif name == "agent":
                    part = AGENT_PARTS.get(comm, "agent workers" if comm.startswith("rating-worker") else "agent other")
                elif name == "carrier":
                    part = "sipp carrier"
                else:
                    part = name
                cpu[part] = cpu.get(part, 0.0) + used
        cpu = {part: 1000 * ticks / TICKS / calls for part, ticks in cpu.items()}
        cpu["sipp caller"] = 1000 * result["caller_cpu_s"] / calls
        result["cpu_ms"] = cpu
        result["kamailio_ms"] = cpu.get("kamailio http workers", 0.0) + cpu.get("kamailio other", 0.0)
        result["agent_ms"] = sum(v for k, v in cpu.items() if k.startswith("agent"))
        if args.breakdown:
            rtts = sipp_rtts(kamailio.workdir)
            result["invite_200_ms"] = {"p50": percentile(rtts, 0.5), "p90": percentile(rtts, 0.9),
                                       "p99": percentile(rtts, 0.99), "over_500": sum(v > 500 for v in rtts)}
            redis_after, pg_after = redis_info(redis.url), postgres_stats(postgres.url)
            result["redis_per_call"] = {k: (redis_after[k] - redis_before.get(k, 0)) / calls for k in redis_after
                                        if redis_after[k] - redis_before.get(k, 0)}
            result["postgres_per_call"] = {k: (pg_after[k] - pg_before[k]) / calls for k in pg_after}
            result["agent_latency"] = histogram_summary(hist_before, agent_histograms(agent.url))
            udp_after = udp_counters()
            result["udp_drops_machine"] = udp_after.get("RcvbufErrors", 0) - udp_before.get("RcvbufErrors", 0)
            # which socket dropped them: Kamailio's SIP socket, the caller's, the carrier's
            result["udp_sockets"] = {}
            for name, port in (("kamailio", kamailio.port), ("caller", caller_port), ("carrier", carrier.port)):
                rcvbuf, first, last = watch.udp.get(port, [0, 0, 0])
                result["udp_sockets"][name] = {"rcvbuf": rcvbuf, "drops": last - first}
            result["kamailio_waits"] = watch.wait_summary(http_pids)
            if "WITH_RATING" in defines:
                result["connections"] = {"distinct_seen": len(watch.seen), "most_at_once": watch.most,
                                         "open_at_end": len(agent_connections(agent.port)),
                                         "passive_opens_machine": passive_opens() - opens_before,
                                         "http_worker_pids": len(http_pids)}
                result["kamailio_latency"] = kamailio_timings(kamailio.log())
    finally:
        kamailio.stop()
    if agent.process is None or agent.process.poll() is not None:
        raise SetupError(f"the agent exited during the {mode} run: {agent.log_path.read_text()[-3000:]}")
    return result


# ---- reporting ----

def spread(values: list[float], digits: int = 2) -> str:
    values = [v for v in values if v == v]
    if not values:
        return "-"
    median = statistics.median(values)
    if len(values) == 1:
        return f"{median:.{digits}f}"
    return f"{median:.{digits}f} ({min(values):.{digits}f}-{max(values):.{digits}f})"


def report(results: dict[str, list[dict]], args: argparse.Namespace) -> None:
    print()
    print(f"{args.calls} calls per round at {args.rate:g}/s, {args.hold_ms} ms each; median (min-max) of "
          f"{args.rounds} round(s)")
    print(f"{'mode':<8} {'answered/s':>20} {'failed':>12} {'retrans':>16} {'kamailio CPU ms/call':>22} "
          f"{'agent CPU ms/call':>20} {'load avg':>16}")
    for mode, rounds in results.items():
        print(f"{mode:<8} {spread([r['calls_per_s'] for r in rounds], 1):>20} "
              f"{spread([r['failed'] for r in rounds], 0):>12} {spread([r['retransmissions'] for r in rounds], 0):>16} "
              f"{spread([r['kamailio_ms'] for r in rounds]):>22} {spread([r['agent_ms'] for r in rounds]):>20} "
              f"{spread([r['load_average'] for r in rounds]):>16}")
    for mode, rounds in results.items():
        failures: dict[str, int] = {}
        for r in rounds:
            for k, v in r["failures"].items():
                failures[k] = failures.get(k, 0) + v
        if failures:
            print(f"  {mode} failures (all rounds): {failures}")
    if args.overload:
        print("\n--overload: answered calls (goodput) and refusals (500/503 from the rating) per round; "
              "median (min-max)")
        for mode, rounds in results.items():
            def of(*path, digits=1):
                values = []
                for r in rounds:
                    value = r
                    for key in path:
                        value = value[key]
                    values.append(value)
                return spread(values, digits)

            print(f"  {mode:<8} offered/s {of('offered_per_s')}  answered/s {of('calls_per_s')}  refused "
                  f"{of('refused', digits=0)}  refusal ms p50 {of('refusal_ms', 'p50')} p99 {of('refusal_ms', 'p99')} "
                  f"max {of('refusal_ms', 'max', digits=0)}  refused > 50 ms {of('refusal_ms', 'over_50', digits=0)}  "
                  f"INVITE -> 200 ms p50 {of('answer_ms', 'p50')} p99 {of('answer_ms', 'p99')}")
            print(f"  {'':<8} of the refused: 503 (shed by the agent) {of('shed', digits=0)}, ms p50 "
                  f"{of('shed_ms', 'p50')} p99 {of('shed_ms', 'p99')}, > 50 ms {of('shed_ms', 'over_50', digits=0)}; "
                  f"500 (authorization too slow) {of('timed_out', digits=0)}")
    relay = [r["calls_per_s"] for r in results.get("relay", [])]
    rating = [r["calls_per_s"] for r in results.get("rating", [])]
    if relay and rating:
        ratio = statistics.median(rating) / statistics.median(relay)
        print(f"ratio rating/relay (answered calls/s, medians): {ratio:.3f}")
    if args.breakdown and "relay" in results:
        relay_cpu = statistics.median(sum(r["cpu_ms"].values()) for r in results["relay"])
        for mode, rounds in results.items():
            if mode != "relay":
                total = statistics.median(sum(r["cpu_ms"].values()) for r in rounds)
                print(f"CPU per call {mode}/relay (all components, medians): {total:.3f} / {relay_cpu:.3f} ms"
                      f" = {total / relay_cpu:.2f}; on 2 cores at most {2000 / total:.0f} calls/s {mode}, "
                      f"{2000 / relay_cpu:.0f} relay")
    if not args.breakdown:
        return

    print("\nCPU per call (ms), median (min-max) of the rounds")
    parts = sorted({p for rounds in results.values() for r in rounds for p in r["cpu_ms"]})
    print(f"{'component':<24}" + "".join(f"{mode:>24}" for mode in results))
    for part in parts:
        print(f"{part:<24}" + "".join(f"{spread([r['cpu_ms'].get(part, 0.0) for r in rounds], 3):>24}"
                                      for rounds in results.values()))
    print(f"{'total':<24}" + "".join(f"{spread([sum(r['cpu_ms'].values()) for r in rounds], 3):>24}"
                                     for rounds in results.values()))

    print("\nSIPp: INVITE -> 200 (ms), calls answered later than 500 ms; UDP datagrams dropped on full "
          "sockets (machine-wide)")
    for mode, rounds in results.items():
        print(f"  {mode:<8} p50 {spread([r['invite_200_ms']['p50'] for r in rounds], 1)}  "
              f"p90 {spread([r['invite_200_ms']['p90'] for r in rounds], 1)}  "
              f"p99 {spread([r['invite_200_ms']['p99'] for r in rounds], 1)}  "
              f"> 500 ms: {spread([r['invite_200_ms']['over_500'] for r in rounds], 0)}  "
              f"UDP drops: {spread([r['udp_drops_machine'] for r in rounds], 0)}")
        print(f"  {'':<8} by socket: " + ", ".join(
            f"{name} {spread([r['udp_sockets'][name]['drops'] for r in rounds], 0)} "
            f"(buffer {rounds[-1]['udp_sockets'][name]['rcvbuf'] // 1024} KB)" for name in rounds[0]["udp_sockets"]))
    print("\nWhere Kamailio's processes wait (share of /proc/PID/wchan samples, last round)")
    for mode, rounds in results.items():
        for kind, where in rounds[-1]["kamailio_waits"].items():
            print(f"  {mode:<8} {kind:<13} " + ", ".join(f"{name} {100 * share:.0f}%" for name, share in where.items()))

    for mode, rounds in results.items():
        if "kamailio_latency" not in rounds[0]:
            continue
        print(f"\n{mode}: agent requests as Kamailio saw them (send -> answer route, ms) | curl's own time | "
              f"as the agent saw them (its histogram: bucket bounds)")
        for op in OPERATIONS:
            k = [r["kamailio_latency"].get(op) for r in rounds if r["kamailio_latency"].get(op)]
            a = [r["agent_latency"][AGENT_ENDPOINTS[op]] for r in rounds if AGENT_ENDPOINTS[op] in r["agent_latency"]]
            if not k:
                print(f"  {op}: no RTIME lines (--no-timing?)")
            else:
                print(f"  {op:<18} n {spread([x['count'] for x in k], 0)}  p50 {spread([x['p50_ms'] for x in k])}  "
                      f"p90 {spread([x['p90_ms'] for x in k])}  p99 {spread([x['p99_ms'] for x in k])}  "
                      f"max {spread([x['max_ms'] for x in k], 0)}  "
                      f">100ms {spread([100 * x['over_100ms'] for x in k], 1)}%  "
                      f"unanswered {spread([x['unanswered'] for x in k], 0)}")
                print(f"  {'':<18} curl p50 {spread([x['curl_p50_ms'] for x in k])}  "
                      f"p99 {spread([x['curl_p99_ms'] for x in k])}")
            if a:
                print(f"  {'':<18} agent mean {spread([x['mean_ms'] for x in a], 3)}  "
                      f"p50 <= {spread([x['p50_ms'] for x in a], 1)}  p99 <= {spread([x['p99_ms'] for x in a], 1)}  "
                      f"> 5 ms {spread([100 * x['over_5ms'] for x in a], 1)}%")
        c = [r["connections"] for r in rounds]
        print(f"  connections Kamailio -> agent: distinct seen {spread([x['distinct_seen'] for x in c], 0)}, "
              f"most at once {spread([x['most_at_once'] for x in c], 0)}, open at the end "
              f"{spread([x['open_at_end'] for x in c], 0)}, held by {spread([x['http_worker_pids'] for x in c], 0)} "
              f"Kamailio processes; machine-wide accepts during the run "
              f"{spread([x['passive_opens_machine'] for x in c], 0)} (for {args.calls * 3} requests)")
        redis_keys = sorted({k for r in rounds for k in r["redis_per_call"]})
        print("  Redis per call: " + ", ".join(f"{k} {spread([r['redis_per_call'].get(k, 0) for r in rounds])}"
                                               for k in redis_keys))
        print("  PostgreSQL per call: " + ", ".join(
            f"{k} {spread([r['postgres_per_call'][k] for r in rounds])}" for k in rounds[0]["postgres_per_call"]))


# ---- --step: the highest clean rate of every mode ----

def round_clean(r: dict) -> bool:
    """0 failed (or unfinished) calls and fewer than 1% of the calls retransmitted."""
    return r["failed"] == 0 and r["unfinished"] <= 0 and r["retransmissions"] < 0.01 * max(r["created"], 1)


def is_clean(rounds: list[dict]) -> bool:
    """Clean in most rounds (the median round is clean): one round disturbed by another job on a shared machine
    does not decide alone. `clean rounds` in the report shows how many were."""
    return sum(map(round_clean, rounds)) * 2 > len(rounds)


def step_rates(wanted: list[str], modes: dict, stacks: dict, auth_db: str, workdir: Path,
               args: argparse.Namespace) -> dict[float, dict[str, list[dict]]]:
    """Every mode at each rate of --step in turn (--rounds rounds, modes taking turns, --step-seconds of calls);
    a mode that is not clean at a rate is not run at the higher ones."""
    stepped: dict[float, dict[str, list[dict]]] = {}
    active = list(wanted)
    for rate in sorted(args.step):
        if not active:
            break
        args.rate, args.calls = rate, max(int(rate * args.step_seconds), 1)
        at_rate = stepped.setdefault(rate, {})
        for round_no in range(1, args.rounds + 1):
            for mode in active:
                defines, config_dir = modes[mode]
                at_rate.setdefault(mode, []).append(
                    measure(mode, round_no, defines, config_dir, stacks[mode], auth_db, workdir, args))
        active = [mode for mode in active if is_clean(at_rate[mode])]
    return stepped


def report_steps(stepped: dict[float, dict[str, list[dict]]], args: argparse.Namespace) -> None:
    print(f"\n--step: {args.step_seconds:g} s of calls per round, {args.rounds} round(s) per rate, {args.hold_ms} ms "
          f"calls; a round is clean with 0 failed and < 1% of calls retransmitted, a rate when most rounds are; "
          f"median (min-max)")
    print(f"{'rate':>6} {'mode':<10} {'answered/s':>20} {'failed':>14} {'retrans':>16} {'clean rounds':>13} "
          f"{'load avg':>16} {'CPU ms/call, all':>22}")
    best: dict[str, float] = {}
    for rate, at_rate in sorted(stepped.items()):
        for mode, rounds in at_rate.items():
            clean = is_clean(rounds)
            best.setdefault(mode, 0.0)
            if clean:
                best[mode] = max(best[mode], rate)
            print(f"{rate:>6g} {mode:<10} {spread([r['calls_per_s'] for r in rounds], 1):>20} "
                  f"{spread([r['failed'] for r in rounds], 0):>14} {spread([r['retransmissions'] for r in rounds], 0):>16} "
                  f"{sum(map(round_clean, rounds)):>5}/{len(rounds)} {'yes' if clean else 'no':<5} "
                  f"{spread([r['load_average'] for r in rounds]):>16} "
                  f"{spread([sum(r['cpu_ms'].values()) for r in rounds]):>22}")
    top = max(args.step)
    print("highest clean rate: " + ", ".join(
        f"{mode} {rate:g}/s" + (" (clean at every rate tried: at least that)" if rate == top else "")
        for mode, rate in best.items()))
    if best.get("relay"):
        for mode, rate in best.items():
            if mode != "relay":
                print(f"ratio {mode}/relay (highest clean rates): {rate / best['relay']:.3f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=300, help="offered calls per second (default 300)")
    parser.add_argument("--calls", type=int, default=3000, help="calls per mode and round (default 3000)")
    parser.add_argument("--hold-ms", type=int, default=100, help="length of each call in ms (default 100)")
    parser.add_argument("--rounds", type=int, default=1, help="rounds of every mode, taking turns (default 1)")
    parser.add_argument("--modes", default="relay,rating", help="modes to run (default relay,rating; every --config "
                        "is added)")
    parser.add_argument("--timeout", type=int, default=120, help="seconds at most per mode (default 120)")
    parser.add_argument("--shm-mb", type=int, default=256, help="Kamailio shared memory in MB (default 256)")
    parser.add_argument("--children", type=int, default=4, help="Kamailio UDP workers (default 4)")
    parser.add_argument("--sipp-buff", type=int, default=None,
                        help="the SIPp caller's socket buffer size in bytes (-buff_size; SIPp's default 65535)")
    parser.add_argument("--http-workers", type=int, default=None,
                        help="http_async_client workers (default: the configuration's own)")
    parser.add_argument("--agent-workers", type=int, default=None,
                        help="agent worker processes (default: the agent's own default, one per core)")
    parser.add_argument("--breakdown", action="store_true", help="per call: CPU per component, latency of each "
                        "agent request, connections, Redis and PostgreSQL work, JSON cost (see above)")
    parser.add_argument("--no-timing", action="store_true", help="with --breakdown: no RATING_TIMING log lines")
    parser.add_argument("--config", action="append", default=[], metavar="NAME=DIR",
                        help="also run mode NAME: rating with the kamailio.cfg and rating.cfg of folder DIR")
    parser.add_argument("--agent", action="append", default=[], metavar="NAME=DIR",
                        help="also run mode NAME: rating through the agent of source tree DIR (its own Redis and "
                        "PostgreSQL)")
    parser.add_argument("--redis-tcp", action="store_true", help="the agents reach Redis over TCP, not its Unix socket")
    parser.add_argument("--step", type=lambda text: [float(v) for v in text.split(",")], default=None,
                        metavar="R1,R2,...", help="find each mode's highest clean rate (0 failed, < 1%% of calls "
                        "retransmitted, in most rounds) among these rates; --step-seconds of calls per round")
    parser.add_argument("--step-seconds", type=float, default=10.0, help="with --step: seconds of calls per round")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder with all logs")
    parser.add_argument("--overload", action="store_true", help="a refusal by the rating (500, 503) is an outcome, "
                        "not a failure: report answered calls/s (goodput), refusals and how fast they came")
    parser.add_argument("--max-in-flight", type=int, default=None,
                        help="the agent's --max-in-flight (default: the agent's own; 0: no bound)")
    args = parser.parse_args(argv)
    if args.step and (args.overload or args.breakdown):
        parser.error("--step runs without --overload and --breakdown")
    if args.overload and args.breakdown:
        parser.error("--overload and --breakdown are separate runs")
    if args.calls <= 0 or args.rate <= 0 or args.rounds <= 0:
        parser.error("--calls, --rate and --rounds must be positive")

    try:
        ensure_kamailio()
    except (SetupError, RuntimeError, TimeoutError) as exc:
        print(f"cannot run: {exc}", file=sys.stderr)
        return 2

    workdir = Path(tempfile.mkdtemp(prefix="sip-load-"))
    redis = postgres = agent = carrier = None
    others: list = []  # what --agent started: its agent, Redis and PostgreSQL
    results: dict[str, list[dict]] = {}
    json_costs = None
    stepped: dict[float, dict[str, list[dict]]] = {}
    try:
        redis = RedisServer(workdir / "redis").start()
        postgres = PostgresServer(workdir / "postgres").start()
        # the load generator is a trusted peer billed to the load account (Kamailio refuses unknown callers)
        auth_db = asyncio.run(create_auth_database(postgres.url, "kamailio_auth"))
        add_trusted_peer(auth_db, ACCOUNT, port=0)
        carrier = Carrier(workdir / "carrier", "uas.xml", "UDP").start()
        catalog_file = workdir / "catalog.json"
        catalog_file.write_text(json.dumps(catalog(carrier.port)))

        def start_agent(redis_server: RedisServer, database: PostgresServer, tree: Path | None) -> AgentProcess:
            started = AgentProcess(redis_server.url if args.redis_tcp else redis_server.socket_url, database.url,
                                   workdir, log_level="WARNING",
                                   workers=args.agent_workers if args.agent_workers is not None else 0,
                                   **({"max_in_flight": args.max_in_flight} if args.max_in_flight is not None else {}))
            if tree is not None:
                started.root = tree
            started.cli("import", "catalog", str(catalog_file))
            return started.start()

        agent = start_agent(redis, postgres, None)
        components = {"agent": agent, "redis": redis, "postgres": postgres, "carrier": carrier}

        common = {"SIP_CHILDREN": args.children, "DEBUG_LEVEL": 1, "TM_FR_TIMER": 2000,
                  "TM_FR_INV_TIMER": 10000}
        rating = {**common, "WITH_RATING": None, "RATING_AGENT_URL": f'"{agent.url}"', "RATING_AGENT_TIMEOUT": 1900}
        if args.http_workers is not None:
            rating["RATING_HTTP_WORKERS"] = args.http_workers
        if args.breakdown and not args.no_timing:
            rating["RATING_TIMING"] = None
        modes = {
            "relay": ({**common, "RELAY_DESTINATION": f'"sip:127.0.0.1:{carrier.port}"'}, None),
            "rating": (rating, None),
        }
        if "zero" in args.modes.split(","):
            zero = ZeroAgent(workdir, carrier.port).start()
            others.append(zero)
            modes["zero"] = ({**rating, "RATING_AGENT_URL": f'"{zero.url}"'}, None)
        wanted = [m for m in args.modes.split(",") if m in modes]
        for named in args.config:
            name, _, folder = named.partition("=")
            if not folder or name in ("relay", "rating", "zero"):
                raise SetupError(f"--config {named}: expected NAME=DIR with NAME not relay, rating or zero")
            modes[name] = (rating, Path(folder).resolve())
            wanted.append(name)
        stacks = {mode: components for mode in modes}
        if "zero" in modes:
            stacks["zero"] = {**components, "agent": zero}
        for named in args.agent:
            name, _, folder = named.partition("=")
            if not folder or name in modes:
                raise SetupError(f"--agent {named}: expected NAME=DIR with NAME not relay, rating or a --config name")
            own_redis = RedisServer(workdir / f"redis-{name}").start()
            others.append(own_redis)
            own_postgres = PostgresServer(workdir / f"postgres-{name}").start()
            others.append(own_postgres)
            own_agent = start_agent(own_redis, own_postgres, Path(folder).resolve())
            others.append(own_agent)
            modes[name] = ({**rating, "RATING_AGENT_URL": f'"{own_agent.url}"'}, None)
            stacks[name] = {"agent": own_agent, "redis": own_redis, "postgres": own_postgres, "carrier": carrier}
            wanted.append(name)
        if args.breakdown:
            json_costs = [json_cost(workdir / f"json-bench-{n}") for n in range(3)]
        if args.step:
            stepped = step_rates(wanted, modes, stacks, auth_db, workdir, args)
        for round_no in range(1, args.rounds + 1):
            if args.step:
                break
            for mode in wanted:
                defines, config_dir = modes[mode]
                results.setdefault(mode, []).append(
                    measure(mode, round_no, defines, config_dir, stacks[mode], auth_db, workdir, args))
    except (SetupError, RuntimeError, TimeoutError) as exc:
        print(f"setup failed: {exc}", file=sys.stderr)
        return 2
    finally:
        for component in (agent, carrier, redis, *others):
            if isinstance(component, PostgresServer):
                component.stop("immediate")
            elif component:
                component.stop()
        if postgres:
            postgres.stop("immediate")
        if args.keep:
            print(f"logs kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    if args.step:
        report_steps(stepped, args)
        return 0
    report(results, args)
    if json_costs:
        print("\nJSON handling in Kamailio's configuration (µs of one Kamailio process, empty loop subtracted; "
              "median (min-max) of 3 runs): "
              + ", ".join(f"{k} {spread([c[k] for c in json_costs], 1)}" for k in json_costs[0]))
    failed = any(r["failed"] for rounds in results.values() for r in rounds)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
