"""Helpers of the browser tests: the data folder, the site, what the page shows."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from api_helpers import ApiServer, make_big_db
from playwright.sync_api import Locator, Page, expect

if TYPE_CHECKING:
    from conftest import PageWatch

# A file name that is HTML: the page must show it as text.
HOSTILE_NAME = "<img src=x onerror=alert(1)>"
NOTES = [f"note {n}: remember the milk, then the eggs" for n in range(1, 41)]
# Big enough that a backup reports progress many times on the way.
BIG_DB_MIB = 8


def set_wal(path: Path) -> None:
    with closing(sqlite3.connect(path)) as db:
        db.execute("PRAGMA journal_mode=WAL")


def write_notes(path: Path, notes: list[str]) -> None:
    """A table of notes whose ids are 1..n, in WAL mode."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with closing(sqlite3.connect(path)) as db:
        db.execute("PRAGMA journal_mode=WAL")
        with db:
            db.execute("CREATE TABLE IF NOT EXISTS notes(id INTEGER PRIMARY KEY, body TEXT)")
            db.execute("DELETE FROM notes")
            db.executemany(
                "INSERT INTO notes(id, body) VALUES (?, ?)", list(enumerate(notes, start=1))
            )


def notes_on_disk(path: Path) -> list[str]:
    with closing(sqlite3.connect(path)) as db:
        return [row[0] for row in db.execute("SELECT body FROM notes ORDER BY id")]


def rewrite_big_db(data: Path) -> None:
    """New random bytes in every row of big.db: an unchanged file would be skipped whole
    (same fingerprint) and the bar jump; new data moves it batch by batch."""
    with closing(sqlite3.connect(data / "big.db")) as db, db:
        db.execute("UPDATE blobs SET data = randomblob(65536)")


def fill_data_folder(data: Path, *, hostile: bool = True) -> None:
    """Two WAL-mode databases (one of a few MiB of random blobs) and plain files, one of
    them named as HTML (``hostile``)."""
    data.mkdir(parents=True, exist_ok=True)
    write_notes(data / "notes.db", NOTES)
    make_big_db(data / "big.db", BIG_DB_MIB)
    set_wal(data / "big.db")
    (data / "docs").mkdir()
    (data / "docs" / "readme.txt").write_text("The data folder of the browser tests.\n")
    (data / "docs" / "report.bin").write_bytes(os.urandom(300 * 1024))
    if hostile:
        (data / HOSTILE_NAME).write_text("a file whose name is HTML\n")


@dataclass
class Site:
    """A running ``cloudkeep serve`` with its data folder and store."""

    server: ApiServer
    app_key: str | None = None

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def data(self) -> Path:
        return self.server.data_dir

    def _headers(self) -> dict[str, str]:
        return {"X-Application-ID": self.app_key} if self.app_key else {}

    def backup(self) -> str:
        """A backup made through the API (setting the scene, not what is tested)."""
        with self.server.http(headers=self._headers()) as http:
            response = http.post("/backups/create")
            assert response.status_code == 200, response.text
            return str(response.json()["id"])

    def backups(self) -> list[dict[str, Any]]:
        """The dashboard's rich list (``GET /cloudkeep/backups``), newest first."""
        with self.server.http(headers=self._headers()) as http:
            response = http.get("/cloudkeep/backups")
            assert response.status_code == 200, response.text
            return list(response.json()["backups"])

    def backup_ids(self) -> list[str]:
        """Every backup's id, newest first."""
        with self.server.http(headers=self._headers()) as http:
            response = http.get("/backups")
            assert response.status_code == 200, response.text
            return [str(b["id"]) for b in response.json()["iterable"]]


class StartSite(Protocol):
    def __call__(
        self,
        *,
        store_url: str | None = None,
        args: tuple[str, ...] = (),
        device: str = ...,
        fill: Callable[[Path], None] = ...,
    ) -> Site: ...


class OpenPage(Protocol):
    def __call__(self, site: Site, **context_options: Any) -> tuple[Page, PageWatch]: ...


def region(page: Page, heading: str) -> Locator:
    """A section of the dashboard, by its heading (sections are labelled regions)."""
    return page.get_by_role("region", name=heading, exact=True)


def open_dashboard(page: Page) -> None:
    """Load ``/`` and wait until the backup list has been read."""
    page.goto("/")
    expect(page.get_by_role("heading", name="Status", exact=True)).to_be_visible()
    expect(backup_rows(page).first).to_be_visible()


def open_dashboard_for_queries(page: Page) -> None:
    """``open_dashboard``, and wait for the list of the newest backup's databases the page
    asks for on load (a late answer would refill the select after a choice)."""
    with page.expect_response(lambda response: response.url.endswith("/databases")):
        open_dashboard(page)


def choose_database(page: Page, backup: str, database: str) -> None:
    """In "Query a database": pick the backup, wait for its databases, pick one."""
    query = region(page, "Query a database")
    wanted = f"/cloudkeep/backups/{backup}/databases"
    with page.expect_response(lambda response: response.url.endswith(wanted)):
        query.get_by_label("Backup").select_option(backup)
    select = query.get_by_label("Database")
    expect(select.locator(f'option[value="{database}"]')).to_be_attached()
    select.select_option(database)


def backup_rows(page: Page) -> Locator:
    """The body rows of the backup table (one per backup, newest first)."""
    table = region(page, "Backups").get_by_role("table")
    return table.locator("tbody").get_by_role("row")


PROGRESS_RECORDER = """
(bar) => {
    const seen = [Number(bar.getAttribute("aria-valuenow"))];
    new MutationObserver(() => seen.push(Number(bar.getAttribute("aria-valuenow"))))
        .observe(bar, {attributes: true, attributeFilter: ["aria-valuenow"]});
    bar.__seen = seen;
}
"""


def record_progress(bar: Locator) -> None:
    """Keep every ``aria-valuenow`` the bar takes from now on (read by ``progress_seen``)."""
    bar.evaluate(PROGRESS_RECORDER)


def progress_seen(bar: Locator) -> list[float]:
    return [float(v) for v in bar.evaluate("(bar) => bar.__seen")]


def assert_progress_moved(values: list[float]) -> None:
    """The bar rose at least once between its start and the end, and never went back."""
    moving = [v for v in values if 0 < v < 100]
    assert len(set(moving)) >= 2, f"the progress bar did not move before the end: {values}"
    started = values[values.index(moving[0]) :]
    assert started == sorted(started), f"the progress bar went back: {values}"
