"""The pricing kernel: pure functions and immutable values, no I/O.

Everything that decides a price, a duration, a number of units or a carrier order lives here, so it can be
tested exhaustively without servers. The Redis scripts in `cache/` repeat the two formulas they need
(`fee` and `max_units`); a test runs both side by side to keep them equal.
"""
