"""The API docs page works offline: every asset it loads is served by the
gateway itself from the installed package (no CDN), under a strict CSP."""

from __future__ import annotations

import re

import httpx
from starlette.applications import Starlette

from idlegrid.gateway import openapi


def _client() -> httpx.AsyncClient:
    app = Starlette(routes=openapi.routes())
    app.state.openapi = openapi.document()
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gateway")


async def test_the_docs_page_loads_only_its_own_assets_under_a_strict_csp():
    async with _client() as c:
        page = await c.get("/docs")
        assert page.status_code == 200
        csp = page.headers["content-security-policy"]
        assert "default-src 'self'" in csp and "script-src" not in csp  # no inline script allowed
        assert "<script>" not in page.text
        urls = re.findall(r'(?:src|href)="([^"]+)"', page.text)
        assert urls and all(u.startswith("/docs/assets/") for u in urls), urls
        for url in urls:
            r = await c.get(url)
            assert r.status_code == 200 and r.content, url
        assert (await c.get("/docs/assets/init.js")).text.count("SwaggerUIBundle") == 1


async def test_an_unknown_docs_asset_is_404_and_no_path_escapes_the_package():
    async with _client() as c:
        assert (await c.get("/docs/assets/index.j2")).status_code == 404
        assert (await c.get("/docs/assets/..%2F..%2F__init__.py")).status_code == 404
