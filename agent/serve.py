"""Serving: one process, or a supervisor and N worker processes sharing the port (SO_REUSEPORT).

Each worker has its own event loop, Redis and PostgreSQL connections, catalog copy, outbox consumer and
expiry task; they share Redis and PostgreSQL. The kernel spreads new connections over the workers. The
supervisor restarts a worker that dies, and on SIGTERM or SIGINT asks every worker to finish its in-flight
requests, flush its outbox and exit. Metrics of all workers are added up through prometheus-client's
multi-process directory, which the supervisor creates and removes.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import shutil
import signal
import tempfile
import time

from .config import Settings

log = logging.getLogger(__name__)


def worker_count(settings: Settings) -> int:
    return settings.workers or os.cpu_count() or 1


def run_worker(settings: Settings, reuse_port: bool) -> None:
    """One event loop serving the app until SIGTERM/SIGINT, then a graceful shutdown."""
    import uvloop
    from aiohttp import web

    from .app import create_app

    uvloop.install()
    web.run_app(
        create_app(settings), host=settings.host, port=settings.port, reuse_port=reuse_port,
        access_log=None, print=lambda text: log.info(text.strip()), shutdown_timeout=10,
        handle_signals=True,
    )


def _child(settings: Settings) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor turns Ctrl-C into one SIGTERM
    run_worker(settings, reuse_port=True)


def serve(settings: Settings) -> int:
    count = worker_count(settings)
    if count == 1:
        run_worker(settings, reuse_port=False)
        return 0
    own_directory = "PROMETHEUS_MULTIPROC_DIR" not in os.environ
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR") or tempfile.mkdtemp(prefix="rating-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory  # before any worker imports prometheus_client
    context = multiprocessing.get_context("fork")
    workers: dict[int, multiprocessing.Process] = {}
    stopping = False

    def start(slot: int) -> None:
        process = context.Process(target=_child, args=(settings,), name=f"rating-worker-{slot}")
        process.start()
        workers[slot] = process
        log.info("worker %d started (pid %d)", slot, process.pid)

    def stop(signum, _frame) -> None:
        nonlocal stopping
        if not stopping:
            log.info("stopping %d workers (signal %d)", len(workers), signum)
        stopping = True
        for process in workers.values():
            if process.is_alive():
                os.kill(process.pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        for slot in range(count):
            start(slot)
        while True:
            time.sleep(0.2)
            for slot, process in list(workers.items()):
                if process.is_alive():
                    continue
                _mark_dead(process.pid)
                if stopping:
                    del workers[slot]
                else:
                    log.error("worker %d (pid %d) exited with %s; restarting", slot, process.pid, process.exitcode)
                    start(slot)
            if stopping and not workers:
                return 0
    finally:
        for process in workers.values():
            process.join(20)
            if process.is_alive():
                process.kill()
        if own_directory:
            shutil.rmtree(directory, ignore_errors=True)


def _mark_dead(pid: int) -> None:
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid)
