"""The dashboard in a real browser: Debian's chromium driven by Playwright's sync API.

Fixtures:

``browser``
    One headless chromium per module, ``/usr/bin/chromium`` (no browser download; the
    tests skip, saying so, when it is not installed). Playwright gives it a fresh
    temporary user-data dir; HOME and the XDG folders point into a tmp folder. The flags
    keep it off the network: with background networking on, a closed machine logs a
    stream of refused connections.
``start_site``
    Factory: a real ``cloudkeep serve`` process (``launch`` of tests/api) over a data
    folder of WAL-mode SQLite databases and plain files (``fill_data_folder``), with a
    local folder store unless ``store_url`` says otherwise. Stopped at the end of the
    module that asked for it, so a module shares one server.
``open_page``
    Factory: a new browser context (fresh storage) and page on a site, watched by a
    ``PageWatch``: any console error, uncaught exception, native dialog, or request to
    another origin than the server's fails the test at teardown.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import (
    Browser,
    ConsoleMessage,
    Dialog,
    Page,
    Request,
    WebSocket,
    sync_playwright,
)
from playwright.sync_api import Error as PlaywrightError

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "api"))

from api_helpers import launch
from browser_helpers import OpenPage, Site, StartSite, fill_data_folder

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# Playwright's default of 30 s per action; a backup on two shared CI cores stays well inside.
ACTION_TIMEOUT_MS = 30_000


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Browser]:
    """Per module: Playwright's sync API runs an event loop in this thread while it is
    started, and tests after the browser's (``asyncio.run``) need the thread without one."""
    if not CHROMIUM.is_file():
        pytest.skip(
            f"Debian's chromium is not installed at {CHROMIUM} "
            "(apt-get install chromium; scripts/test.sh installs it)"
        )
    home = tmp_path_factory.mktemp("chromium-home")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XDG_", "CLOUDKEEP_"))}
    env.update(
        HOME=str(home),
        XDG_CONFIG_HOME=str(home / "config"),
        XDG_CACHE_HOME=str(home / "cache"),
        XDG_DATA_HOME=str(home / "data"),
    )
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS, env=env
        )
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture(scope="module")
def start_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StartSite]:
    started: list[Site] = []

    def start(
        *,
        store_url: str | None = None,
        args: tuple[str, ...] = (),
        device: str = "browser-test-device",
        fill: Callable[[Path], None] = fill_data_folder,
    ) -> Site:
        root = tmp_path_factory.mktemp("site")
        fill(root / "data")
        server = launch(
            root,
            store_url=store_url,
            args=args,
            via_cli=True,
            env={"HOME": str(root / "home"), "CLOUDKEEP_DEVICE_NAME": device},
        )
        site = Site(server)
        started.append(site)
        return site

    yield start
    for site in started:
        site.server.stop()


class PageWatch:
    """What a page did that a test must not let pass: collected, then checked at teardown."""

    def __init__(self, origin: str) -> None:
        self.origin = urlsplit(origin)
        self.problems: list[str] = []
        self.dialogs: list[str] = []
        self.requested: list[str] = []
        self._allowed: list[re.Pattern[str]] = []

    def allow_console_error(self, pattern: str) -> None:
        """A console error the test expects (e.g. the 401 that makes the page ask for a key)."""
        self._allowed.append(re.compile(pattern))

    def _same_origin(self, url: str, schemes: tuple[str, str]) -> bool:
        parts = urlsplit(url)
        return (
            parts.scheme in schemes
            and parts.hostname == self.origin.hostname
            and parts.port == self.origin.port
        )

    def on_console(self, message: ConsoleMessage) -> None:
        if message.type != "error":
            return
        if any(p.search(message.text) for p in self._allowed):
            return
        where = message.location.get("url", "")
        self.problems.append(f"console error: {message.text} ({where})")

    def on_page_error(self, error: PlaywrightError) -> None:
        self.problems.append(f"uncaught exception: {error.message}\n{error.stack or ''}")

    def on_request(self, request: Request) -> None:
        self.requested.append(request.url)
        if request.url.startswith(("data:", "blob:", "about:")):
            return  # no network: nothing leaves the page
        if not self._same_origin(request.url, ("http", "https")):
            self.problems.append(f"request to another origin: {request.method} {request.url}")

    def on_websocket(self, socket: WebSocket) -> None:
        self.requested.append(socket.url)
        if not self._same_origin(socket.url, ("ws", "wss")):
            self.problems.append(f"WebSocket to another origin: {socket.url}")

    def on_dialog(self, dialog: Dialog) -> None:
        self.dialogs.append(f"{dialog.type}: {dialog.message}")
        self.problems.append(f"native {dialog.type} dialog: {dialog.message!r}")
        dialog.dismiss()

    def attach(self, page: Page) -> None:
        page.on("console", self.on_console)
        page.on("pageerror", self.on_page_error)
        page.on("request", self.on_request)
        page.on("websocket", self.on_websocket)
        page.on("dialog", self.on_dialog)


@pytest.fixture
def open_page(browser: Browser) -> Iterator[OpenPage]:
    contexts: list[Any] = []
    watches: list[PageWatch] = []

    def open_(site: Site, **context_options: Any) -> tuple[Page, PageWatch]:
        context = browser.new_context(base_url=site.url, **context_options)
        contexts.append(context)
        context.set_default_timeout(ACTION_TIMEOUT_MS)
        page = context.new_page()
        watch = PageWatch(site.url)
        watch.attach(page)
        watches.append(watch)
        return page, watch

    yield open_
    for context in contexts:
        context.close()
    problems = [problem for watch in watches for problem in watch.problems]
    if problems:
        pytest.fail("the page misbehaved:\n" + "\n".join(problems), pytrace=False)
