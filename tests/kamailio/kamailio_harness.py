"""Running a real Kamailio and SIPp on loopback: used by the end-to-end tests and by loadtest/sip_load.py.

Everything listens on 127.0.0.1, on ports picked free at run time, with its files in a folder of the
caller's choosing. Kamailio runs in the foreground (-DD -E) from a copy of kamailio/kamailio.cfg and
rating.cfg plus a generated kamailio-local.cfg.

Callers authenticate as Kamailio's configuration demands (route[CALLER_AUTH]): give a Kamailio `auth_db` (a
database made by create_auth_database) for digest authentication (WITH_AUTH) and/or `ip_auth=True`
(WITH_IPAUTH, trusted peers from the same database's address table); add_subscriber() and add_trusted_peer()
fill it, run_callers(password=...) answers the 407 challenge.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
KAMAILIO_DIR = ROOT / "kamailio"
SCENARIOS = KAMAILIO_DIR / "sipp"
BUILD_SCRIPT = KAMAILIO_DIR / "build-http-async-client.sh"
MODULES_DIR = Path(os.environ.get("KAMAILIO_MODULES_DIR", KAMAILIO_DIR / "build" / "modules"))
# Kamailio's own PostgreSQL schema, shipped by kamailio-postgres-modules (the dialog tables need `version`)
POSTGRES_SCHEMA_DIR = Path("/usr/share/kamailio/postgres")
DIALOG_SCHEMA = ("standard-create.sql", "dialog-create.sql")
# subscriber (auth_db) and address (permissions; also trusted, which the module expects to exist)
AUTH_SCHEMA = ("standard-create.sql", "auth_db-create.sql", "permissions-create.sql")
# the digest realm of every harness Kamailio (AUTH_REALM); subscribers' HA1 hashes are computed with it
AUTH_REALM = "rating-test"
# pike limit of harness Kamailios unless a test sets PIKE_DENSITY itself: every caller and carrier of the
# tests is 127.0.0.1, one IP for pike
HARNESS_PIKE_DENSITY = 100000


class SetupError(RuntimeError):
    """Kamailio, SIPp or the http_async_client module is missing and could not be provided."""


def ensure_kamailio() -> None:
    """Runs kamailio/build-http-async-client.sh, which installs Kamailio and SIPp when missing and
    builds http_async_client.so when it is missing or stale (a no-op taking ~0.1 s otherwise)."""
    done = subprocess.run(["bash", str(BUILD_SCRIPT)], capture_output=True, text=True, timeout=1200)
    if done.returncode != 0:
        raise SetupError(
            f"{BUILD_SCRIPT.relative_to(ROOT)} failed (exit {done.returncode}); it needs root and the "
            f"Debian package mirrors on a fresh machine.\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
        )
    for tool in ("kamailio", "sipp"):
        if shutil.which(tool) is None:
            raise SetupError(f"{tool} is not installed although the build script succeeded")
    if not (MODULES_DIR / "http_async_client.so").exists():
        raise SetupError(f"no http_async_client.so in {MODULES_DIR} after the build script")


def system_modules_dir() -> str:
    found = sorted(glob.glob("/usr/lib/*/kamailio/modules/tm.so")) + sorted(
        glob.glob("/usr/lib/kamailio/modules/tm.so")
    )
    if not found:
        raise SetupError("Kamailio's module directory (…/kamailio/modules/tm.so) not found")
    return str(Path(found[0]).parent)


def free_port(tcp: bool = True, udp: bool = True) -> int:
    """A port free on 127.0.0.1 for both UDP and TCP right now (SIP listens on both)."""
    for _ in range(200):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        try:
            if udp:
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                    s.bind(("127.0.0.1", port))
            if tcp:
                with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    s.bind(("127.0.0.1", port))
            return port
        except OSError:
            continue
    raise RuntimeError("no free port found")


def free_low_port() -> int:
    """A port free on 127.0.0.1 (UDP and TCP) below 32768, outside Linux's ephemeral range: Kamailio's
    PostgreSQL address table keeps the port in a SMALLINT."""
    import random

    for _ in range(500):
        port = random.randint(20000, 32767)
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.bind(("127.0.0.1", port))
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind(("127.0.0.1", port))
            return port
        except OSError:
            continue
    raise RuntimeError("no free port below 32768 found")


def _stop(process: subprocess.Popen | None, timeout: float = 10.0) -> None:
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def sip_options_ping(port: int, timeout: float = 0.3) -> bool:
    """True when a SIP server on 127.0.0.1:port answers an OPTIONS with 200."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        local = sock.getsockname()[1]
        call_id = uuid.uuid4().hex
        message = (
            f"OPTIONS sip:127.0.0.1:{port} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:{local};branch=z9hG4bK{call_id[:16]};rport\r\n"
            f"From: <sip:probe@127.0.0.1:{local}>;tag={call_id[:8]}\r\n"
            f"To: <sip:127.0.0.1:{port}>\r\n"
            f"Call-ID: {call_id}\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
        )
        sock.settimeout(timeout)
        sock.sendto(message.encode(), ("127.0.0.1", port))
        try:
            data, _ = sock.recvfrom(65535)
        except OSError:
            return False
        return data.startswith(b"SIP/2.0 200")


@dataclass
class Kamailio:
    """One Kamailio instance from the project's configuration.

    `defines` go into the generated kamailio-local.cfg: a value of None writes `#!define NAME`,
    a str is written as is (quote it yourself when the configuration wants a string).
    `rpc_port`: serve JSON-RPC over HTTP there (RPC_LISTEN), see `rpc_url` and `rpc()`.
    `dialog_db`: a PostgreSQL URL (postgres://...) holding Kamailio's dialog tables (WITH_DIALOG_DB).
    `auth_db`: a PostgreSQL URL holding the subscriber and address tables (create_auth_database): digest
    authentication of callers (WITH_AUTH; `defines={"WITH_AUTH": False}` leaves it off) and, with `ip_auth`,
    trusted peers (WITH_IPAUTH). Without either, the configuration refuses every call."""

    workdir: Path
    defines: dict[str, str | int | None] = field(default_factory=dict)
    shm_mb: int = 64
    port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None
    rpc_port: int | None = None
    dialog_db: str | None = None
    auth_db: str | None = None
    ip_auth: bool = False

    @property
    def rpc_url(self) -> str:
        return f"http://127.0.0.1:{self.rpc_port}/RPC"

    def rpc(self, method: str, *params, timeout: float = 5.0):
        """Calls a JSON-RPC method of this Kamailio; its `result` (raises on an `error`)."""
        import json
        import urllib.request

        request = urllib.request.Request(
            self.rpc_url, data=json.dumps({"jsonrpc": "2.0", "method": method, "params": list(params),
                                           "id": 1}).encode(),
            headers={"Content-Type": "application/json"}, method="POST")
        with urllib.request.urlopen(request, timeout=timeout) as reply:
            answer = json.loads(reply.read())
        if "error" in answer:
            raise RuntimeError(f"{method}: {answer['error']}")
        return answer.get("result")

    def write_config(self) -> Path:
        self.workdir.mkdir(parents=True, exist_ok=True)
        for name in ("kamailio.cfg", "rating.cfg"):
            shutil.copy(KAMAILIO_DIR / name, self.workdir / name)
        values: dict[str, str | int | None] = {
            "SIP_LISTEN": f"udp:127.0.0.1:{self.port}",
            "MODULES_PATH": f'"{MODULES_DIR}:{system_modules_dir()}"',
            "SIP_CHILDREN": 4,
            "DEBUG_LEVEL": 2,
            "AUTH_REALM": f'"{AUTH_REALM}"',
            "PIKE_DENSITY": HARNESS_PIKE_DENSITY,
        }
        if self.auth_db:
            values["AUTH_DB_URL"] = f'"{self.auth_db}"'
            values["WITH_AUTH"] = None
            if self.ip_auth:
                values["WITH_IPAUTH"] = None
        if self.rpc_port:
            values["RPC_LISTEN"] = f"tcp:127.0.0.1:{self.rpc_port}"
        if self.dialog_db:
            values["WITH_DIALOG_DB"] = None
            values["DIALOG_DB_URL"] = f'"{self.dialog_db}"'
        values.update(self.defines)
        lines = ["# generated by tests/kamailio/kamailio_harness.py"]
        for name, value in values.items():
            if value is False:
                continue
            lines.append(f"#!define {name}" if value is None else f"#!define {name} {value}")
        (self.workdir / "kamailio-local.cfg").write_text("\n".join(lines) + "\n")
        return self.workdir / "kamailio.cfg"

    @property
    def log_path(self) -> Path:
        return self.workdir / "kamailio.log"

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def start(self, timeout: float = 20.0) -> "Kamailio":
        cfg = self.write_config()
        check = subprocess.run(["kamailio", "-c", "-f", str(cfg)], capture_output=True, text=True,
                               cwd=self.workdir)
        if check.returncode != 0:
            raise SetupError(f"kamailio -c refused {cfg}:\n{check.stderr[-4000:]}")
        rundir = self.workdir / "run"
        rundir.mkdir(exist_ok=True)
        self._log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            ["kamailio", "-f", str(cfg), "-DD", "-E", "-m", str(self.shm_mb), "-M", "16",
             "-Y", str(rundir), "-w", str(self.workdir)],
            cwd=self.workdir, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SetupError(f"kamailio exited ({self.process.returncode}):\n{self.log()[-4000:]}")
            if sip_options_ping(self.port):
                return self
            time.sleep(0.1)
        self.stop()
        raise SetupError(f"kamailio not answering on {self.port}:\n{self.log()[-4000:]}")

    def stop(self) -> None:
        _stop(self.process)
        self._closed()

    def kill(self) -> None:
        """Kills Kamailio and all its processes at once (SIGKILL to its process group): a crash, nothing
        written on the way out."""
        if self.process is not None and self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.process.wait(10)
            # its children are gone when the SIP port is free again
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and _port_busy(self.port):
                time.sleep(0.05)
        self._closed()

    def _closed(self) -> None:
        self.process = None
        if getattr(self, "_log", None):
            self._log.close()
            self._log = None


def _port_busy(port: int) -> bool:
    """Whether a process still holds Kamailio's SIP port, UDP or TCP (a child killed last may hold its TCP
    listener after the UDP socket is free; SO_REUSEADDR as Kamailio's, so that TIME_WAIT does not count)."""
    for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
        with socket.socket(socket.AF_INET, kind) as probe:
            if kind == socket.SOCK_STREAM:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                return True
    return False


async def create_dialog_database(server_url: str, name: str) -> str:
    """Creates database `name` on the PostgreSQL server of `server_url` (an asyncpg URL) with Kamailio's
    dialog tables, from the SQL that Debian's kamailio-postgres-modules ships; its URL for db_postgres."""
    return await create_kamailio_database(server_url, name, DIALOG_SCHEMA)


async def create_auth_database(server_url: str, name: str) -> str:
    """Like create_dialog_database, with the subscriber table (auth_db) and the address and trusted tables
    (permissions) instead: the `auth_db` of a Kamailio."""
    return await create_kamailio_database(server_url, name, AUTH_SCHEMA)


async def create_kamailio_database(server_url: str, name: str, schemas: tuple[str, ...]) -> str:
    import asyncpg

    missing = [f for f in schemas if not (POSTGRES_SCHEMA_DIR / f).exists()]
    if missing:
        raise SetupError(f"{missing} not in {POSTGRES_SCHEMA_DIR}: is kamailio-postgres-modules installed?")
    connection = await asyncpg.connect(server_url)
    try:
        await connection.execute(f'CREATE DATABASE "{name}"')
    finally:
        await connection.close()
    url = server_url.rsplit("/", 1)[0] + "/" + name
    connection = await asyncpg.connect(url)
    try:
        for schema in schemas:
            await connection.execute((POSTGRES_SCHEMA_DIR / schema).read_text())
    finally:
        await connection.close()
    return url.replace("postgresql://", "postgres://", 1)


def _execute(database_url: str, statement: str, *args) -> None:
    import asyncio

    import asyncpg

    async def run() -> None:
        connection = await asyncpg.connect(database_url.replace("postgres://", "postgresql://", 1))
        try:
            await connection.execute(statement, *args)
        finally:
            await connection.close()

    asyncio.run(run())


def subscriber_password(account: str) -> str:
    """The password the tests give the subscriber of `account`."""
    return f"{account}-secret"


def add_subscriber(database_url: str, username: str, password: str | None = None,
                   realm: str = AUTH_REALM) -> None:
    """A subscriber (digest user) in the auth database; the table keeps only its HA1 hash."""
    import hashlib

    password = subscriber_password(username) if password is None else password
    ha1 = hashlib.md5(f"{username}:{realm}:{password}".encode()).hexdigest()
    _execute(database_url, "INSERT INTO subscriber (username, domain, ha1) VALUES ($1, $2, $3) "
                           "ON CONFLICT (username, domain) DO UPDATE SET ha1 = EXCLUDED.ha1",
             username, realm, ha1)


def add_trusted_peer(database_url: str, account: str | None, port: int = 0, ip: str = "127.0.0.1",
                     group: int = 1) -> None:
    """A trusted peer (address table row, port 0 = any, at most 32767: see free_low_port) billed to `account`
    (its tag). Kamailio loads the table when it starts."""
    _execute(database_url, "INSERT INTO address (grp, ip_addr, mask, port, tag) VALUES ($1, $2, 32, $3, $4)",
             group, ip, port, account)


@dataclass
class CallResult:
    call_id: str
    code: int | None = None
    phrase: str | None = None
    bye: int | None = None  # status of the caller's BYE
    cut_off: bool = False  # the network sent the caller a BYE
    reinvited: bool = False  # a re-INVITE of the caller got its 200
    challenged: int = 0  # digest challenges (407) the caller got for its INVITE


RESULT_LINE = re.compile(r"^(RESULT|BYE|CUTOFF|NOCUTOFF|REINVITED|CHALLENGED) (\S+)(?: (\d+))?(?: (.*))?$")


def parse_results(log_text: str) -> dict[str, CallResult]:
    results: dict[str, CallResult] = {}
    for line in log_text.splitlines():
        match = RESULT_LINE.match(line.strip())
        if not match:
            continue
        kind, call_id, code, phrase = match.groups()
        result = results.setdefault(call_id, CallResult(call_id))
        if kind == "RESULT":
            result.code = int(code)
            result.phrase = (phrase or "").strip()
        elif kind == "BYE":
            result.bye = int(code)
        elif kind == "CUTOFF":
            result.cut_off = True
        elif kind == "REINVITED":
            result.reinvited = True
        elif kind == "CHALLENGED":
            result.challenged += 1
    return results


class Carrier:
    """A SIPp UAS playing a carrier (answer, busy or 503) on UDP or TCP."""

    def __init__(self, workdir: Path, scenario: str = "uas.xml", transport: str = "UDP",
                 port: int | None = None, calls: int | None = None):
        """`calls`: exit after that many calls (SIPp -m), which also flushes its log."""
        self.workdir = workdir
        self.scenario = scenario
        self.calls = calls
        self.transport = transport.upper()
        self.port = port or free_port()
        self.process: subprocess.Popen | None = None

    @property
    def carrier_string(self) -> str:
        return f"{self.transport}:127.0.0.1:{self.port}"

    def start(self) -> "Carrier":
        self.workdir.mkdir(parents=True, exist_ok=True)
        name = f"carrier-{self.transport.lower()}-{self.port}"
        transport = {"UDP": "u1", "TCP": "t1"}[self.transport]
        self.stdout = open(self.workdir / f"{name}.out", "ab")
        self.process = subprocess.Popen(
            ["sipp", "-sf", str(SCENARIOS / self.scenario), "-i", "127.0.0.1", "-p", str(self.port),
             "-t", transport, "-nostdin", "-max_socket", "2048", "-trace_err",
             "-error_file", str(self.workdir / f"{name}.errors"),
             "-trace_logs", "-log_file", str(self.workdir / f"{name}.log"),
             *(["-m", str(self.calls)] if self.calls else [])],
            cwd=self.workdir, stdout=self.stdout, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        time.sleep(0.2)
        if self.process.poll() is not None:
            raise SetupError(f"SIPp carrier on {self.port} exited: {(self.workdir / f'{name}.out').read_text()}")
        return self

    @property
    def log_path(self) -> Path:
        return self.workdir / f"carrier-{self.transport.lower()}-{self.port}.log"

    def wait(self, timeout: float) -> bool:
        """True when the carrier exited (after its `calls` calls) within `timeout` seconds."""
        try:
            self.process.wait(timeout)
            return True
        except subprocess.TimeoutExpired:
            return False

    def stop(self) -> None:
        _stop(self.process, 5.0)
        self.process = None


@dataclass
class CallerRun:
    returncode: int
    results: dict[str, CallResult]
    elapsed: float
    stats: dict[str, int]
    output: str


def run_callers(workdir: Path, proxy_port: int, number: str, account: str, calls: int = 1,
                rate: float = 10.0, hold_ms: int = 1000, scenario: str = "uac.xml",
                limit: int | None = None, timeout: float = 60.0, extra: list[str] | None = None,
                password: str | None = None, auth_user: str | None = None,
                local_port: int | None = None) -> CallerRun:
    """Runs a SIPp UAC making `calls` calls at `rate` calls/s to `number` from `account` (the From user) and
    waits for it to finish. Returns the outcome of every call, keyed by Call-ID.
    `password`: answer a digest challenge as `auth_user` (default: `account`) with it; without, the caller
    answers with credentials nobody has. `local_port`: the caller's port (e.g. that of a trusted peer)."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = local_port or free_port()
    name = f"caller-{port}"
    log_file = workdir / f"{name}.log"
    stat_file = workdir / f"{name}.csv"
    argv = [
        "sipp", f"127.0.0.1:{proxy_port}", "-sf", str(SCENARIOS / scenario),
        "-s", number, "-set", "account", account,
        "-i", "127.0.0.1", "-p", str(port), "-m", str(calls), "-r", str(rate), "-rp", "1000",
        "-l", str(limit or calls), "-d", str(hold_ms), "-nostdin", "-max_socket", "2048",
        "-timeout", f"{int(timeout)}s", "-timeout_error", "-recv_timeout", "30000",
        "-trace_logs", "-log_file", str(log_file),
        "-trace_err", "-error_file", str(workdir / f"{name}.errors"),
        "-trace_stat", "-stf", str(stat_file), "-fd", "1",
        # SIPp's defaults otherwise: the dialed number as user, "password"
        "-au", auth_user or account, "-ap", password if password is not None else f"no-password-{uuid.uuid4().hex}",
        *(extra or []),
    ]
    started = time.monotonic()
    done = subprocess.run(argv, cwd=workdir, capture_output=True, text=True, timeout=timeout + 30,
                          stdin=subprocess.DEVNULL)
    elapsed = time.monotonic() - started
    log_text = log_file.read_text(errors="replace") if log_file.exists() else ""
    return CallerRun(done.returncode, parse_results(log_text), elapsed, read_stats(stat_file),
                     done.stdout[-3000:] + done.stderr[-3000:])


def read_stats(path: Path) -> dict[str, int]:
    """Cumulative counters from the last line of a SIPp -trace_stat file."""
    if not path.exists():
        return {}
    lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    if len(lines) < 2:
        return {}
    header = lines[0].rstrip(";").split(";")
    values = lines[-1].rstrip(";").split(";")
    stats: dict[str, int] = {}
    for key, value in zip(header, values):
        if key in ("TotalCallCreated", "SuccessfulCall(C)", "FailedCall(C)", "Retransmissions(C)",
                   "FailedMaxUDPRetrans(C)", "FailedUnexpectedMessage(C)", "FailedCallRejected(C)",
                   "FailedCmdNotSent(C)", "FailedRegexpDoesntMatch(C)", "FailedOutboundCongestion(C)",
                   "FailedTimeoutOnRecv(C)", "FailedTimeoutOnSend(C)", "OutOfCallMsgs(C)"):
            try:
                stats[key] = int(value)
            except ValueError:
                pass
    return stats


def wait_for(probe, timeout: float = 5.0, interval: float = 0.05):
    """Polls `probe()` until it returns something truthy or `timeout` seconds pass; returns the last value."""
    deadline = time.monotonic() + timeout
    value = probe()
    while not value and time.monotonic() < deadline:
        time.sleep(interval)
        value = probe()
    return value


@dataclass
class RigBase:
    """What a Kamailio test module's rig starts from (rig_base)."""

    base: Path
    # devstack.RedisServer, or with redis_kind "cluster" tests/conftest.RedisClusterServers (both: url, stop());
    # imported when used: loadtest scripts use this module without them
    redis: object
    database_url: str
    auth_db: str


def rig_base(tmp_path_factory, server_url: str, name: str, redis_kind: str = "single") -> RigBase:
    """The start of every Kamailio test module's rig: Kamailio checked (its tests fail, never skip, when it
    cannot run), a folder, and the module's own Redis (one server, or with `redis_kind` "cluster" a Redis
    Cluster of 3 masters and 3 replicas), rating database and auth database (other test modules empty the
    shared ones between their tests). `name`: lowercase letters, for the names."""
    import asyncio

    import pytest

    from devstack import RedisServer

    try:
        ensure_kamailio()
    except SetupError as exc:
        pytest.fail(f"Kamailio end-to-end tests cannot run: {exc}", pytrace=False)
    base = tmp_path_factory.mktemp(f"kamailio-{name}")
    suffix = uuid.uuid4().hex[:8]
    database_url = asyncio.run(create_database(server_url, f"kamailio_{name}_{suffix}"))
    auth_db = asyncio.run(create_auth_database(server_url, f"kamailio_{name}_auth_{suffix}"))
    if redis_kind == "cluster":
        from conftest import RedisClusterServers  # tests/, an import root of the Kamailio test modules

        return RigBase(base, RedisClusterServers(base / "redis-cluster").start(), database_url, auth_db)
    return RigBase(base, RedisServer(base / "redis").start(), database_url, auth_db)


def import_catalog(path: Path, redis_url: str, database_url: str, deck_dir: Path) -> None:
    """What `rating-agent import catalog PATH` does, run in this process: the CLI's own code, without a new
    Python importing the agent (1.5-4 s a rig); the deck is built into `deck_dir`, where an agent started
    with the rig's folder (devstack.AgentProcess) finds it."""
    from agent.__main__ import _import_catalog
    from agent.config import Settings

    _import_catalog(Settings(redis_url=redis_url, database_url=database_url, deck_dir=str(deck_dir)), str(path),
                    set_balances=False)


async def create_database(server_url: str, name: str) -> str:
    """A new empty database `name` on the PostgreSQL server of `server_url`; its URL."""
    import asyncpg

    connection = await asyncpg.connect(server_url)
    try:
        await connection.execute(f'CREATE DATABASE "{name}"')
    finally:
        await connection.close()
    return server_url.rsplit("/", 1)[0] + "/" + name


def write_agent_list(path: Path, ports: list[int], set_id: int = 1) -> Path:
    """The dispatcher list file of a Kamailio with WITH_RATING_DISPATCHER (its RATING_DISPATCHER_LIST): one line
    per agent on 127.0.0.1, all in set `set_id` (RATING_DISPATCHER_SET)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{set_id} sip:127.0.0.1:{port}\n" for port in ports))
    return path
