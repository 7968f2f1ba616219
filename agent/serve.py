"""Serving: a supervisor, N HTTP worker processes sharing the port (SO_REUSEPORT), one manager and one
housekeeper.

Each worker has its own event loop, Redis and PostgreSQL connections and catalog snapshot (over the
decks the host maps once), and only answers the call endpoints and probes; GraphQL and deck uploads that
reach the agent port are passed to the manager over a Unix socket (http/forward.py), so no hostile or
large management request runs on a loop that answers Kamailio. The housekeeper carries the outbox to
PostgreSQL, ends overdue calls and builds decks this host lacks. The kernel spreads new connections over
the workers. The supervisor builds missing decks before anything starts, and restarts a process that
dies; on SIGTERM or SIGINT it stops the workers first (each finishes its in-flight requests), then the
manager, then the housekeeper, which writes the whole outbox before exiting. Metrics of all
processes are added up through prometheus-client's multi-process directory, which the supervisor creates
and removes.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import logging
import multiprocessing
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator

from . import scheduling
from .config import Settings

log = logging.getLogger(__name__)
_PR_SET_PDEATHSIG = 1
_COMMAND_NAMES = {"housekeeper": "rating-keeper"}  # what `top` shows (15 bytes at most)
MANAGER_SOCKET = "RATING_MANAGER_SOCKET"  # set by the supervisor for its children
# Scheduling priority (nice) of processes whose work may wait: on a busy host the kernel gives the cores to
# the workers answering Kamailio first; the deck builds the manager starts inherit it. Idle cores are still used.
_NICE = {"manager": 19}


def cpu_quota() -> int:
    """Cores this process may use: its CPU affinity, capped by a cgroup v2 quota (a container's --cpus)."""
    cores = len(os.sched_getaffinity(0))
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if quota != "max":
            cores = min(cores, max(1, -(-int(quota) // int(period))))
    except (OSError, ValueError):
        pass
    return cores


def worker_count(settings: Settings) -> int:
    return settings.workers or cpu_quota()


_LAG_TICK = 0.01  # seconds between two looks at a worker's event loop (watch_loop)
_LAG_LOGGED = 0.05  # a look this late is logged (at most once a second)


class Collections:
    """The longest full garbage collection (generation 2) of this process since the last `take`."""

    def __init__(self) -> None:
        self.longest = 0.0
        self._began = 0.0

    def __call__(self, phase: str, info: dict) -> None:
        if info["generation"] == 2:
            if phase == "start":
                self._began = time.perf_counter()
            else:
                self.longest = max(self.longest, time.perf_counter() - self._began)

    def take(self) -> float:
        longest, self.longest = self.longest, 0.0
        return longest


async def watch_loop(observe: Callable[[float], None], busy: Callable[[], str] = lambda: "",
                     tick: float = _LAG_TICK) -> None:
    """Observes how late the event loop runs a timer due every `tick` seconds. A request that arrives
    meanwhile waits as long before its handler starts, which its own latency (timed from the handler)
    does not show. A look `_LAG_LOGGED` late or more is logged with `busy()` (what the worker was doing)
    and the longest full garbage collection since the last such line."""
    collections = Collections()
    gc.callbacks.append(collections)
    logged = 0.0
    try:
        while True:
            due = time.perf_counter() + tick
            await asyncio.sleep(tick)
            now = time.perf_counter()
            late = now - due if now > due else 0.0
            observe(late)
            if late >= _LAG_LOGGED and now - logged >= 1.0:
                logged = now
                log.info("event loop %.0f ms late%s; longest full garbage collection since the last such line"
                         " %.1f ms", late * 1000, busy(), collections.take() * 1000)
    finally:
        gc.callbacks.remove(collections)


def run_worker(settings: Settings, reuse_port: bool = True) -> None:
    """One event loop serving requests until SIGTERM (or SIGINT, unless ignored), then a graceful shutdown."""
    import uvloop

    uvloop.run(serve_http(settings, reuse_port))


def _until_signal() -> asyncio.Event:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        if signal.getsignal(signum) is not signal.SIG_IGN:  # children leave Ctrl-C to the supervisor
            loop.add_signal_handler(signum, stop.set)
    return stop


async def _set_up(runner, stop: asyncio.Event) -> bool:
    """Starts the application unless a signal comes first: a process still waiting for Redis or PostgreSQL
    at start (or restarted while they are down) stops at once instead of being killed at the deadline."""
    setup = asyncio.ensure_future(runner.setup())
    signalled = asyncio.ensure_future(stop.wait())
    await asyncio.wait({setup, signalled}, return_when=asyncio.FIRST_COMPLETED)
    signalled.cancel()
    if not setup.done():
        setup.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await setup
        return False
    setup.result()
    return True


async def serve_http(settings: Settings, reuse_port: bool = True) -> None:
    """A worker: the application behind the front door (http/front.py) on the configured address, until a
    signal; management requests go to the manager's socket."""
    from aiohttp import web

    from . import metrics
    from .app import Role, create_app
    from .http import front
    from .keys import CATALOG

    stop = _until_signal()
    app = create_app(settings, Role.WORKER, os.environ.get(MANAGER_SOCKET, ""))
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=10)
    watching = None
    try:
        if not await _set_up(runner, stop):
            return
        front.install(runner.server, app)
        watching = asyncio.ensure_future(watch_loop(metrics.ENDPOINTS.loop_lag.observe, app[CATALOG].busy))
        # What start-up made (modules, the catalog snapshot) lives as long as the worker: kept out of the
        # garbage collector's full passes, which would otherwise walk it again and again while serving.
        gc.collect()
        gc.freeze()
        await web.TCPSite(runner, settings.host, settings.port, reuse_port=reuse_port).start()
        log.info("serving on http://%s:%d", settings.host, settings.port)
        await stop.wait()
    finally:
        if watching is not None:
            watching.cancel()
        await runner.cleanup()


async def serve_management(settings: Settings) -> None:
    """The manager: GraphQL and deck uploads on the Unix socket the workers forward to, and on
    `--management-port` when one is set, until a signal."""
    from aiohttp import web

    from .app import Role, create_app

    stop = _until_signal()
    runner = web.AppRunner(create_app(settings, Role.MANAGER), access_log=None, shutdown_timeout=30)
    try:
        if not await _set_up(runner, stop):
            return
        await web.UnixSite(runner, os.environ[MANAGER_SOCKET]).start()
        if settings.management_port:
            await web.TCPSite(runner, settings.host, settings.management_port).start()
            log.info("management on http://%s:%d", settings.host, settings.management_port)
        await stop.wait()
    finally:
        await runner.cleanup()


def run_manager(settings: Settings) -> None:
    import uvloop

    uvloop.run(serve_management(settings))


def set_process_name(name: str) -> None:
    """Names the process in `top`, `ps -o comm` and /proc (Linux keeps 15 bytes of it)."""
    with contextlib.suppress(OSError):
        Path("/proc/self/comm").write_text(name[:15])


def _child(target: Callable[[Settings], None], settings: Settings, name: str, nice: int = 0) -> None:
    set_process_name(name)
    scheduling.apart(nice)
    # Stop (gracefully) if the supervisor dies; Ctrl-C reaches the supervisor, which forwards one SIGTERM.
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    target(settings)


def _housekeeper(settings: Settings) -> None:
    from .housekeeping import run_housekeeper

    run_housekeeper(settings)


class Supervisor:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.context = multiprocessing.get_context("fork")
        self.workers: dict[str, multiprocessing.Process] = {}
        self.targets: dict[str, Callable[[Settings], None]] = {}
        self.stopping = False

    def start(self, name: str, target: Callable[[Settings], None]) -> None:
        # What the supervisor imported and made is inherited: frozen, the child's collections skip it (a full
        # pass over it costs each child ~0.1 s at start and copies every page it touches).
        gc.freeze()
        process = self.context.Process(
            target=_child, args=(target, self.settings, _COMMAND_NAMES.get(name, f"rating-{name}"), _NICE.get(name, 0)),
            name=f"rating-{name}")
        process.start()
        self.workers[name] = process
        self.targets[name] = target
        log.info("%s started (pid %d)", name, process.pid)

    def _signal(self, names: list[str]) -> None:
        for name in names:
            process = self.workers.get(name)
            if process is not None and process.is_alive():
                os.kill(process.pid, signal.SIGTERM)

    def _wait(self, names: list[str], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for name in names:
            process = self.workers.get(name)
            if process is None:
                continue
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                log.error("%s did not stop in time; killing it", name)
                process.kill()
                process.join()
            _mark_dead(process.pid, self.settings)
            del self.workers[name]

    def stop(self, signum, _frame) -> None:
        if not self.stopping:
            log.info("stopping (signal %d)", signum)
        self.stopping = True

    def run(self, count: int) -> int:
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)
        set_process_name("rating-super")
        run = tempfile.mkdtemp(prefix="rating-run-")
        os.environ[MANAGER_SOCKET] = os.path.join(run, "manager.sock")
        http = [f"worker-{slot}" for slot in range(count)]
        # The workers do not wait for the manager: they answer calls as soon as they are up, and hold a
        # management request until the manager accepts (http/forward.py).
        self.start("manager", run_manager)
        for name in http:
            self.start(name, run_worker)
        self.start("housekeeper", _housekeeper)
        try:
            while not self.stopping:
                time.sleep(0.2)
                for name, process in list(self.workers.items()):
                    if not process.is_alive() and not self.stopping:
                        log.error("%s (pid %d) exited with %s; restarting", name, process.pid, process.exitcode)
                        _mark_dead(process.pid, self.settings)
                        self.start(name, self.targets[name])
        finally:
            self._signal(http)
            self._wait(http, timeout=20)
            self._signal(["manager"])
            self._wait(["manager"], timeout=35)
            self._signal(["housekeeper"])
            self._wait(["housekeeper"], timeout=30)
            shutil.rmtree(run, ignore_errors=True)
        return 0


@contextlib.contextmanager
def metrics_directory() -> Iterator[str]:
    """The multi-process metrics folder; enter it before anything imports prometheus_client."""
    if "prometheus_client" in sys.modules:
        log.warning("prometheus_client imported before the metrics folder was set: metrics will be per process")
    own = "PROMETHEUS_MULTIPROC_DIR" not in os.environ
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR") or tempfile.mkdtemp(prefix="rating-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
    try:
        yield directory
    finally:
        if own:
            shutil.rmtree(directory, ignore_errors=True)
            del os.environ["PROMETHEUS_MULTIPROC_DIR"]


async def redis_problem(client) -> str | None:
    """Why this Redis must not hold live money, or None: an eviction policy drops balances and calls."""
    try:
        policy = (await client.config_get("maxmemory-policy")).get("maxmemory-policy", "noeviction")
        aof = (await client.config_get("appendonly")).get("appendonly", "no")
    except Exception as exc:  # noqa: BLE001 - CONFIG may be renamed or forbidden: say so and go on
        log.warning("could not read Redis' configuration (%s): make sure maxmemory-policy is noeviction", exc)
        return None
    if policy != "noeviction":
        return (f"Redis evicts keys (maxmemory-policy {policy}): balances and calls would be lost;"
                " set maxmemory-policy noeviction")
    if aof != "yes":
        log.warning("Redis runs without append-only persistence (appendonly no): a restart loses live state")
    return None


def port_taken(host: str, port: int) -> bool:
    """Whether another process serves our port already (its workers hold it with SO_REUSEPORT, which would
    let a second agent start silently beside it)."""
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return True
    return False


async def prepare(settings: Settings) -> None:
    """Before any worker starts: the schema is current and every deck the workers will map is built here."""
    import cache

    from .app import until_ready
    from .store import decks
    from .store.database import create_pool, migrate

    pool = await until_ready("PostgreSQL", lambda: create_pool(settings.database_url, max_size=2))
    client = cache.connect(settings.redis_url, max(settings.redis_timeout, 5.0))
    try:
        await until_ready("Redis", lambda: cache.load_library(client))  # also while it loads its data
        problem = await redis_problem(client)
        if problem:
            raise SystemExit(f"configuration error: {problem}")
        async with pool.acquire() as connection:
            await migrate(connection)
        if await decks.ensure(pool, settings.decks):
            await decks.publish(settings, pool, client)
    finally:
        await client.aclose()
        await pool.close()


def serve(settings: Settings) -> int:
    """Runs the supervisor until SIGTERM/SIGINT; call inside `metrics_directory()`."""
    if port_taken(settings.host, settings.port):
        print(f"configuration error: {settings.host}:{settings.port} is in use (another agent?)", file=sys.stderr)
        return 2
    try:
        asyncio.run(prepare(settings))
    except SystemExit as exc:
        print(exc, file=sys.stderr)
        return 2
    return Supervisor(settings).run(worker_count(settings))


def _mark_dead(pid: int, settings: Settings) -> None:
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid)
    asyncio.run(_forget_follower(settings, pid))


async def _forget_follower(settings: Settings, pid: int) -> None:
    """A dead worker's follower entry would hold every catalog writer back for LIVE_FOR seconds."""
    import cache
    from cache import followers

    client = cache.connect(settings.redis_url, settings.redis_timeout)
    try:
        await followers.forget_process(client, pid)
    except Exception as exc:  # Redis down: the entry ages out by itself
        log.warning("could not forget the follower entries of pid %d: %s", pid, exc)
    finally:
        await client.aclose()
