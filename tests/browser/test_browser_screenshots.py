"""Screenshots of the dashboard for the docs, taken from a real run.

Two devices back up to one store over ten days (``backup --time``), then the page is
shot wide and narrow, with the timeline, the files of a backup, a diff, a query and the
charts. The PNGs go to ``$CLOUDKEEP_SCREENSHOTS`` when set (``docs/screenshots`` to
refresh the docs' images), else to the test's tmp folder so a CI run leaves the tree
clean:

    CLOUDKEEP_SCREENSHOTS=docs/screenshots .venv/bin/python -m pytest tests/browser -k screenshots
"""

from __future__ import annotations

import os
import re
import sqlite3
import subprocess
import sys
from contextlib import closing
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from api_helpers import PASSPHRASE
from browser_helpers import (
    OpenPage,
    Site,
    StartSite,
    backup_rows,
    choose_database,
    fill_data_folder,
    open_dashboard,
    open_dashboard_for_queries,
    region,
    write_notes,
)
from playwright.sync_api import Locator, Page, expect

DESKTOP = "studio-desktop"
LAPTOP = "travel-laptop"
WIDE = {"width": 1280, "height": 900}
NARROW = {"width": 375, "height": 812}
SNIPPETS = [
    "git rebase -i HEAD~3",
    "SELECT count(*) FROM assets WHERE created > date('now', '-7 day')",
    "docker compose logs -f --tail=50 api",
    "python -m http.server 8000",
    "rsync -av --delete src/ backup/src/",
    "kubectl rollout restart deployment/web",
]


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    chosen = os.environ.get("CLOUDKEEP_SCREENSHOTS")
    folder = Path(chosen).resolve() if chosen else tmp_path_factory.mktemp("screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def add_day_of_work(data: Path, day: int) -> None:
    """Some new notes every day, some blobs every other day."""
    with closing(sqlite3.connect(data / "notes.db")) as db, db:
        db.executemany(
            "INSERT INTO notes(body) VALUES (?)",
            [(f"day {day}: {SNIPPETS[(day + n) % len(SNIPPETS)]}",) for n in range(3)],
        )
    if day % 2:
        with closing(sqlite3.connect(data / "big.db")) as db, db:
            db.execute(
                "INSERT INTO blobs(data) SELECT randomblob(65536) FROM blobs LIMIT ?",
                (4 * day,),
            )


def backup_as(root: Path, device: str, data: Path, when: datetime) -> None:
    """A backup by the CLI, recorded at ``when``, into the store and with the keys the
    server rooted at ``root`` uses (``launch``'s layout: root/store, root/config)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLOUDKEEP_")}
    env.update(
        HOME=str(root / "home"),
        CLOUDKEEP_CONFIG_DIR=str(root / "config"),
        CLOUDKEEP_CACHE_DIR=str(root / "cli-cache"),
        CLOUDKEEP_PASSPHRASE=PASSPHRASE,
        CLOUDKEEP_DEVICE_NAME=device,
    )
    command = [sys.executable, "-m", "cloudkeep", "--data", str(data)]
    command += ["--store", (root / "store").as_uri(), "backup", "--time", when.isoformat()]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def ten_days_of_backups(data: Path) -> None:
    """Before the server starts (it would list the CLI's backups only after its cache's
    TTL): nine backups of two devices over ten days, then changes for the diff."""
    root = data.parent
    fill_data_folder(data, hostile=False)
    write_notes(data / "notes.db", SNIPPETS)
    laptop = root / "laptop"
    fill_data_folder(laptop, hostile=False)
    write_notes(laptop / "notes.db", SNIPPETS[:3])
    now = datetime.now(UTC).replace(microsecond=0)
    for days_ago in (9, 8, 6, 5, 3, 1):
        add_day_of_work(data, 10 - days_ago)
        backup_as(root, DESKTOP, data, now - timedelta(days=days_ago, hours=3))
    for days_ago in (7, 4, 2):
        add_day_of_work(laptop, days_ago)
        backup_as(root, LAPTOP, laptop, now - timedelta(days=days_ago, hours=9))
    # What the diff shows: a note edited, one deleted, two added since the last backup.
    with closing(sqlite3.connect(data / "notes.db")) as db, db:
        db.execute("UPDATE notes SET body = body || ' --no-ff' WHERE id = 1")
        db.execute("DELETE FROM notes WHERE id = 5")
        db.executemany(
            "INSERT INTO notes(body) VALUES (?)",
            [("pg_dump -Fc notes > notes.dump",), ("ssh -L 5432:localhost:5432 db",)],
        )


@pytest.fixture(scope="module")
def site(start_site: StartSite) -> Site:
    return start_site(device=DESKTOP, fill=ten_days_of_backups)


def save(target: Page | Locator, path: Path) -> None:
    target.screenshot(path=path, animations="disabled")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_screenshots_of_the_dashboard(site: Site, open_page: OpenPage, shots: Path) -> None:
    page, _ = open_page(site, viewport=WIDE, color_scheme="light")
    open_dashboard_for_queries(page)
    expect(backup_rows(page)).to_have_count(9)
    page.get_by_role("button", name="Back up now").click()
    status = region(page, "Status")
    expect(status.get_by_role("status")).to_contain_text("Backup completed", timeout=120_000)
    expect(backup_rows(page)).to_have_count(10)
    expect(status.get_by_text(re.compile(r"^\d+ s ago \("))).to_be_visible()
    save(page, shots / "dashboard-wide.png")

    backups = region(page, "Backups")
    timeline = backups.get_by_role("img", name="Timeline", exact=False)
    expect(timeline.locator("circle")).to_have_count(10)
    page.evaluate("() => document.getElementById('backups').scrollIntoView()")
    save(backups.get_by_role("table"), shots / "backup-table.png")
    save(backups.get_by_role("figure").first, shots / "timeline.png")

    files = region(page, "Files")
    files.get_by_role("button", name="Show files").click()
    files.get_by_role("button", name="Open folder docs").click()
    expect(files.get_by_role("cell", name="report.bin", exact=True)).to_be_visible()
    save(files, shots / "files.png")

    desktop = [b["id"] for b in site.backups() if b["device_name"] == DESKTOP]
    compare = region(page, "Compare backups")
    compare.get_by_label("Older backup (A)").select_option(desktop[1])
    compare.get_by_label("Newer backup (B)").select_option(desktop[0])
    compare.get_by_label("Show the changed rows").check()
    compare.get_by_role("button", name="Compare").click()
    expect(compare.get_by_role("table", name="Row changes in notes.db")).to_be_visible()
    save(compare, shots / "compare.png")

    query = region(page, "Query a database")
    choose_database(page, desktop[0], "notes.db")
    query.get_by_label("SQL query (read-only)").fill(
        "SELECT id, body FROM notes WHERE body LIKE '%git%' ORDER BY id"
    )
    query.get_by_role("button", name="Run query").click()
    expect(query.get_by_role("table", name="Result of the query on notes.db")).to_be_visible()
    save(query, shots / "query.png")

    charts = region(page, "Charts")
    expect(charts.get_by_text("The store holds")).to_be_visible()
    save(charts, shots / "charts.png")

    narrow, _ = open_page(site, viewport=NARROW, color_scheme="light")
    open_dashboard(narrow)
    expect(backup_rows(narrow)).to_have_count(10)
    save(narrow, shots / "dashboard-narrow.png")
