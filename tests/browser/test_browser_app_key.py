"""A server that requires an application key, over an S3 store (moto): the page asks
for the key, refuses a wrong one, then works, the WebSocket progress included; the key
is never shown.
"""

from __future__ import annotations

import pytest
from browser_helpers import (
    OpenPage,
    Site,
    StartSite,
    assert_progress_moved,
    backup_rows,
    progress_seen,
    record_progress,
    region,
    rewrite_big_db,
)
from playwright.sync_api import expect

from cloudkeep.api.appkeys import create_app_key


@pytest.fixture(scope="module")
def site(start_site: StartSite, request: pytest.FixtureRequest) -> Site:
    url = request.getfixturevalue("s3_server").url_for("browser-app-key")
    site = start_site(store_url=url, args=("--require-app-key",))
    site.app_key = create_app_key(site.server.config_dir, label="browser test")
    site.backup()
    return site


def test_the_page_asks_for_the_key_then_works(site: Site, open_page: OpenPage) -> None:
    assert site.app_key is not None
    page, watch = open_page(site)
    # Until the key is given, the server answers 401 (requests and WebSocket handshakes);
    # the browser logs each refusal.
    watch.allow_console_error(r"status of 401 \(Unauthorized\)|HTTP Authentication failed")
    page.goto("/")
    key = page.get_by_label("Application key")
    expect(key).to_be_visible()
    expect(key).to_be_focused()
    expect(page.get_by_role("alert")).to_contain_text("app-key create")

    key.fill(site.app_key + "x")
    page.get_by_role("button", name="Use key").click()
    expect(page.get_by_text("The application key was refused.")).to_be_visible()
    expect(key).to_be_visible()

    key.fill(site.app_key)
    page.get_by_role("button", name="Use key").click()
    expect(key).to_be_hidden()
    expect(backup_rows(page)).to_have_count(1)
    expect(region(page, "Status").get_by_text("browser-test-device", exact=True)).to_be_visible()

    rewrite_big_db(site.data)
    bar = page.get_by_role("progressbar", name="Backup progress", include_hidden=True)
    record_progress(bar)
    page.get_by_role("button", name="Back up now").click()
    expect(region(page, "Status").get_by_role("status")).to_contain_text(
        "Backup completed", timeout=120_000
    )
    assert_progress_moved(progress_seen(bar))
    expect(backup_rows(page)).to_have_count(2)
    assert len(site.backup_ids()) == 2

    assert site.app_key not in page.locator("body").inner_text()
    assert site.app_key not in page.content()
    assert site.app_key not in site.server.log()
