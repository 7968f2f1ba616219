"""Local, throw-away Redis and PostgreSQL servers for `make run` and the test suite.

Both servers listen on 127.0.0.1 only, keep their data in a folder of the caller's choosing and are
stopped by the caller. PostgreSQL refuses to run as root, so when we are root the cluster is owned by
and run as the `postgres` system user.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

PG_BIN_CANDIDATES = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def free_ports(count: int) -> list[int]:
    """`count` distinct TCP ports free on 127.0.0.1 right now (held together while chosen, so none repeats)."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) for _ in range(count)]
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]


def wait_for_port(port: int, timeout: float = 20.0, host: str = "127.0.0.1",
                  process: subprocess.Popen | None = None) -> None:
    """Until something listens on `port`; with `process`, fails at once when it has exited instead."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the server for {host}:{port} exited ({process.returncode}) before listening")
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout}s")


def _pg_tool(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    for bindir in PG_BIN_CANDIDATES:
        if (bindir / name).exists():
            return str(bindir / name)
    raise FileNotFoundError(f"PostgreSQL tool {name!r} not found; install postgresql")


_PR_SET_PDEATHSIG = 1


def _die_with_parent(signum: int = signal.SIGTERM, user: pwd.struct_passwd | None = None):
    """A preexec function: the child gets `signum` when its parent dies (no servers left behind when a
    test run is killed), and runs as `user` when given (PostgreSQL refuses to run as root). It gets a
    process group of its own, so a terminal's Ctrl-C reaches only its parent, which stops the agent first
    and the servers after it (the agent writes its outbox to them on the way out)."""

    def prepare() -> None:
        if os.getpgid(0) != os.getpid():  # not already leading a group (start_new_session does that)
            os.setpgid(0, 0)
        if user is not None:
            os.setgid(user.pw_gid)
            os.initgroups(user.pw_name, user.pw_gid)
            os.setuid(user.pw_uid)
        # After the credential change, which would clear it.
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signum)

    return prepare


def _postgres_user() -> pwd.struct_passwd | None:
    return pwd.getpwnam("postgres") if os.geteuid() == 0 else None


def stop_process(process: subprocess.Popen | None, timeout: float = 15.0, signum: int = signal.SIGTERM) -> None:
    """Asks a child to stop, waits `timeout` seconds, then kills it."""
    if process is None or process.poll() is not None:
        return
    process.send_signal(signum)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _make_traversable(directory: Path) -> None:
    """Let the postgres user reach its data folder (temporary folders are private to root)."""
    for folder in [directory, *directory.resolve().parents]:
        mode = folder.stat().st_mode
        if not mode & 0o001:
            folder.chmod(mode | 0o001)


def process_tree(root: int) -> list[int]:
    """`root` and every process below it (a process that exits meanwhile is left out with its children)."""
    found, queue = [], [root]
    while queue:
        pid = queue.pop()
        found.append(pid)
        try:
            with open(f"/proc/{pid}/task/{pid}/children") as handle:
                queue.extend(int(child) for child in handle.read().split())
        except OSError:
            pass
    return found


@dataclass
class RedisServer:
    """A redis-server child process with append-only persistence in `directory`."""

    directory: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None
    options: tuple[str, ...] = ()  # more redis-server options, e.g. ("--key-load-delay", "100")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def socket(self) -> Path:
        return self.directory / "redis.sock"

    @property
    def socket_url(self) -> str:
        """The same server over its Unix socket: cheaper than TCP for an agent on the same host."""
        return f"unix://{self.socket}?db=0"

    def start(self) -> "RedisServer":
        self.directory.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [
                shutil.which("redis-server") or "redis-server",
                "--bind", "127.0.0.1",
                "--port", str(self.port),
                "--unixsocket", str(self.socket),
                "--unixsocketperm", "700",
                "--dir", str(self.directory),
                "--appendonly", "yes",
                "--appendfsync", "everysec",
                "--save", "",
                "--daemonize", "no",
                "--logfile", str(self.directory / "redis.log"),
                *self.options,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=_die_with_parent(),
        )
        wait_for_port(self.port, process=self.process)
        return self

    def stop(self) -> None:
        stop_process(self.process, 10)
        self.process = None


@dataclass
class PostgresServer:
    """A PostgreSQL cluster in `directory`, trust authentication on 127.0.0.1, database `rating`.

    `postgres` runs as a direct child (not daemonized by pg_ctl), so it stops with its parent.
    """

    directory: Path
    port: int = field(default_factory=free_port)
    database: str = "rating"
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{self.database}"

    def _run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
        done = subprocess.run(
            list(argv), capture_output=True, text=True, cwd="/",
            preexec_fn=_die_with_parent(user=_postgres_user()),
        )
        if check and done.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed: {done.stderr or done.stdout}")
        return done

    def start(self) -> "PostgresServer":
        data = self.directory / "pgdata"
        user = _postgres_user()
        self.directory.mkdir(parents=True, exist_ok=True)
        if user is not None:
            os.chown(self.directory, user.pw_uid, user.pw_gid)
            _make_traversable(self.directory.parent)
        if not (data / "PG_VERSION").exists():
            self._run(
                _pg_tool("initdb"), "-D", str(data), "-U", "postgres", "-A", "trust",
                "-E", "UTF8", "--no-sync",
            )
        log = open(self.directory / "postgres.log", "ab")
        self.process = subprocess.Popen(
            [
                _pg_tool("postgres"), "-D", str(data), "-c", "listen_addresses=127.0.0.1",
                "-c", f"port={self.port}", "-c", f"unix_socket_directories={self.directory}",
                "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
                "-c", "max_connections=200",
            ],
            stdout=log, stderr=subprocess.STDOUT, cwd="/",
            preexec_fn=_die_with_parent(signal.SIGQUIT, user),
        )
        log.close()
        self._wait_ready()
        exists = self._run(
            _pg_tool("psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-tAc",
            f"SELECT 1 FROM pg_database WHERE datname = '{self.database}'",
        )
        if exists.stdout.strip() != "1":
            self._run(
                _pg_tool("createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres",
                self.database,
            )
        return self

    def _wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"postgres exited: {(self.directory / 'postgres.log').read_text()[-2000:]}")
            done = self._run(_pg_tool("pg_isready"), "-h", "127.0.0.1", "-p", str(self.port), check=False)
            if done.returncode == 0:
                return
            time.sleep(0.1)
        raise TimeoutError(f"PostgreSQL not ready on port {self.port}")

    def stop(self, mode: str = "fast") -> None:
        """`fast` (SIGINT) or `immediate` (SIGQUIT), as pg_ctl's modes."""
        stop_process(self.process, 30, signal.SIGQUIT if mode == "immediate" else signal.SIGINT)
        self.process = None


ROOT = Path(__file__).resolve().parent.parent


class AgentProcess:
    """`python -m agent serve` as a child process on a free port, ready once `/ready` answers 200."""

    def __init__(self, redis_url: str, database_url: str, log_dir: Path, **settings) -> None:
        self.port = free_port()
        self.root = ROOT  # the source tree it runs from (a benchmark may run another checkout's agent)
        self.env = {
            **os.environ,
            "RATING_HOST": "127.0.0.1",
            "RATING_PORT": str(self.port),
            "RATING_REDIS_URL": redis_url,
            "RATING_DATABASE_URL": database_url,
            "RATING_WORKERS": "1",
            "RATING_DECK_DIR": str(Path(log_dir) / "decks"),  # agents started with one log folder share a host
            **{f"RATING_{k.upper()}": str(v) for k, v in settings.items()},
        }
        self.log_path = Path(log_dir) / f"agent-{self.port}.log"
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def cli(self, *argv: str, timeout: float = 600) -> subprocess.CompletedProcess:
        """Runs `python -m agent ARGV...` with this agent's settings; raises on failure."""
        done = subprocess.run([sys.executable, "-m", "agent", *argv], cwd=self.root, env=self.env,
                              capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            raise RuntimeError(f"agent {' '.join(argv)} failed:\n{done.stdout}\n{done.stderr}")
        return done

    def start(self, timeout: float = 30.0) -> "AgentProcess":
        with open(self.log_path, "ab") as log:
            # Its own process group (so its whole tree can be measured or signalled), stopped with us.
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

    def pids(self) -> list[int]:
        """The supervisor and every process under it (workers, housekeeper)."""
        return process_tree(self.process.pid) if self.process else []

    def signal_all(self, signum: int) -> None:
        """Signals the whole agent, e.g. SIGSTOP to freeze it (the supervisor alone serves nothing)."""
        for pid in self.pids():
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass

    def stop(self) -> None:
        stop_process(self.process, 30)
        self.process = None


@contextlib.contextmanager
def scratch(prefix: str, keep: bool = False) -> Iterator[tuple[Path, list[Callable[[], None]]]]:
    """A temporary folder for a load script and the list of stops of what it starts there.

    SIGTERM and Ctrl-C raise KeyboardInterrupt (also in a script started in the background). On the way out
    every stop runs, last first, with Ctrl-C ignored so that a second one cannot leave a server behind; then
    the folder is removed unless `keep`.
    """

    def on_term(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    stops: list[Callable[[], None]] = []
    try:
        yield folder, stops
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        for stop in reversed(stops):
            try:
                stop()
            except Exception as exc:  # noqa: BLE001 - stop the others anyway
                print(f"[bench] stop failed: {exc}", file=sys.stderr)
        if keep:
            print(f"[bench] kept {folder}", file=sys.stderr)
        else:
            shutil.rmtree(folder, ignore_errors=True)
        signal.signal(signal.SIGINT, signal.default_int_handler)
