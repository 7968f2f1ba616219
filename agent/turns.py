"""Long work on a serving event loop, done in turns: it gives the loop back whenever it has held it for
`HOLD` seconds, so a request arriving meanwhile waits that long at most at each of its steps, however large
the work (a catch-up of thousands of rates) and however the host's cores are shared (the time is the wall
clock's)."""

from __future__ import annotations

import asyncio
import time

HOLD = 0.0001  # seconds: a request meets a turn at each of its steps (its body, its Redis reply, its answer)
AT_ONCE = 32  # small pieces (rates made, keys laid over) done between two looks at the clock


class Turns:
    """`if turns.due(): await turns.give()` between two pieces of the work: cheap when not due."""

    __slots__ = ("hold", "_until")

    def __init__(self, hold: float = HOLD) -> None:
        self.hold = hold
        self._until = time.perf_counter() + hold

    def due(self) -> bool:
        return time.perf_counter() >= self._until

    async def give(self) -> None:
        await asyncio.sleep(0)
        self._until = time.perf_counter() + self.hold
