"""Cancel a backup from the dashboard while it runs.

The store is S3 (moto) behind the fault proxy of tests/faults, which holds the lock the
backup takes in the store until the test has pressed "Cancel backup": the backup is
still running when it is canceled, without any timing. (A pack upload would not do: the
last one is written after the engine's last look at the cancel flag.)
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from browser_helpers import (
    OpenPage,
    Site,
    StartSite,
    backup_rows,
    open_dashboard,
    region,
    rewrite_big_db,
)
from playwright.sync_api import expect

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "faults"))

from fault_proxy import FORWARD, FaultProxy, Schedule

HOLD_SECONDS = 120.0


class PackGate:
    """Holds lock writes (``PUT …/locks/…``) while closed; says when one is held."""

    def __init__(self) -> None:
        self.closed = threading.Event()
        self.held = threading.Event()
        self.opened = threading.Event()

    def decide(self, _number: int, method: str, path: str) -> str:
        if self.closed.is_set() and method == "PUT" and "/locks/" in path:
            self.held.set()
            self.opened.wait(HOLD_SECONDS)
        return FORWARD

    def open(self) -> None:
        self.closed.clear()
        self.opened.set()


@pytest.fixture(scope="module")
def gate() -> PackGate:
    return PackGate()


@pytest.fixture(scope="module")
def proxy(request: pytest.FixtureRequest, gate: PackGate) -> Iterator[FaultProxy]:
    s3 = request.getfixturevalue("s3_server")
    with FaultProxy(urlsplit(s3.endpoint).port or 80, Schedule(gate.decide)) as running:
        yield running


@pytest.fixture(scope="module")
def site(start_site: StartSite, request: pytest.FixtureRequest, proxy: FaultProxy) -> Site:
    s3 = request.getfixturevalue("s3_server")
    url = s3.url_for("browser-cancel").replace(s3.endpoint, proxy.endpoint())
    site = start_site(store_url=url)
    site.backup()
    return site


def test_cancel_a_running_backup(site: Site, open_page: OpenPage, gate: PackGate) -> None:
    before = site.backup_ids()
    page, _ = open_page(site)
    open_dashboard(page)
    # The page's own first calls (status, stats: they take a lock in the store too) are
    # over before the gate closes: only the backup's lock is held.
    page.wait_for_load_state("networkidle")
    status = region(page, "Status")
    rewrite_big_db(site.data)
    gate.closed.set()
    try:
        page.get_by_role("button", name="Back up now").click()
        assert gate.held.wait(HOLD_SECONDS), "the backup took no lock"
        cancel = status.get_by_role("button", name="Cancel backup")
        # The server answers once the engine noticed, or after 5 s (it cannot while held).
        with page.expect_response(
            lambda r: r.url.endswith("/creation/cancel"), timeout=HOLD_SECONDS * 1000
        ) as answer:
            cancel.click()
        assert answer.value.ok, answer.value.status
    finally:
        gate.open()
    expect(status.get_by_text("The backup was canceled.")).to_be_visible()
    expect(cancel).to_be_hidden()
    expect(page.get_by_role("button", name="Back up now")).to_be_enabled()
    assert site.backup_ids() == before
    expect(backup_rows(page)).to_have_count(len(before))
