"""GET /healthz (the process answers) and GET /readyz (the database and the
ledger, scheduler, metering and registry answer their health checks, and the
view of the nodes has synced with the registry)."""

from __future__ import annotations

import asyncio

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from idlegrid.gateway import store
from idlegrid.gateway.context import gw

DB_TIMEOUT_S = 2.0


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    g = gw(request)

    async def database() -> str:
        try:
            await store.ping(g.pool, timeout_s=DB_TIMEOUT_S)
            return "SERVING"
        except Exception:  # noqa: BLE001 - any failure means not ready
            return "UNREACHABLE"

    services, db = await asyncio.gather(g.backends.health(), database())
    checks = {"database": db, **services,
              "node_view": "SYNCED" if g.backends.nodes.synced.is_set() else "NOT_SYNCED"}
    ok = all(v in ("SERVING", "SYNCED") for v in checks.values())
    return JSONResponse({"status": "ready" if ok else "not_ready", "checks": checks}, status_code=200 if ok else 503)


def routes() -> list[Route]:
    return [Route("/healthz", healthz, methods=["GET"]), Route("/readyz", readyz, methods=["GET"])]
