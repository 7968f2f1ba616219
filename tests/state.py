"""Reading the agent's live state from tests: balances and call records.

Thin wrappers over the agent's own read path, so tests assert on what the API will show.
"""
