"""Logging that an outage cannot flood."""

from __future__ import annotations

import logging
import time


class Throttled:
    """One warning a second at most, with how many were folded into it: an outage logs a line a second,
    not a line per request."""

    def __init__(self, log: logging.Logger, clock=time.monotonic) -> None:
        self.log = log
        self.clock = clock
        self.last = -1.0
        self.folded = 0

    def warn(self, message: str, *args) -> None:
        now = self.clock()
        if now - self.last < 1.0:
            self.folded += 1
            return
        suffix = f" (and {self.folded} more in the last second)" if self.folded else ""
        self.last, self.folded = now, 0
        self.log.warning(message + suffix, *args)
