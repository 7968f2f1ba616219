"""Real-time call rating agent: Canyan-compatible HTTP API over an in-memory rate table,
Redis reservations and a PostgreSQL record store."""

__version__ = "0.1.0"
