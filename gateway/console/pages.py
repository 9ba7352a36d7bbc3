"""The console's HTML: the shell pages (no key needed: they hold no data),
the fragments htmx polls (each one the answer of a REST route, rendered),
and the static assets served from the package.

A fragment is the JSON answer of the REST handler it names, called with
the same request (so the same key, scope checks, limits and errors), turned
into HTML by a template. The key travels only in the Authorization header
that the console's JS adds from sessionStorage: never in a URL or a cookie.
Every response carries the console's security headers (HEADERS)."""

from __future__ import annotations

import json
import mimetypes
from collections.abc import Awaitable, Callable
from pathlib import Path

import jinja2
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, Response
from starlette.routing import Route

from idlegrid.gateway import account_routes, admin_routes, provider_routes
from idlegrid.gateway.console import data_routes, self_routes
from idlegrid.gateway.console.filters import FILTERS
from idlegrid.gateway.context import caller, gw
from idlegrid.gateway.errors import ApiError

_HERE = Path(__file__).parent
STATIC_DIR = _HERE / "static"
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "font-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
HEADERS = {"Content-Security-Policy": CSP, "X-Frame-Options": "DENY", "Referrer-Policy": "no-referrer",
           "X-Content-Type-Options": "nosniff", "Cache-Control": "no-store"}
VIEWS = ("partner", "provider", "admin")
_ENV = jinja2.Environment(loader=jinja2.FileSystemLoader(_HERE / "templates"), autoescape=True,
                          undefined=jinja2.StrictUndefined)
_ENV.filters.update(FILTERS)
# Every file under static/, by its path there: nothing else is ever served.
_ASSETS = {p.relative_to(STATIC_DIR).as_posix(): p for p in STATIC_DIR.rglob("*") if p.is_file()}
_TYPES = {".js": "text/javascript", ".css": "text/css", ".LICENSE": "text/plain", ".svg": "image/svg+xml"}


def _html(template: str, status_code: int = 200, **context) -> HTMLResponse:
    return HTMLResponse(_ENV.get_template(template).render(**context), status_code=status_code, headers=HEADERS)


async def index(request: Request) -> Response:
    return _html("signin.html", view="signin", title="Sign in")


async def view(request: Request) -> Response:
    name = request.path_params["view"]
    if name not in VIEWS:
        return _html("missing.html", status_code=404, view="missing", title="Not found")
    return _html(f"{name}.html", view=name, title=name.capitalize(), origin=str(request.base_url).rstrip("/"))


async def static(request: Request) -> Response:
    path = _ASSETS.get(request.path_params["path"])
    if path is None:
        return Response("no such asset\n", status_code=404, media_type="text/plain", headers=HEADERS)
    media = _TYPES.get(path.suffix) or mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return FileResponse(path, media_type=media, headers={**HEADERS, "Cache-Control": "public, max-age=3600"})


async def _limits(request: Request) -> Response:
    """The admin money caps in force (settings), as JSON like a REST answer."""
    await caller(request, "admin")
    s = gw(request).settings
    caps = {f"{a}_{c}_max_micros": getattr(s, f"{a}_{c}_max_micros")
            for a in ("topup", "payout") for c in ("call", "key_day", "day")}
    return Response(json.dumps(caps), media_type="application/json")


Handler = Callable[[Request], Awaitable[Response]]
# fragment name -> (the REST handler whose answer it shows, its template)
FRAGMENTS: dict[str, tuple[Handler, str]] = {
    "partner-balance": (account_routes.get_account, "balance.html"),
    "partner-transactions": (account_routes.transactions, "transactions.html"),
    "keys": (self_routes.list_keys, "keys.html"),
    "provider-summary": (provider_routes.earnings, "earnings.html"),
    "provider-nodes": (provider_routes.nodes, "nodes.html"),
    "provider-jobs": (data_routes.jobs, "jobs.html"),
    "provider-payouts": (data_routes.transactions, "payouts.html"),
    "admin-accounts": (data_routes.accounts, "accounts.html"),
    "admin-nodes": (data_routes.nodes, "nodes.html"),
    "admin-audit": (admin_routes.audit_trail, "audit.html"),
    "admin-limits": (_limits, "limits.html"),
}


async def fragment(request: Request) -> Response:
    name = request.path_params["name"]
    if name not in FRAGMENTS:
        return _html("fragments/error.html", status_code=404, status=404, message="no such fragment")
    handler, template = FRAGMENTS[name]
    try:
        answer = await handler(request)
    except ApiError as e:
        # 200, so that htmx swaps it in; the status rides along for the JS (401: sign in again).
        return _html("fragments/error.html", status=e.status, message=e.message)
    data = json.loads(bytes(answer.body))
    return _html(f"fragments/{template}", data=data, query=request.query_params, admin="admin" in name)


def routes() -> list[Route]:
    return [
        Route("/console", index, methods=["GET"]),
        Route("/console/static/{path:path}", static, methods=["GET"]),
        Route("/console/fragments/{name}", fragment, methods=["GET"]),
        Route("/console/{view}", view, methods=["GET"]),
    ]
