"""The baseline of the load tests: the agent's HTTP stack doing nothing.

    python loadtest/echo.py [--host 127.0.0.1] [--port 8081]

aiohttp on uvloop, like the agent. `POST /v1/authorization` reads and parses the JSON body with orjson
(a 400 if it is not JSON) and answers a fixed authorization of the agent's shape, echoing the request's
tags; `GET /status` answers 204. No Redis, no catalog: whatever the agent does beyond this costs throughput
relative to this server.
"""

from __future__ import annotations

import argparse
import sys

import orjson
import uvloop
from aiohttp import web

FIXED = {
    "authorized": True,
    "authorized_destination": False,
    "unauthorized_account_tag": None,
    "unauthorized_reason": None,
    "max_available_units": 14400,
    "balance": 1_000_000_000_000,
    "carriers": ["UDP:127.0.0.1:5061", "TCP:127.0.0.1:5062"],
}


async def authorization(request: web.Request) -> web.Response:
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        return web.Response(status=400, body=b'{"detail":"There was an error parsing the body"}',
                            content_type="application/json")
    if not isinstance(body, dict):
        body = {}
    answer = {
        "tenant": body.get("tenant", "default"),
        "transaction_tag": body.get("transaction_tag"),
        "account_tag": body.get("account_tag"),
        "destination_account_tag": body.get("destination_account_tag"),
        **FIXED,
    }
    return web.Response(body=orjson.dumps(answer), content_type="application/json")


async def status(request: web.Request) -> web.Response:
    return web.Response(status=204)


def create_app() -> web.Application:
    app = web.Application()
    app.router.add_post("/v1/authorization", authorization)
    app.router.add_get("/status", status)
    return app


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8081)
    args = parser.parse_args(argv)
    uvloop.install()
    web.run_app(create_app(), host=args.host, port=args.port, access_log=None, print=None, shutdown_timeout=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
