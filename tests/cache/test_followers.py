"""Writers wait for the agent processes to apply a change before publishing it (cache/followers.py)."""

import asyncio
import time

import cache
from cache import followers


def test_only_live_followers_below_the_version_are_waited_for_and_long_silent_ones_are_forgotten():
    now = 1_000_000
    entries = {
        "h:1:1": f"7 {now}",  # caught up
        "h:2:1": f"6 {now - 500}",  # behind, alive
        "h:3:1": f"5 {now - int(followers.LIVE_FOR * 1000) - 1}",  # behind, silent: not waited for
        "h:4:1": f"5 {now - int(followers.FORGET_AFTER * 1000) - 1}",  # gone
        "h:5:1": "garbage",
    }
    assert followers.behind(entries, 7, now) == (["h:2:1"], ["h:4:1", "h:5:1"])
    assert followers.behind(entries, 6, now) == ([], ["h:4:1", "h:5:1"])


async def test_settle_returns_once_every_live_follower_reports_the_version(redis_server):
    client = cache.connect(redis_server.url, 5.0)
    try:
        await client.delete(followers.FOLLOWERS)
        await followers.report(client, "a", 3)
        await followers.report(client, "b", 2)

        async def catch_up_later():
            await asyncio.sleep(0.1)
            await followers.report(client, "b", 3)

        started = time.monotonic()
        late = asyncio.create_task(catch_up_later())
        assert await followers.settle(client, 3, timeout=5.0) == []
        await late
        assert time.monotonic() - started < 5.0  # returned on the report, not on the timeout
        await followers.forget(client, "b")
        assert await client.hkeys(followers.FOLLOWERS) == ["a"]
    finally:
        await client.delete(followers.FOLLOWERS)
        await client.aclose()


async def test_settle_gives_up_after_its_timeout_naming_who_is_behind(redis_server):
    client = cache.connect(redis_server.url, 5.0)
    try:
        await client.delete(followers.FOLLOWERS)
        await followers.report(client, "slow", 1)
        assert await followers.settle(client, 2, timeout=0.05) == ["slow"]
    finally:
        await client.delete(followers.FOLLOWERS)
        await client.aclose()
