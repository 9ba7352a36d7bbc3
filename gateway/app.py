"""The Starlette application: every route, the one middleware (request id,
limits, metrics, the canonical log line) and the error handlers that turn
every failure into one clear HTTP answer."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Match, Route

from idlegrid.gateway import (
    account_routes,
    admin_routes,
    console,
    health_routes,
    kserve_routes,
    openai_routes,
    openapi,
    provider_routes,
)
from idlegrid.gateway.context import Gateway
from idlegrid.gateway.edge import IpGate
from idlegrid.gateway.errors import ApiError
from idlegrid.gateway.metrics import metrics_endpoint
from idlegrid.gateway.middleware import GatewayMiddleware


def _render(request: Request, err: ApiError) -> Response:
    kserve = request.url.path.startswith("/v2")
    return Response(err.kserve_bytes() if kserve else err.json_bytes(), status_code=err.status,
                    headers=err.headers, media_type="application/json")


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return _render(request, exc)


def _allowed(request: Request) -> str:
    """Every method of every route on this path: Starlette's own 405 names
    only the first route's, and a path may have one route per method."""
    methods: set[str] = set()
    for route in request.app.routes:
        match, _ = route.matches(request.scope)
        if match != Match.NONE:
            methods |= getattr(route, "methods", None) or set()
    return ", ".join(sorted(methods))


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        err = ApiError(404, f"no route {request.method} {request.url.path}", code="unknown_route")
    elif exc.status_code == 405:
        allow = _allowed(request) or (exc.headers or {}).get("Allow", "")
        err = ApiError(405, f"method {request.method} is not allowed on {request.url.path}; allowed: {allow}",
                       code="method_not_allowed", headers={"Allow": allow})
    else:
        err = ApiError(exc.status_code, str(exc.detail), code="http_error", headers=dict(exc.headers or {}))
    return _render(request, err)


def routes() -> list[Route]:
    return [
        *openai_routes.routes(), *kserve_routes.routes(), *account_routes.routes(), *provider_routes.routes(),
        *admin_routes.routes(), *health_routes.routes(), *openapi.routes(),
        Route("/metrics", metrics_endpoint, methods=["GET"]), *console.routes(),
    ]


def create_app(gw: Gateway) -> Starlette:
    app = Starlette(
        routes=routes(),
        middleware=[Middleware(GatewayMiddleware, metrics=gw.metrics, concurrency_max=gw.settings.concurrency_max,
                               gate=IpGate(limiter=gw.ip_limiter, trusted=gw.settings.trusted_proxies,
                                           metrics=gw.metrics))],
        exception_handlers={ApiError: _api_error, HTTPException: _http_error},
    )
    app.state.gw = gw
    app.state.openapi = openapi.document()
    return app
