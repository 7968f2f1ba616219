"""The baseline of the load tests: the agent's HTTP stack doing nothing.

    python loadtest/echo.py [--host 127.0.0.1] [--port 8081]
    python loadtest/echo.py --canyan [--carrier UDP:127.0.0.1:5060] [--port 8081]

aiohttp on uvloop, like the agent. `POST /v1/authorization` reads and parses the JSON body with orjson
(a 400 if it is not JSON) and answers a fixed authorization of the agent's shape, echoing the request's
tags; `GET /status` answers 204. No Redis, no catalog: whatever the agent does beyond this costs throughput
relative to this server.

`--canyan` is the zero-cost agent of loadtest/sip_load.py's `zero` mode: a bare HTTP/1.1 server on an asyncio
protocol (no aiohttp, no JSON parsing) answering what Kamailio's configuration (kamailio/rating.cfg) sends per
call with fixed valid answers: the authorization authorized with `--carrier` as its one carrier, begin, end and
rollback `{"ok":true}`; `/metrics` and `/ready` answer empty. It shows what rating costs Kamailio and the
machine when the agent costs (almost) nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
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


def _response(status: bytes, body: bytes) -> bytes:
    return (b"HTTP/1.1 " + status + b"\r\nContent-Type: application/json\r\nContent-Length: "
            + str(len(body)).encode() + b"\r\n\r\n" + body)


class CanyanProtocol(asyncio.Protocol):
    """Keep-alive HTTP/1.1 with Content-Length bodies (what libcurl sends), requests answered in order."""

    answers: dict[bytes, bytes] = {}

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        out = []
        while True:
            head_end = self.buffer.find(b"\r\n\r\n")
            if head_end < 0:
                break
            head = self.buffer[:head_end]
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            if len(self.buffer) < head_end + 4 + length:
                break
            self.buffer = self.buffer[head_end + 4 + length:]
            path = head.split(b" ", 2)[1] if head.count(b" ") >= 2 else b""
            out.append(self.answers.get(path.split(b"?", 1)[0], self.answers[b""]))
        if out:
            self.transport.write(b"".join(out))


def canyan_answers(carrier: str) -> dict[bytes, bytes]:
    """path -> the whole HTTP response (b"": any other path)."""
    ok = _response(b"200 OK", b'{"ok":true}')
    authorized = orjson.dumps({"authorized": True, "authorized_destination": False, "unauthorized_account_tag": None,
                               "unauthorized_reason": None, "max_available_units": 14400,
                               "balance": 1_000_000_000_000, "carriers": [carrier]})
    return {
        b"/v1/authorization": _response(b"200 OK", authorized),
        b"/v1/begin_transaction": ok, b"/v1/end_transaction": ok, b"/v1/rollback_transaction": ok,
        b"/metrics": _response(b"200 OK", b""), b"/ready": ok, b"": _response(b"404 Not Found", b"{}"),
    }


def serve_canyan(host: str, port: int, carrier: str) -> None:
    CanyanProtocol.answers = canyan_answers(carrier)

    async def run() -> None:
        server = await asyncio.get_running_loop().create_server(CanyanProtocol, host, port, reuse_address=True)
        async with server:
            await server.serve_forever()

    uvloop.install()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8081)
    parser.add_argument("--canyan", action="store_true", help="the zero-cost agent: fixed answers to every call request")
    parser.add_argument("--carrier", default="UDP:127.0.0.1:5060", help="with --canyan: the authorization's carrier")
    args = parser.parse_args(argv)
    if args.canyan:
        serve_canyan(args.host, args.port, args.carrier)
        return 0
    uvloop.install()
    web.run_app(create_app(), host=args.host, port=args.port, access_log=None, print=None, shutdown_timeout=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
