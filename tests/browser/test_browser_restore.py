"""Restoring from the dashboard: chosen paths into a folder, and the whole backup in
place, refused while an app holds the database open, done once it stopped, then undone.

A server of its own: the in-place restore rewrites its data folder.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from browser_helpers import (
    NOTES,
    OpenPage,
    Site,
    StartSite,
    notes_on_disk,
    open_dashboard,
    region,
    write_notes,
)
from playwright.sync_api import Page, expect

# An app with the database open in WAL mode, as Pieces OS holds its own.
WRITER = """
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("PRAGMA journal_mode=WAL")
db.execute("INSERT INTO notes(body) VALUES ('written while the app runs')")
print("ready", flush=True)
time.sleep(600)
"""


@pytest.fixture(scope="module")
def site(start_site: StartSite) -> Site:
    return start_site()


def fill_restore_form(page: Page, backup: str, paths: list[str], target: Path | None) -> None:
    backups = region(page, "Backups")
    backups.get_by_label("Backup to restore").select_option(backup)
    backups.get_by_label("Paths to restore, one per line").fill("\n".join(paths))
    backups.get_by_label("Restore into this folder").fill(str(target) if target else "")
    backups.get_by_role("button", name="Restore", exact=True).click()
    if target is None:
        confirm_in_place(page)


def confirm_in_place(page: Page) -> None:
    """An in-place restore asks first, naming the data folder; only "Restore over the
    data" starts it."""
    dialog = page.get_by_role("dialog", name="Restore over the data folder?")
    expect(dialog).to_contain_text("Undo last restore")
    dialog.get_by_role("button", name="Restore over the data").click()


def test_restore_chosen_paths_into_a_folder(
    site: Site, open_page: OpenPage, tmp_path: Path
) -> None:
    backup = site.backup()
    target = tmp_path / "restored"
    page, _ = open_page(site)
    open_dashboard(page)
    fill_restore_form(page, backup, ["docs/readme.txt", "notes.db"], target)
    expect(region(page, "Backups").get_by_text(f"Restored {backup}.")).to_be_visible()
    restored = sorted(p.relative_to(target).as_posix() for p in target.rglob("*") if p.is_file())
    assert [p for p in restored if not p.endswith(("-wal", "-shm"))] == [
        "docs/readme.txt",
        "notes.db",
    ]
    readme = site.data / "docs" / "readme.txt"
    assert (target / "docs" / "readme.txt").read_bytes() == readme.read_bytes()
    assert notes_on_disk(target / "notes.db") == NOTES


def test_restore_in_place_waits_for_the_app_to_stop_and_can_be_undone(
    site: Site, open_page: OpenPage
) -> None:
    database = site.data / "notes.db"
    write_notes(database, NOTES)
    backup = site.backup()
    changed = [*NOTES[:10], "kept only by the undo"]
    write_notes(database, changed)
    page, _ = open_page(site)
    open_dashboard(page)
    backups = region(page, "Backups")

    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(database)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert writer.stdout is not None and writer.stdout.readline().strip() == "ready"
        fill_restore_form(page, backup, [], None)
        expect(backups.get_by_text("The restore failed:")).to_contain_text("in use")
        expect(backups.get_by_role("button", name="Restore anyway")).to_be_visible()
    finally:
        writer.terminate()
        writer.wait(timeout=30)
    assert notes_on_disk(database) == [*changed, "written while the app runs"]

    backups.get_by_role("button", name="Restore", exact=True).click()
    confirm_in_place(page)
    expect(backups.get_by_text(f"Restored {backup}.")).to_be_visible()
    assert notes_on_disk(database) == NOTES
    assert (site.data / "docs" / "readme.txt").is_file()

    backups.get_by_role("button", name="Undo last restore").click()
    expect(backups.get_by_text("Undone:")).to_be_visible()
    assert notes_on_disk(database) == [*changed, "written while the app runs"]
