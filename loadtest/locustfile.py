"""Locust call-flow scenario: what Kamailio does for every call, with realistic refusals mixed in.

Each simulated call sends an authorization; an authorized call then begins, is held for a drawn duration
(exponential, mean RATING_LOAD_HOLD seconds, never longer than its granted units) and ends. A share of the
calls is meant to be refused: unknown account, unreachable destination, insufficient balance. A request
fails (in Locust's statistics) when the HTTP status is not 200 or the answer is not the expected one.

Data comes from the folder RATING_LOAD_DATA, as written by `loadtest/generate.py` (accounts.txt,
destinations.txt) plus an optional broke_accounts.txt (accounts with no balance). Without it, the demo
data of `make run` is used.

    locust -f loadtest/locustfile.py --host http://127.0.0.1:8080 --headless -u 200 -r 50 -t 60s --csv out/run

Variables: RATING_LOAD_DATA, RATING_LOAD_HOLD (mean hold seconds, default 1), RATING_LOAD_REFUSALS
(share of calls meant to be refused, default 0.1), RATING_LOAD_TENANT (default "default").
"""

from __future__ import annotations

import itertools
import os
import random
import uuid
from pathlib import Path

from locust import FastHttpUser, between, task


def _lines(name: str, fallback: list[str]) -> list[str]:
    folder = os.environ.get("RATING_LOAD_DATA")
    if folder and (Path(folder) / name).exists():
        lines = [line.strip() for line in (Path(folder) / name).read_text().splitlines() if line.strip()]
        if lines:
            return lines
    return fallback


ACCOUNTS = _lines("accounts.txt", ["1000"])
DESTINATIONS = _lines("destinations.txt", ["sip:39040123456@127.0.0.1:5060", "sip:441234567@127.0.0.1"])
BROKE = _lines("broke_accounts.txt", [])
HOLD = float(os.environ.get("RATING_LOAD_HOLD", "1"))
REFUSALS = float(os.environ.get("RATING_LOAD_REFUSALS", "0.1"))
TENANT = os.environ.get("RATING_LOAD_TENANT", "default")
UNREACHABLE = "sip:0000000000@127.0.0.1:5060"  # no E.164 country code starts with 0
_sequence = itertools.count()


class CallFlow(FastHttpUser):
    """One caller placing calls back to back."""

    wait_time = between(0.0, 0.2)

    def _post(self, path: str, body: dict, name: str):
        return self.client.post(path, json=body, name=name, catch_response=True)

    def _refused_call(self, kind: str) -> None:
        tag = f"locust-{uuid.uuid4().hex}"
        if kind == "NOT_FOUND":
            body = {"account_tag": f"unknown-{next(_sequence)}", "destination": random.choice(DESTINATIONS)}
        elif kind == "UNREACHEABLE_DESTINATION":
            body = {"account_tag": random.choice(ACCOUNTS), "destination": UNREACHABLE}
        else:
            body = {"account_tag": random.choice(BROKE), "destination": random.choice(DESTINATIONS)}
        with self._post("/v1/authorization", {"tenant": TENANT, "transaction_tag": tag, **body},
                        f"authorization ({kind})") as reply:
            if reply.status_code != 200:
                reply.failure(f"HTTP {reply.status_code}")
            elif reply.json().get("unauthorized_reason") != kind:
                reply.failure(f"expected {kind}, got {reply.json().get('unauthorized_reason')}")

    @task
    def call(self) -> None:
        if random.random() < REFUSALS:
            kinds = ["NOT_FOUND", "UNREACHEABLE_DESTINATION"] + (["BALANCE_INSUFFICIENT"] if BROKE else [])
            self._refused_call(random.choice(kinds))
            return
        tag = f"locust-{uuid.uuid4().hex}"
        base = {"tenant": TENANT, "transaction_tag": tag, "account_tag": random.choice(ACCOUNTS),
                "source": "sip:locust@127.0.0.1", "destination": random.choice(DESTINATIONS)}
        with self._post("/v1/authorization", base, "authorization") as reply:
            if reply.status_code != 200:
                reply.failure(f"HTTP {reply.status_code}")
                return
            answer = reply.json()
            if not answer.get("authorized"):
                reply.failure(f"refused: {answer.get('unauthorized_reason')}")
                return
            units = answer["max_available_units"]
        with self._post("/v1/begin_transaction", base, "begin") as reply:
            if reply.status_code != 200 or not reply.json().get("ok"):
                reply.failure(f"begin failed: HTTP {reply.status_code} {reply.text[:100]}")
                return
        self._sleep(min(random.expovariate(1 / HOLD) if HOLD > 0 else 0, units))
        with self._post("/v1/end_transaction", {"tenant": TENANT, "transaction_tag": tag}, "end") as reply:
            if reply.status_code != 200 or not reply.json().get("ok"):
                reply.failure(f"end failed: HTTP {reply.status_code} {reply.text[:100]}")

    def _sleep(self, seconds: float) -> None:
        import gevent

        gevent.sleep(seconds)
