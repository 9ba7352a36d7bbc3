"""The web console at /console: server-rendered pages (Jinja2), fragments
that htmx polls, charts drawn with uPlot, and the few REST routes the
console reads that did not exist before (whoami, an account's own keys,
provider earnings per bucket, line items, transactions, admin lists).

Why these libraries: htmx (2.x, BSD-2-Clause) polls and swaps server-rendered
fragments with no build step and no inline script; uPlot (1.6, MIT) draws
time series on a canvas in 50 kB, far smaller and faster than chart.js for
this one kind of chart. Both are vendored under static/vendor/ with their
licenses, served from the package: no CDN, so the console works offline
and under a strict Content-Security-Policy."""

from __future__ import annotations

from starlette.routing import Route

from idlegrid.gateway.console import data_routes, pages, self_routes


def routes() -> list[Route]:
    return [*self_routes.routes(), *data_routes.routes(), *pages.routes()]
