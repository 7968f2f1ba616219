"""`make run`: local Redis and PostgreSQL in .data/, the demo catalog loaded, the agent in the foreground.

Ctrl-C stops the agent and both servers. Ports: RATING_PORT (8080) for the agent,
RATING_DEV_REDIS_PORT (6390) and RATING_DEV_POSTGRES_PORT (5440) for the servers.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from . import PostgresServer, RedisServer

ROOT = Path(__file__).resolve().parent.parent


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def main() -> int:
    signal.signal(signal.SIGTERM, _interrupt)
    data = Path(os.environ.get("RATING_DEV_DATA", ROOT / ".data"))
    redis_server = RedisServer(data / "redis", port=int(os.environ.get("RATING_DEV_REDIS_PORT", 6390)))
    postgres = PostgresServer(data / "postgres", port=int(os.environ.get("RATING_DEV_POSTGRES_PORT", 5440)))
    port = int(os.environ.get("RATING_PORT", 8080))
    env = {
        **os.environ,
        "RATING_REDIS_URL": os.environ.get("RATING_REDIS_URL", redis_server.url),
        "RATING_DATABASE_URL": os.environ.get("RATING_DATABASE_URL", postgres.url),
        "RATING_PORT": str(port),
        "RATING_DECK_DIR": os.environ.get("RATING_DECK_DIR", str(data / "decks")),
    }
    print(f"starting Redis on 127.0.0.1:{redis_server.port} and PostgreSQL on 127.0.0.1:{postgres.port} "
          f"(data in {data})", flush=True)
    redis_server.start()
    try:
        postgres.start()
        try:
            subprocess.run([sys.executable, "-m", "agent", "import", "catalog", str(ROOT / "demo" / "catalog.json")],
                           env=env, check=True)
            print(
                "\nDemo data loaded. Try, once the agent says it is running:\n\n"
                f"  curl -s -X POST http://127.0.0.1:{port}/v1/authorization -d "
                "'{\"transaction_tag\":\"call-1\",\"account_tag\":\"100\",\"source\":\"sip:100@127.0.0.1\","
                "\"destination\":\"sip:39040123123@127.0.0.1\"}'\n",
                flush=True,
            )
            agent = subprocess.Popen([sys.executable, "-m", "agent", "serve"], env=env)
            try:
                return agent.wait()
            except KeyboardInterrupt:
                agent.terminate()
                agent.wait(15)
                return 0
        finally:
            postgres.stop()
    finally:
        redis_server.stop()
        print("stopped Redis and PostgreSQL", flush=True)


if __name__ == "__main__":
    sys.exit(main())
