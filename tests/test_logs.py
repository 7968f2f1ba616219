"""Logging that an outage cannot flood (agent/logs.py)."""

import logging

from agent.logs import Throttled


def test_an_outage_logs_one_warning_a_second_with_the_count_of_those_folded_into_it(caplog):
    now = [100.0]
    throttled = Throttled(logging.getLogger("test.throttled"), clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="test.throttled"):
        for n in range(543):  # a 5 s outage at about a hundred failed requests a second
            now[0] = 100.0 + n / 108
            throttled.warn("Redis unavailable: %s", "refused")
    lines = [record.getMessage() for record in caplog.records]
    assert len(lines) == 6
    assert lines[0] == "Redis unavailable: refused"
    assert all(line.startswith("Redis unavailable: refused (and ") for line in lines[1:])
    folded = sum(int(line.split("(and ")[1].split()[0]) for line in lines[1:])
    assert folded + len(lines) <= 543
