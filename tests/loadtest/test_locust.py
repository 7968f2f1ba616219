"""A short, bounded Locust run of the call-flow scenario against a real agent: zero failures."""

import csv
import json
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT, AgentProcess, run_cli
from tests.test_transaction import catalog, prepaid


@pytest.mark.long  # a load tool run of ~20 s: make test-long
def test_call_flow_scenario_runs_without_failures(stack, tmp_path):
    document = tmp_path / "catalog.json"
    document.write_text(json.dumps(catalog(prepaid("a", 10**9), prepaid("b", 10**9), prepaid("zero", 0))))
    run_cli("import", "catalog", str(document), redis_url=stack.redis_url, database_url=stack.database_url)
    data = tmp_path / "data"
    data.mkdir()
    (data / "accounts.txt").write_text("a\nb\n")
    (data / "broke_accounts.txt").write_text("zero\n")
    (data / "destinations.txt").write_text("sip:39040123456@127.0.0.1:5060\n39333123\n")
    agent = AgentProcess(stack.redis_url, stack.database_url, tmp_path).start()
    try:
        done = subprocess.run(
            [sys.executable, "-m", "locust", "-f", str(ROOT / "loadtest" / "locustfile.py"), "--headless",
             "-u", "10", "-r", "10", "-t", "5s", "--host", agent.url, "--csv", str(tmp_path / "run"),
             "--only-summary", "--stop-timeout", "3"],
            env={**os.environ, "RATING_LOAD_DATA": str(data), "RATING_LOAD_HOLD": "0.2",
                 "RATING_LOAD_REFUSALS": "0.2"},
            capture_output=True, text=True, timeout=60,
        )
    finally:
        agent.stop()
    assert done.returncode == 0, done.stderr[-3000:]
    with open(tmp_path / "run_stats.csv") as handle:
        rows = {row["Name"]: row for row in csv.DictReader(handle)}
    assert int(rows["Aggregated"]["Failure Count"]) == 0
    assert int(rows["begin"]["Request Count"]) > 5
    assert int(rows["end"]["Request Count"]) > 5
    assert any(name.startswith("authorization (") for name in rows), "refusal scenarios ran"
