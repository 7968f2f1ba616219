"""The balance invariant under concurrency: a PREPAID account never ends a call below zero."""

import asyncio

import pytest

from tests.test_transaction import at, catalog, post, prepaid


@pytest.mark.parametrize("share", [100, 10])
async def test_200_simultaneous_calls_never_overdraw_and_the_ledger_sums_to_the_charges(agent, stack, share):
    client = await agent(catalog(prepaid("hot", 5000)), reservation_share=share)
    tags = [f"call-{i}" for i in range(200)]

    async def authorize_and_begin(tag):
        answer = await post(client, "authorization", transaction_tag=tag, account_tag="hot", destination="39")
        if answer["authorized"]:
            assert answer["max_available_units"] > 0
            begun = await post(client, "begin", transaction_tag=tag, account_tag="hot", timestamp_begin=at(0))
            assert begun["ok"] is True
        return answer

    answers = await asyncio.gather(*(authorize_and_begin(tag) for tag in tags))
    granted = {tag: a["max_available_units"] for tag, a in zip(tags, answers) if a["authorized"]}
    assert granted, "at least one call must be authorized"
    refused = [a["unauthorized_reason"] for a in answers if not a["authorized"]]
    assert set(refused) <= {"BALANCE_INSUFFICIENT"}
    # Every granted second is covered: the reservations never exceed the balance (rate 1 per second).
    state = await stack.account_state("hot")
    assert state["reserved"] == sum(granted.values()) <= 5000

    await asyncio.gather(*(
        post(client, "end", transaction_tag=tag, timestamp_end=at(units)) for tag, units in granted.items()
    ))
    state = await stack.account_state("hot")
    assert state["balance"] >= 0
    assert state["balance"] == 5000 - sum(granted.values())
    assert (state["reserved"], state["n"]) == (0, 0)

    for _ in range(200):
        total = await stack.database.fetchval(
            "SELECT coalesce(sum(amount), 0) FROM ledger WHERE account_tag = 'hot' AND kind = 'charge'")
        if total == -sum(granted.values()):
            break
        await asyncio.sleep(0.05)
    assert total == -sum(granted.values())
    charges = await stack.database.fetchval(
        "SELECT count(*) FROM ledger WHERE account_tag = 'hot' AND kind = 'charge'")
    assert charges == len(granted)
