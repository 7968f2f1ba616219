"""Long work on a serving loop in turns (agent/turns.py): the loop gets a turn once the work held it `hold` seconds."""

import asyncio

from agent import turns as turns_module
from agent.turns import Turns


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def test_the_loop_gets_a_turn_once_the_work_has_held_it_for_the_hold_and_not_before(monkeypatch):
    clock = _Clock()
    monkeypatch.setattr(turns_module.time, "perf_counter", clock)
    ran: list[float] = []

    async def request() -> None:  # what waits for the loop meanwhile
        while True:
            ran.append(clock.now)
            await asyncio.sleep(0)

    waiting = asyncio.create_task(request())
    await asyncio.sleep(0)
    ran.clear()
    turns = Turns(hold=0.0009)
    given = 0
    for _ in range(25):  # 25 pieces of 0.2 ms each: a turn after every 5
        clock.now += 0.0002
        if turns.due():
            await turns.give()
            given += 1
    waiting.cancel()
    assert given == 5
    assert len(ran) == 5  # the other task ran at each turn, and only then
    assert all(b - a >= 0.0009 for a, b in zip(ran, ran[1:]))
