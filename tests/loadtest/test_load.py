"""`make load` (loadtest/load.py) end to end, briefly: fitting data generated, imported into a running agent's
servers, the Locust scenario run, and a summary with no refusal but the intended ones."""

import re
import subprocess
import sys

import pytest

from tests.conftest import ROOT, AgentProcess


@pytest.mark.long  # a load tool run of ~20 s: make test-long
def test_the_load_command_generates_imports_runs_and_reports(stack, tmp_path):
    agent = AgentProcess(stack.redis_url, stack.database_url, tmp_path).start()
    try:
        done = subprocess.run(
            [sys.executable, str(ROOT / "loadtest" / "load.py"), "--host", agent.url,
             "--redis-url", stack.redis_url, "--database-url", stack.database_url,
             "--deck-dir", agent.env["RATING_DECK_DIR"], "--data", str(tmp_path / "data"),
             "--prefixes", "1000", "--accounts", "20", "--users", "5", "--spawn-rate", "5", "--duration", "4s",
             "--hold", "0.2", "--refusals", "0.3"],
            capture_output=True, text=True, timeout=180,
        )
    finally:
        agent.stop()
    out = done.stdout
    assert done.returncode == 0, out + done.stderr[-3000:]
    assert "imported into the running stack" in out
    setups = re.search(r"call setups per second \(begin requests/s\): ([\d.]+)", out)
    assert setups and float(setups.group(1)) > 0, out
    for operation in ("authorization", "begin", "end"):
        assert re.search(rf"^{operation}\s+\d", out, re.MULTILINE), out
    refusals = re.search(r"refusals: ([\d.]+)% of the calls, all intended \(([^)]*)\)", out)
    assert refusals and float(refusals.group(1)) > 0, out
    assert "failures: none" in out, out


def test_the_load_command_says_so_when_no_agent_runs(tmp_path):
    from devstack import free_port

    done = subprocess.run([sys.executable, str(ROOT / "loadtest" / "load.py"),
                           "--host", f"http://127.0.0.1:{free_port()}", "--data", str(tmp_path / "data")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "make run" in done.stderr
    assert not (tmp_path / "data").exists()
