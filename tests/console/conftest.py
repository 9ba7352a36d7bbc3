"""The console in a real browser: Debian's chromium (``make browser``)
driven by Playwright's Python API, against the whole stack of the gateway
tests (tests/harness: every service real, the session's demo Triton as a
READY node of a provider made through the admin API).

Every page a test opens is watched: a console error or an uncaught
exception fails the test when it ends. Screenshots go to a temporary
folder (the test artifacts); with CONSOLE_SHOTS_DIR=<folder> they are
also written there (how docs/console-*.png were made)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.gateway.conftest import REGISTRY, node_config
from tests.harness.rest import open_rest
from tests.harness.stack import PARTS, start_stack

CHROMIUM = shutil.which("chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
AXE = Path(__file__).parent / "vendor" / "axe.min.js"

if CHROMIUM is None:
    pytest.skip("chromium is not installed: run `make browser` (apt-get install -y chromium)",
                allow_module_level=True)
playwright_api = pytest.importorskip("playwright.async_api", reason="playwright is not installed: make install")


@pytest.fixture(scope="module")
async def stack(config, db_url, triton):
    services = await start_stack(config, db_url, parts=PARTS, provider=False, registry_settings=REGISTRY)
    try:
        rest = await open_rest(services, node_config=node_config())
    except BaseException:
        await services.stop()
        raise
    yield rest
    await services.stop()


@pytest.fixture(scope="module")
async def browser():
    pw = await playwright_api.async_playwright().start()
    try:
        b = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        await b.close()
    finally:
        await pw.stop()


class Watched:
    """A page and what went wrong on it (console errors, uncaught exceptions)."""

    def __init__(self, page, shots: Path) -> None:
        self.page = page
        self.errors: list[str] = []
        self.shots = shots
        page.on("console", lambda m: self.errors.append(f"console: {m.text}") if m.type == "error" else None)
        page.on("pageerror", lambda e: self.errors.append(f"pageerror: {e}"))

    async def sign_in(self, base_url: str, key: str, expect_view: str | None) -> None:
        await self.page.goto(f"{base_url}/console")
        await self.page.get_by_label("API key").fill(key)
        await self.page.get_by_role("button", name="Sign in").click()
        if expect_view:
            await self.page.wait_for_url(f"{base_url}/console/{expect_view}")
            await self.page.locator("#content").wait_for(state="visible")

    async def axe(self) -> list[dict]:
        """axe-core's violations on the page (axe from tests/console/vendor,
        evaluated by the driver: the page's CSP is not loosened)."""
        await self.page.evaluate(AXE.read_text())
        return await self.page.evaluate(
            "async () => (await axe.run(document, {resultTypes: ['violations']})).violations"
            ".map(v => ({id: v.id, impact: v.impact, help: v.help, nodes: v.nodes.map(n => n.target)}))")

    async def shot(self, name: str) -> Path:
        path = self.shots / f"{name}.png"
        await self.page.screenshot(path=str(path), full_page=True)
        extra = os.environ.get("CONSOLE_SHOTS_DIR")
        if extra:
            shutil.copy(path, Path(extra) / f"{name}.png")
        return path


@pytest.fixture
async def watched(browser, tmp_path):
    context = await browser.new_context(viewport={"width": 1200, "height": 900})
    w = Watched(await context.new_page(), tmp_path)
    yield w
    await context.close()
    assert not w.errors, w.errors
