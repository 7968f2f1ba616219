"""The agent port's way to the management process: `/graphql` (and the explorer's assets under
`/graphql/explorer/`) and `/management/*` are passed through,
streamed both ways, to the manager (agent/serve.py) over a Unix socket.

So a worker that answers Kamailio never parses a CSV deck, validates a GraphQL document or lists
transactions: it only copies bytes, whose cost is bounded by what the manager accepts. The client's
address travels in a header the manager believes only on its Unix socket (http/access.py).

The workers start beside the manager, not after it (serve.py): until the manager first accepts on its
socket, a management request waits for it (at most `START_WAIT` seconds) instead of being refused.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import AsyncIterator

import aiohttp
from aiohttp import web

from .access import FORWARDED_FOR
from .responses import detail

MANAGER = web.AppKey("manager", aiohttp.ClientSession)
_HOP = {"host", "connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade",
        "proxy-authorization", "proxy-authenticate", "content-length", FORWARDED_FOR.lower()}
_CHUNK = 1 << 16
START_WAIT = 60.0  # seconds a management request waits for the manager to accept once, at start


@dataclass
class _Manager:
    path: str
    up: bool = False  # it has accepted once: from then on a failure is answered at once
    waiting: int = 0  # requests held until it first accepts


STATE = web.AppKey("manager_state", _Manager)


async def _started(manager: _Manager) -> bool:
    """Whether the manager accepts on its socket, polled until it first does (bounded by START_WAIT)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + START_WAIT
    manager.waiting += 1
    try:
        while not manager.up:
            try:
                _, writer = await asyncio.open_unix_connection(manager.path)
            except OSError:
                if loop.time() >= deadline:
                    return False
                await asyncio.sleep(0.02)
                continue
            writer.close()
            manager.up = True
    finally:
        manager.waiting -= 1
    return True


def _headers(headers) -> dict[str, str]:
    return {name: value for name, value in headers.items() if name.lower() not in _HOP}


async def _body(request: web.Request) -> AsyncIterator[bytes]:
    async for chunk in request.content.iter_chunked(_CHUNK):
        yield chunk


async def forward(request: web.Request) -> web.StreamResponse:
    if not request.app[STATE].up and not await _started(request.app[STATE]):
        return detail("The management process is not available; try again", 503)
    headers = _headers(request.headers)
    headers[FORWARDED_FOR] = request.remote or ""
    body = _body(request) if request.can_read_body else None
    try:
        async with request.app[MANAGER].request(
                request.method, f"http://manager{request.rel_url}", headers=headers, data=body,
                allow_redirects=False) as reply:
            response = web.StreamResponse(status=reply.status, reason=reply.reason, headers=_headers(reply.headers))
            if reply.content_length is not None:
                response.content_length = reply.content_length
            await response.prepare(request)
            async for chunk in reply.content.iter_chunked(_CHUNK):
                await response.write(chunk)
            await response.write_eof()
            return response
    except (aiohttp.ClientConnectionError, FileNotFoundError):
        return detail("The management process is not available; try again", 503)


def setup(app: web.Application, socket_path: str) -> None:
    """Routes the management paths of `app` to the manager listening on `socket_path`."""

    async def session(app: web.Application):
        connector = aiohttp.UnixConnector(path=socket_path, limit=32)
        # no total timeout: a deck upload lasts as long as the client sends it
        async with aiohttp.ClientSession(connector=connector, auto_decompress=False,
                                         timeout=aiohttp.ClientTimeout(total=None, sock_connect=5)) as client:
            app[MANAGER] = client
            yield

    app[STATE] = _Manager(socket_path)
    app.cleanup_ctx.append(session)
    for path in ("/graphql", "/graphql/explorer/{name}", "/management/{tail:.*}"):  # explorer: its assets
        app.router.add_route("*", path, forward)
