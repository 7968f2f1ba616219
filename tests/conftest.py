"""Real servers for the test suite: one redis-server and one PostgreSQL per session, on free loopback ports.

Tests that need a clean slate use the `stack` fixture, which empties Redis and the database between tests
instead of restarting the servers (restarting PostgreSQL costs about a second).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import urllib.request

from devstack import PostgresServer, RedisServer, free_port

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory):
    server = PostgresServer(tmp_path_factory.mktemp("postgres")).start()
    yield server
    server.stop("immediate")


class AgentProcess:
    """`python -m agent serve` as a child process, with its own port and environment."""

    def __init__(self, redis_url: str, database_url: str, log_dir: Path, **settings):
        self.port = free_port()
        self.env = {
            **os.environ,
            "RATING_HOST": "127.0.0.1",
            "RATING_PORT": str(self.port),
            "RATING_REDIS_URL": redis_url,
            "RATING_DATABASE_URL": database_url,
            **{f"RATING_{k.upper()}": str(v) for k, v in settings.items()},
        }
        self.log_path = log_dir / f"agent-{self.port}.log"
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> "AgentProcess":
        self.log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "agent", "serve"],
            cwd=ROOT, env=self.env, stdout=self.log, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"agent exited: {self.log_path.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(self.url + "/status", timeout=0.5) as reply:
                    if reply.status == 204:
                        return self
            except OSError:
                time.sleep(0.1)
        raise TimeoutError(f"agent not ready: {self.log_path.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None


def run_cli(*argv: str, redis_url: str, database_url: str, check: bool = True) -> subprocess.CompletedProcess:
    """Runs `python -m agent ARGV...` against the given servers."""
    env = {**os.environ, "RATING_REDIS_URL": redis_url, "RATING_DATABASE_URL": database_url}
    done = subprocess.run(
        [sys.executable, "-m", "agent", *argv], cwd=ROOT, env=env, capture_output=True, text=True
    )
    if check and done.returncode != 0:
        raise AssertionError(f"agent {' '.join(argv)} failed:\n{done.stdout}\n{done.stderr}")
    return done
