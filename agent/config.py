"""The one configuration object of the service, read from CLI flags and `RATING_*` variables.

Every setting has a flag (`--redis-url`) and a variable (`RATING_REDIS_URL`); the flag wins. The object is
frozen: nothing changes configuration behind a running service's back.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, Mapping, Sequence
from urllib.parse import urlsplit


def _setting(default: Any, help: str, secret: bool = False) -> Any:
    """A setting; a secret one never appears in the settings' repr (tracebacks, logs)."""
    return field(default=default, metadata={"help": help}, repr=not secret)


@dataclass(frozen=True, slots=True)
class Settings:
    host: str = _setting("127.0.0.1", "address the HTTP server binds to")
    port: int = _setting(8080, "HTTP port")
    management_port: int = _setting(
        0, "a second port serving only the management API (GraphQL, deck uploads); 0: none (the HTTP port"
        " passes them to the management process)"
    )
    workers: int = _setting(0, "worker processes sharing the port; 0 means one per CPU core")
    redis_url: str = _setting("redis://127.0.0.1:6379/0", "Redis holding balances and reservations")
    redis_sentinel: str = _setting(
        "", "host:port,... of Redis Sentinels: Redis is the master they name --redis-sentinel-master (found again"
        " after a failover); --redis-url then gives only the password and the database number"
    )
    redis_sentinel_master: str = _setting("rating", "the master's name in Redis Sentinel's configuration")
    redis_cluster: str = _setting(
        "", "host:port,... seed nodes of a Redis Cluster holding the live state (slot groups: README \"Scaling"
        " out\"); --redis-url then gives only the password"
    )
    redis_replicas: int = _setting(
        0, "replicas every call request's Redis writes must reach before it is answered (WAIT, within half of"
        " --redis-timeout; else 503, and Kamailio's retries repeat it): a failover then loses no answered"
        " request; 0: answer at once (replication is asynchronous)"
    )
    database_url: str = _setting(
        "postgresql://postgres@127.0.0.1:5432/rating", "PostgreSQL holding the durable records"
    )
    redis_timeout: float = _setting(
        0.5, "seconds a Redis command may take before the request fails with 503"
    )
    database_timeout: float = _setting(
        30.0, "seconds a PostgreSQL write or read of the serving processes (outbox writer, catalog catch-up,"
        " balance seeding) may take before its connection is dropped and the work retried"
    )
    redis_batch: int = _setting(
        12, "Redis commands of concurrent requests sent in one write at most (1 = no batching)"
    )
    # 256: about 40-90 ms of queue at a worker's 3,000-7,000 requests/s, far below Kamailio's 1 s authorization
    # timeout, and above what a Redis hiccup of a few ms piles up (shedding those calls would refuse calls
    # that were about to be answered)
    max_in_flight: int = _setting(
        256, "call requests one worker holds at once before it refuses new calls (authorization, record) with an"
        " immediate 503; begin, end and rollback are never refused for it (they count); 0: no bound"
    )
    authorization_ttl: int = _setting(
        120, "seconds an authorization's reservation is held if the call never begins"
    )
    call_grace: int = _setting(
        30, "seconds past its granted units after which a running call is ended by the agent"
    )
    max_units: int = _setting(14400, "upper bound of max_available_units, in seconds")
    reservation_share: int = _setting(
        100, "percent of an account's available balance one call may reserve (1-100)"
    )
    record_retention: int = _setting(
        3600, "seconds a finished call's state stays in Redis (idempotent retries, fast reads)"
    )
    outbox_batch: int = _setting(500, "outbox entries written to PostgreSQL per batch")
    # each batch costs a transaction, a staging table, a merge and the acknowledgement whatever its size: at
    # 200 calls/s a 0.05 s wait wrote 4-9 calls per batch (the housekeeper and PostgreSQL ~1 ms per call)
    outbox_linger: float = _setting(
        0.25, "seconds the outbox writer waits after a batch smaller than --outbox-batch, so that the next one"
        " is larger (PostgreSQL lags Redis by about this much; listings of records catch up by themselves)"
    )
    outbox_claim_idle: float = _setting(
        30.0, "seconds after which outbox entries left unwritten by a dead agent are taken over"
    )
    reaper_interval: float = _setting(1.0, "seconds between scans for expired reservations")
    deck_dir: str = _setting(
        "", "folder of the built rate decks, shared by the processes of a host (rebuilt from PostgreSQL when"
        " missing); empty: rating-agent-decks in the system's temporary folder"
    )
    log_level: str = _setting("INFO", "logging level")
    management_token: str = _setting(
        "", "bearer token the management API (GraphQL management fields, deck upload) requires; empty: none",
        secret=True,
    )
    agent_networks: str = _setting(
        "", "comma-separated client networks (CIDR) allowed to call /v1/* and the GraphQL call mutations; empty: all"
    )
    agent_token: str = _setting(
        "", "bearer token /v1/* and the GraphQL call mutations require (Kamailio: RATING_AGENT_TOKEN); empty: none."
        " Serving on a non-loopback address needs this or --agent-networks", secret=True,
    )
    record_networks: str = _setting(
        "", "client networks (CIDR) that may also use /v1/record_transaction, which charges without a call;"
        " empty: every client the agent endpoints admit"
    )
    graphql_max_depth: int = _setting(15, "deepest GraphQL selection accepted (fragments expanded)")
    graphql_max_fields: int = _setting(2000, "most fields one GraphQL operation may select (fragments expanded)")
    graphql_max_tokens: int = _setting(20000, "most lexical tokens in one GraphQL document")
    graphql_max_body: int = _setting(1048576, "largest /graphql request body, in bytes")
    graphql_timeout: float = _setting(30.0, "seconds one GraphQL request may run before it is stopped")
    # one manager process serves every GraphQL document of the host: its loop, memory and PostgreSQL pool
    # are shared by all of them, so large-but-allowed documents are bounded in number as well as in size
    graphql_max_in_flight: int = _setting(
        16, "GraphQL documents the management process runs at once (validation and execution); beyond, an"
        " immediate 503 with Retry-After. Documents of only the call mutations (and version) are never"
        " refused for it; 0: no bound"
    )
    kamailio_rpc: str = _setting(
        "", "comma-separated JSON-RPC URLs (http://127.0.0.1:5090/RPC) of every Kamailio sending calls to this"
        " Redis: the housekeeper ends the calls none of them has any more; empty: off"
    )
    kamailio_reconcile_interval: float = _setting(10.0, "seconds between two listings of the Kamailios' dialogs")
    kamailio_reconcile_after: float = _setting(
        120.0, "seconds a call must be missing from the Kamailios' listings before it is ended, charged up to"
        " when it was last listed (Kamailio's own retries of the end come first)"
    )

    def __post_init__(self) -> None:
        if self.redis_cluster:
            from cache import cluster

            if self.redis_sentinel:
                raise ValueError("redis_cluster: a Redis Cluster fails over by itself, without --redis-sentinel")
            if cluster.is_cluster(self.redis_url):
                raise ValueError("redis_cluster: --redis-url already names a cluster")
            credentials = urlsplit(self.redis_url).netloc.rpartition("@")[0]
            target = cluster.url_of(self.redis_cluster)
            if credentials:
                target = target.replace("://", f"://{credentials}@", 1)
            cluster.parse(target)  # refuses a malformed list
            object.__setattr__(self, "redis_url", target)  # what every Redis client connects with
        if self.redis_sentinel:
            from cache import sentinel

            if sentinel.is_sentinel(self.redis_url):
                raise ValueError("redis_sentinel: --redis-url already names sentinels")
            plain = urlsplit(self.redis_url)
            db = plain.path.strip("/") or "0"
            credentials = plain.netloc.rpartition("@")[0]
            target = sentinel.url_of(self.redis_sentinel, self.redis_sentinel_master, int(db) if db.isdigit() else 0)
            if credentials:
                target = target.replace("://", f"://{credentials}@", 1)
            sentinel.parse(target)  # refuses a malformed list
            object.__setattr__(self, "redis_url", target)  # what every Redis client connects with
        if not 1 <= self.reservation_share <= 100:
            raise ValueError("reservation_share must be between 1 and 100")
        if self.workers < 0:
            raise ValueError("workers must not be negative")
        if self.max_units <= 0:
            raise ValueError("max_units must be positive")
        from .pricing.rate import LONGEST_CALL  # amounts stay exact in Redis only for calls up to this long

        if self.max_units > LONGEST_CALL:
            raise ValueError(f"max_units must be at most {LONGEST_CALL} seconds")
        if self.redis_replicas < 0:
            raise ValueError("redis_replicas must not be negative")
        if self.redis_batch < 1:
            raise ValueError("redis_batch must be at least 1")
        if self.max_in_flight < 0:
            raise ValueError("max_in_flight must not be negative (0: no bound)")
        if self.graphql_max_in_flight < 0:
            raise ValueError("graphql_max_in_flight must not be negative (0: no bound)")
        if self.kamailio_reconcile_interval <= 0 or self.kamailio_reconcile_after < 0:
            raise ValueError("kamailio_reconcile_interval must be positive, kamailio_reconcile_after not negative")
        for url in filter(None, (u.strip() for u in self.kamailio_rpc.split(","))):
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"kamailio_rpc: {url!r} is not an http(s) URL")
        for name in ("authorization_ttl", "call_grace", "record_retention", "outbox_batch", "outbox_linger"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")

    @property
    def decks(self) -> str:
        import tempfile

        return self.deck_dir or os.path.join(tempfile.gettempdir(), "rating-agent-decks")

    @classmethod
    def option_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """Adds one `--flag` per setting; absent flags fall back to RATING_* and then the default."""
        for f in fields(cls):
            env = f"RATING_{f.name.upper()}"
            parser.add_argument(
                f"--{f.name.replace('_', '-')}",
                dest=f.name,
                type=type(f.default) if f.default is not MISSING else str,
                default=None,
                help=f"{f.metadata['help']} (env {env}, default {f.default!r})",
            )

    @classmethod
    def load(
        cls, namespace: argparse.Namespace | None = None, environ: Mapping[str, str] | None = None
    ) -> "Settings":
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            given = getattr(namespace, f.name, None) if namespace is not None else None
            if given is None:
                raw = environ.get(f"RATING_{f.name.upper()}")
                if raw is None or raw == "":
                    continue
                try:
                    given = type(f.default)(raw)
                except ValueError as exc:
                    raise ValueError(f"RATING_{f.name.upper()}={raw!r}: {exc}") from None
            values[f.name] = given
        return cls(**values)

    @classmethod
    def from_args(cls, argv: Sequence[str]) -> "Settings":
        parser = argparse.ArgumentParser()
        cls.add_arguments(parser)
        return cls.load(parser.parse_args(list(argv)), environ={})
