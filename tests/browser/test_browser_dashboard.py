"""The dashboard as a user drives it: status, "Back up now" with live progress, the
timeline, delete with confirmation, the keyboard, a narrow window, hostile file names.

One ``cloudkeep serve`` over a folder store for the module; tests that need a backup of
their own make it through the API first.
"""

from __future__ import annotations

import re

import pytest
from browser_helpers import (
    HOSTILE_NAME,
    OpenPage,
    Site,
    StartSite,
    assert_progress_moved,
    backup_rows,
    open_dashboard,
    progress_seen,
    record_progress,
    region,
    rewrite_big_db,
)
from playwright.sync_api import Page, expect


@pytest.fixture(scope="module")
def site(start_site: StartSite) -> Site:
    site = start_site()
    site.backup()
    return site


def back_up_now(page: Page, site: Site, *, keyboard: bool = False) -> str:
    """Start a backup with "Back up now" (clicked, or Enter on the focused button), wait for
    the end; check that the bar moved and that the new backup is listed; its id."""
    before = site.backup_ids()
    rewrite_big_db(site.data)
    bar = page.get_by_role("progressbar", name="Backup progress", include_hidden=True)
    record_progress(bar)
    if keyboard:
        page.keyboard.press("Enter")
    else:
        page.get_by_role("button", name="Back up now").click()
    status = region(page, "Status")
    expect(status.get_by_role("status")).to_contain_text("Backup completed", timeout=120_000)
    after = site.backup_ids()
    assert len(after) == len(before) + 1 and after[1:] == before
    new = after[0]
    expect(status.get_by_role("status")).to_contain_text(new)
    assert_progress_moved(progress_seen(bar))
    expect(backup_rows(page)).to_have_count(len(after))
    expect(backup_rows(page).first.locator(f'time[title="{new}"]')).to_be_visible()
    return new


def test_status_shows_the_age_of_the_last_backup(site: Site, open_page: OpenPage) -> None:
    page, _ = open_page(site)
    open_dashboard(page)
    status = region(page, "Status")
    expect(status.get_by_text(re.compile(r"^\d+ (s|min) ago \("))).to_be_visible()
    expect(status.get_by_text("browser-test-device", exact=True)).to_be_visible()
    expect(page.get_by_role("button", name="Back up now")).to_be_enabled()
    for heading in ("Backups", "Files", "Compare backups", "Query a database", "Charts"):
        expect(page.get_by_role("heading", name=heading, exact=True)).to_be_visible()
    expect(page.get_by_role("heading", name="Settings", exact=True)).to_be_attached()


def test_back_up_now_moves_the_progress_bar_and_adds_to_the_timeline(
    site: Site, open_page: OpenPage
) -> None:
    page, _ = open_page(site)
    open_dashboard(page)
    timeline = page.get_by_role("img", name=re.compile(r"^Timeline"))
    expect(timeline.locator("circle")).to_have_count(len(site.backup_ids()))
    back_up_now(page, site)
    expect(timeline.locator("circle")).to_have_count(len(site.backup_ids()))


def test_the_keyboard_reaches_back_up_now_and_enter_starts_it(
    site: Site, open_page: OpenPage
) -> None:
    page, _ = open_page(site)
    open_dashboard(page)
    button = page.get_by_role("button", name="Back up now")
    for _ in range(40):
        page.keyboard.press("Tab")
        if button.evaluate("b => b === document.activeElement"):
            break
    expect(button).to_be_focused()
    back_up_now(page, site, keyboard=True)


def test_delete_asks_for_confirmation_first(site: Site, open_page: OpenPage) -> None:
    doomed = site.backup()
    page, _ = open_page(site)
    open_dashboard(page)
    row = backup_rows(page).filter(has=page.locator(f'time[title="{doomed}"]'))
    dialog = page.get_by_role("dialog", name="Delete this backup?")

    row.get_by_role("button", name=re.compile(r"^Delete the backup of ")).click()
    expect(dialog).to_be_visible()
    expect(dialog).to_contain_text(doomed)
    dialog.get_by_role("button", name="Cancel").click()
    expect(dialog).to_be_hidden()
    assert doomed in site.backup_ids()
    expect(row).to_have_count(1)

    row.get_by_role("button", name=re.compile(r"^Delete the backup of ")).click()
    dialog.get_by_role("button", name="Delete backup").click()
    expect(region(page, "Backups").get_by_text(f"Deleted the backup {doomed}.")).to_be_visible()
    expect(row).to_have_count(0)
    assert doomed not in site.backup_ids()


def test_a_narrow_window_shows_one_column_without_scrolling_sideways(
    site: Site, open_page: OpenPage
) -> None:
    page, _ = open_page(site, viewport={"width": 375, "height": 800})
    open_dashboard(page)
    expect(
        page.get_by_role("img", name=re.compile(r"^Timeline")).locator("circle")
    ).not_to_have_count(0)
    widths = page.evaluate(
        "() => [document.documentElement.scrollWidth, document.documentElement.clientWidth]"
    )
    assert widths[0] <= widths[1] == 375, f"scrolls sideways: {widths}"
    sections = [
        "Status",
        "Backups",
        "Files",
        "Compare backups",
        "Query a database",
        "Charts",
        "Settings",
    ]
    boxes = [region(page, name).bounding_box() for name in sections]
    for name, box in zip(sections, boxes, strict=True):
        assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 375, (name, box)
    for (upper, above), (lower, below) in zip(
        zip(sections, boxes, strict=True), zip(sections[1:], boxes[1:], strict=True), strict=False
    ):
        assert above is not None and below is not None
        assert below["y"] >= above["y"] + above["height"] - 1, f"{lower} beside {upper}"
    charts = region(page, "Charts").get_by_role("figure")
    expect(charts).to_have_count(3)
    lefts = {round(charts.nth(i).bounding_box()["x"]) for i in range(3)}  # type: ignore[index]
    assert len(lefts) == 1, f"the charts sit side by side: {lefts}"


def test_a_file_named_as_html_shows_as_text(site: Site, open_page: OpenPage) -> None:
    page, watch = open_page(site)
    open_dashboard(page)
    files = region(page, "Files")
    files.get_by_label("Backup").select_option(site.backup_ids()[0])
    files.get_by_role("button", name="Show files").click()
    table = files.get_by_role("table")
    expect(table.get_by_role("cell", name=HOSTILE_NAME, exact=True)).to_be_visible()
    expect(table.locator("img")).to_have_count(0)
    expect(table.get_by_role("button", name=f"Download {HOSTILE_NAME}")).to_be_visible()
    assert watch.dialogs == []
    assert not [url for url in watch.requested if url.endswith("/x")], watch.requested
