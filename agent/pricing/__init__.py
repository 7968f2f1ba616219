"""The pricing kernel: pure functions and immutable values, no I/O.

Everything that decides a price, a duration, a number of units or a carrier order lives here, so it can be
tested exhaustively without servers. A rate becomes a price schedule (rate.Schedule) that the Redis library
in `cache/` only walks; decision.py defines what that library decides with it, and the tests drive the real
Redis functions against both.
"""
