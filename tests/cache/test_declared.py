"""Every key a function of the library touches is one of its KEYS (issue 16: a Redis Cluster errors on a key of
another slot, and nothing guarantees an undeclared key of the same slot keeps working).

Redis itself lets a function touch undeclared keys of its own slot, so this is checked by running the real
library with every `redis.call` checked against the KEYS of the running function (`checked`): a key not among
them fails the FCALL with `undeclared key`. The agent's own tests of the call flow, the expiry, the begins of
windowed calls and thousands of generated calls (linked accounts, limits counting both directions) run here
again against that library on a real redis-server.
"""

from __future__ import annotations

import random
import re

import pytest
import redis

import cache
# the agent's flows, collected again here: the autouse fixture below runs them on the checked library
from tests.test_expiry import *  # noqa: F401,F403
from tests.test_transaction import *  # noqa: F401,F403
from tests.cache.test_begin import (  # noqa: F401
    test_a_begin_through_the_agent_plans_only_the_calls_redis_does_not_hold_open,
    test_an_unplanned_begin_begins_the_open_call_and_changes_nothing_else,
    test_an_unplanned_begin_of_no_call_or_of_a_refused_one_is_missing_and_writes_nothing)
from tests.cache.test_begin import (  # noqa: F401 - begins outside a windowed authorization's seconds (rebudget)
    test_windowed_calls_answered_anywhere_are_charged_within_their_reservation_as_the_kernel)
from tests.cache.test_library import check_call, lua, random_call  # noqa: F401 - lua loads the checked library

_PRELUDE = """
local DECLARED = {}
local function declared_call(command, key, ...)
  if key == nil and string.upper(command) == 'TIME' then
    return redis.call(command)
  end
  if not DECLARED[key] then
    error('undeclared key: ' .. command .. ' ' .. tostring(key))
  end
  return redis.call(command, key, ...)  -- (redis.call exists while a function runs, not while it loads)
end
local function declaring(callback)
  return function(keys, args)
    DECLARED = {}
    for _, key in ipairs(keys) do
      DECLARED[key] = true
    end
    return callback(keys, args)
  end
end
"""


def checked(source: str) -> str:
    """The library with every command's key (its first argument: every command it uses but TIME) checked
    against the running function's KEYS."""
    head, body = source.split("\n", 1)
    body = body.replace("redis.call(", "declared_call(")
    body, plain = re.subn(r"redis\.register_function\('(\w+)', (\w+)\)", r"redis.register_function('\1', declaring(\2))",
                          body)
    body, flagged = re.subn(r"callback = (\w+),", r"callback = declaring(\1),", body)
    assert plain + flagged == source.count("register_function"), "every function is checked"
    return f"{head}\n{_PRELUDE}{body}"


@pytest.fixture(autouse=True)
def checked_library(monkeypatch):
    """Every library the tests here load (the stack, the agent, a reload) is the checked one, under this
    version's name: a later test's load puts the plain one back."""
    monkeypatch.setattr(cache, "LIBRARY", checked(cache.LIBRARY))


def test_the_check_fails_a_function_touching_a_key_it_did_not_declare(redis_server):
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    client.execute_command("FUNCTION", "LOAD", "REPLACE", checked(
        "#!lua name=probe\nlocal function probe(keys, args)\n"
        "  redis.call('SET', keys[1], 1)\n  return redis.call('GET', args[1])\nend\n"
        "redis.register_function('probe', probe)"))
    assert client.execute_command("FCALL", "probe", 1, "declared", "declared") == "1"
    with pytest.raises(redis.ResponseError, match="undeclared key: GET other"):
        client.execute_command("FCALL", "probe", 1, "declared", "other")
    client.execute_command("FUNCTION", "DELETE", "probe")
    client.close()


def test_generated_calls_touch_only_their_declared_keys(lua):
    """Authorizations and ends of generated calls (linked accounts, both directions, limits, lost begins)."""
    rng = random.Random(16)
    for _ in range(400):
        check_call(lua, random_call(rng))

