"""The agent's own end of calls whose end never arrives (Kamailio can lose it)."""

import asyncio

from tests.test_transaction import catalog, post, prepaid, records


async def wait_for(predicate, timeout=10.0):
    for _ in range(int(timeout / 0.05)):
        if await predicate():
            return True
        await asyncio.sleep(0.05)
    return False


async def test_a_reservation_never_begun_expires_and_is_released(agent, stack):
    client = await agent(catalog(prepaid("a", 100)), authorization_ttl=1, reaper_interval=0.2)
    await post(client, "authorization", transaction_tag="lost", account_tag="a", destination="39")
    assert (await stack.account_state("a"))["reserved"] == 100

    async def released():
        return (await stack.account_state("a"))["reserved"] == 0

    assert await wait_for(released)
    state = await stack.account_state("a")
    assert (state["balance"], state["n"]) == (100, 0)
    assert (await records(stack, client, "lost"))["a"]["state"] == "expired"
    assert (await post(client, "begin", transaction_tag="lost", account_tag="a"))["ok"] is False


async def test_a_call_outliving_its_units_and_grace_is_ended_and_charged_at_its_units(agent, stack):
    client = await agent(catalog(prepaid("a", 2)), call_grace=1, reaper_interval=0.2)
    answer = await post(client, "authorization", transaction_tag="long", account_tag="a", destination="39")
    assert answer["max_available_units"] == 2
    await post(client, "begin", transaction_tag="long", account_tag="a")

    async def ended():
        return (await stack.account_state("a"))["n"] == 0

    assert await wait_for(ended)
    assert await stack.balance("a") == 0
    record = (await records(stack, client, "long"))["a"]
    assert (record["state"], record["duration"], record["fee"]) == ("ended", 2, 2)
    # The real end arriving late changes nothing.
    assert (await post(client, "end", transaction_tag="long"))["ok"] is True
    assert await stack.balance("a") == 0
