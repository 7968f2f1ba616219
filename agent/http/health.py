"""Service endpoints: liveness (`/status`, Canyan's), readiness (`/ready`) and Prometheus (`/metrics`)."""

from __future__ import annotations

import asyncio
import os

from aiohttp import web

from ..keys import CATALOG, DATABASE, REDIS
from ..metrics import metrics_handler
from .responses import json_response

routes = web.RouteTableDef()


@routes.get("/status")
async def status(request: web.Request) -> web.Response:
    """The process is up (Canyan's probe): 204, no body."""
    return web.Response(status=204)


@routes.get("/ready")
async def ready(request: web.Request) -> web.Response:
    """Whether this process can rate: Redis answers and the catalog is loaded. PostgreSQL down only
    degrades the service (records and catalog changes wait; rating goes on), so it does not make the
    process unready: a readiness probe would take every agent out of rotation at once."""
    checks: dict[str, bool] = {}
    try:
        async with asyncio.timeout(1.0):
            checks["redis"] = bool(await request.app[REDIS].ping())
    except Exception:  # noqa: BLE001 - any failure means not ready
        checks["redis"] = False
    try:
        async with asyncio.timeout(1.0):
            checks["postgresql"] = await request.app[DATABASE].fetchval("SELECT 1") == 1
    except Exception:  # noqa: BLE001
        checks["postgresql"] = False
    checks["catalog"] = request.app[CATALOG].loaded.is_set()
    ok = checks["redis"] and checks["catalog"]
    return json_response({"ready": ok, "degraded": ok and not checks["postgresql"], **checks, "pid": os.getpid()},
                         200 if ok else 503)


routes.get("/metrics")(metrics_handler)
