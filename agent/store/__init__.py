"""PostgreSQL: the durable catalog, call records and balance ledger. Never on the hot path."""
