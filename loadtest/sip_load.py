"""SIP load through a real Kamailio, without and with rating, in one run.

    python loadtest/sip_load.py [--rate 300] [--calls 3000] [--hold-ms 100]

Starts on free loopback ports, in a temporary folder: Redis, PostgreSQL, the agent
(`python -m agent serve`), one SIPp carrier answering every call, then for each mode a Kamailio from
kamailio/kamailio.cfg and a SIPp caller making `--calls` calls at `--rate` calls/s, each lasting
`--hold-ms`:

  relay   Kamailio relays and tracks dialogs, no rating (WITH_RATING not defined)
  rating  the same plus the agent: authorization (transaction suspended), begin and end per call

and prints, per mode, answered calls per second, failed calls and retransmissions, then the ratio
rating/relay. Kamailio knows the SIPp caller as a trusted peer (WITH_IPAUTH: 127.0.0.1, any port, billed to
the load account, not rate-limited by pike), so no call is digest-challenged. Bounded: `--calls` calls per mode and `--timeout` seconds per mode at most.
Needs kamailio, sipp and http_async_client.so (kamailio/build-http-async-client.sh provides them).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "kamailio")]

from devstack import AgentProcess, PostgresServer, RedisServer  # noqa: E402
from kamailio_harness import (  # noqa: E402
    Carrier, Kamailio, SetupError, add_trusted_peer, create_auth_database, ensure_kamailio, free_port, read_stats,
)

LOAD_UAC = ROOT / "loadtest" / "sip" / "uac_load.xml"
ACCOUNT = "load-caller"
NUMBER = "39040123456"


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


def cpu_seconds(pid: int, group: bool = False) -> float:
    """CPU time (user + system) used so far by a process, or by every process of its group."""
    total = 0
    pids = [int(p) for p in os.listdir("/proc") if p.isdigit()] if group else [pid]
    for candidate in pids:
        try:
            with open(f"/proc/{candidate}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # fields[0] is field 3 (state): pgrp is field 5, utime 14, stime 15
        if group and int(fields[2]) != pid:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / TICKS


def run_load(workdir: Path, proxy_port: int, args: argparse.Namespace) -> dict:
    """One SIPp caller at a fixed rate; returns its counters and the achieved answered calls/s."""
    port = free_port()
    stat_file = workdir / f"caller-{port}.csv"
    argv = [
        "sipp", f"127.0.0.1:{proxy_port}", "-sf", str(LOAD_UAC), "-s", NUMBER, "-set", "account", ACCOUNT,
        "-i", "127.0.0.1", "-p", str(port), "-m", str(args.calls), "-r", str(args.rate), "-rp", "1000",
        "-d", str(args.hold_ms), "-l", str(max(args.calls, 10)), "-nostdin", "-max_socket", "65000",
        "-timeout", f"{args.timeout}s", "-recv_timeout", "10000", "-max_retrans", "5",
        "-trace_stat", "-stf", str(stat_file), "-fd", "1",
        "-trace_err", "-error_file", str(workdir / f"caller-{port}.errors"),
    ]
    started = time.monotonic()
    done = subprocess.run(argv, cwd=workdir, capture_output=True, text=True, timeout=args.timeout + 30,
                          stdin=subprocess.DEVNULL)
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
        "sipp_exit": done.returncode,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=300, help="offered calls per second (default 300)")
    parser.add_argument("--calls", type=int, default=3000, help="calls per mode (default 3000)")
    parser.add_argument("--hold-ms", type=int, default=100, help="length of each call in ms (default 100)")
    parser.add_argument("--timeout", type=int, default=120, help="seconds at most per mode (default 120)")
    parser.add_argument("--shm-mb", type=int, default=256, help="Kamailio shared memory in MB (default 256)")
    parser.add_argument("--children", type=int, default=4, help="Kamailio UDP workers (default 4)")
    parser.add_argument("--http-workers", type=int, default=4, help="http_async_client workers (default 4)")
    parser.add_argument("--agent-workers", type=int, default=None,
                        help="agent worker processes (default: the agent's own default, one per core)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder with all logs")
    args = parser.parse_args(argv)
    if args.calls <= 0 or args.rate <= 0:
        parser.error("--calls and --rate must be positive")

    try:
        ensure_kamailio()
    except (SetupError, RuntimeError, TimeoutError) as exc:
        print(f"cannot run: {exc}", file=sys.stderr)
        return 2

    workdir = Path(tempfile.mkdtemp(prefix="sip-load-"))
    redis = postgres = agent = carrier = None
    results: dict[str, dict] = {}
    try:
        redis = RedisServer(workdir / "redis").start()
        postgres = PostgresServer(workdir / "postgres").start()
        # the load generator is a trusted peer billed to the load account (Kamailio refuses unknown callers)
        auth_db = asyncio.run(create_auth_database(postgres.url, "kamailio_auth"))
        add_trusted_peer(auth_db, ACCOUNT, port=0)
        carrier = Carrier(workdir / "carrier", "uas.xml", "UDP").start()
        agent = AgentProcess(redis.url, postgres.url, workdir, log_level="WARNING",
                             workers=args.agent_workers if args.agent_workers is not None else 0)
        catalog_file = workdir / "catalog.json"
        catalog_file.write_text(json.dumps(catalog(carrier.port)))
        agent.cli("import", "catalog", str(catalog_file))
        agent.start()

        common = {"SIP_CHILDREN": args.children, "DEBUG_LEVEL": 1, "TM_FR_TIMER": 2000,
                  "TM_FR_INV_TIMER": 10000}
        modes = {
            "relay": {**common, "RELAY_DESTINATION": f'"sip:127.0.0.1:{carrier.port}"'},
            "rating": {**common, "WITH_RATING": None, "RATING_AGENT_URL": f'"{agent.url}"',
                       "RATING_AGENT_TIMEOUT": 1900, "RATING_HTTP_WORKERS": args.http_workers},
        }
        for mode, defines in modes.items():
            kamailio = Kamailio(workdir / f"kamailio-{mode}", defines={**defines, "WITH_AUTH": False},
                                auth_db=auth_db, ip_auth=True, shm_mb=args.shm_mb).start()
            try:
                print(f"{mode}: {args.calls} calls at {args.rate:g}/s, {args.hold_ms} ms each ...", flush=True)
                kamailio_cpu = cpu_seconds(kamailio.process.pid, group=True)
                agent_cpu = cpu_seconds(agent.process.pid, group=True)
                results[mode] = run_load(workdir / f"kamailio-{mode}", kamailio.port, args)
                calls = max(results[mode]["created"], 1)
                results[mode]["kamailio_ms"] = 1000 * (cpu_seconds(kamailio.process.pid, group=True) - kamailio_cpu) / calls
                results[mode]["agent_ms"] = 1000 * (cpu_seconds(agent.process.pid, group=True) - agent_cpu) / calls
            finally:
                kamailio.stop()
            if agent.process is None or agent.process.poll() is not None:
                raise SetupError(f"the agent exited during the {mode} run: {agent.log_path.read_text()[-3000:]}")
    except (SetupError, RuntimeError, TimeoutError) as exc:
        print(f"setup failed: {exc}", file=sys.stderr)
        return 2
    finally:
        for component in (agent, carrier, redis):
            if component:
                component.stop()
        if postgres:
            postgres.stop("immediate")
        if args.keep:
            print(f"logs kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    print()
    print(f"{'mode':<8} {'answered/s':>10} {'answered':>9} {'failed':>7} {'unfinished':>10} "
          f"{'retrans':>8} {'seconds':>8} {'kamailio CPU ms/call':>21} {'agent CPU ms/call':>18}")
    for mode, r in results.items():
        print(f"{mode:<8} {r['calls_per_s']:>10.1f} {r['answered']:>9} {r['failed']:>7} {r['unfinished']:>10} "
              f"{r['retransmissions']:>8} {r['seconds']:>8} {r['kamailio_ms']:>21.2f} {r['agent_ms']:>18.2f}")
    relay, rating = results["relay"], results["rating"]
    ratio = rating["calls_per_s"] / relay["calls_per_s"] if relay["calls_per_s"] else float("nan")
    print(f"ratio rating/relay (answered calls/s): {ratio:.3f}")
    return 0 if rating["failed"] == 0 and relay["failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
