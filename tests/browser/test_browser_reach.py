"""Reaching into backups from the dashboard: browse and download a file, compare two
backups down to the rows of a database, query a backed-up database in place.

One ``cloudkeep serve`` over a folder store for the module.
"""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

import pytest
from browser_helpers import (
    NOTES,
    OpenPage,
    Site,
    StartSite,
    choose_database,
    open_dashboard,
    open_dashboard_for_queries,
    region,
)
from playwright.sync_api import expect


@pytest.fixture(scope="module")
def site(start_site: StartSite) -> Site:
    site = start_site()
    site.backup()
    return site


def test_browse_a_backup_and_download_a_file(site: Site, open_page: OpenPage) -> None:
    page, _ = open_page(site)
    open_dashboard(page)
    files = region(page, "Files")
    files.get_by_label("Backup").select_option(site.backup_ids()[0])
    files.get_by_role("button", name="Show files").click()
    table = files.get_by_role("table")
    expect(table.get_by_role("cell", name="notes.db", exact=True)).to_be_visible()
    files.get_by_role("button", name="Open folder docs").click()
    expect(table).to_contain_text("Files in docs of")
    expect(table.get_by_role("cell", name="readme.txt", exact=True)).to_be_visible()

    with page.expect_download() as started:
        table.get_by_role("button", name="Download report.bin").click()
    download = started.value
    assert download.suggested_filename == "report.bin"
    source = site.data / "docs" / "report.bin"
    assert Path(download.path()).read_bytes() == source.read_bytes()
    expect(files.get_by_text("Downloaded report.bin")).to_be_visible()

    files.get_by_role("button", name="Top folder").click()
    expect(table.get_by_role("cell", name="big.db", exact=True)).to_be_visible()


def change_notes(path: Path) -> None:
    """Between two backups: 3 rows changed (ids 2-4), 2 removed (5, 6), 4 added."""
    with closing(sqlite3.connect(path)) as db, db:
        db.execute("UPDATE notes SET body = body || ' (edited)' WHERE id BETWEEN 2 AND 4")
        db.execute("DELETE FROM notes WHERE id IN (5, 6)")
        db.executemany("INSERT INTO notes(body) VALUES (?)", [(f"new note {n}",) for n in range(4)])


def test_compare_two_backups_shows_the_row_changes(site: Site, open_page: OpenPage) -> None:
    older = site.backup()
    change_notes(site.data / "notes.db")
    newer = site.backup()
    page, _ = open_page(site)
    open_dashboard(page)
    compare = region(page, "Compare backups")
    compare.get_by_label("Older backup (A)").select_option(older)
    compare.get_by_label("Newer backup (B)").select_option(newer)
    compare.get_by_label("Show the changed rows").check()
    compare.get_by_role("button", name="Compare").click()

    expect(compare.get_by_text("Compared in")).to_be_visible()
    expect(compare.get_by_text("~ notes.db")).to_be_visible()
    rows = compare.get_by_role("table", name="Row changes in notes.db")
    notes = rows.get_by_role("row").filter(has=page.get_by_role("cell", name="notes", exact=True))
    expect(notes.get_by_role("cell")).to_have_text(["notes", "4", "2", "3"])
    expect(compare.get_by_text("new note 3")).to_be_visible()
    expect(compare.get_by_text(f"{NOTES[3]} (edited)")).to_be_visible()


def test_query_a_database_in_a_backup(site: Site, open_page: OpenPage) -> None:
    page, watch = open_page(site)
    open_dashboard_for_queries(page)
    query = region(page, "Query a database")
    choose_database(page, site.backup_ids()[-1], "notes.db")
    query.get_by_label("SQL query (read-only)").fill(
        "SELECT id, body FROM notes WHERE id IN (1, 7) ORDER BY id"
    )
    query.get_by_role("button", name="Run query").click()

    result = query.get_by_role("table", name="Result of the query on notes.db")
    expect(result.get_by_role("columnheader")).to_have_text(["id", "body"])
    expect(result.locator("tbody").get_by_role("row")).to_have_count(2)
    expect(result.locator("tbody").get_by_role("row").first.get_by_role("cell")).to_have_text(
        ["1", NOTES[0]]
    )
    expect(query.get_by_text("2 rows in")).to_be_visible()

    # Anything but reading is refused, with SQLite's or the server's reason on the page.
    watch.allow_console_error(r"status of 400 \(Bad Request\)")
    query.get_by_label("SQL query (read-only)").fill("DELETE FROM notes")
    query.get_by_role("button", name="Run query").click()
    expect(query.get_by_text("Could not run the query:")).to_be_visible()
    expect(result).to_have_count(0)
