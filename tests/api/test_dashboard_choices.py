"""The dashboard's default choices in a real browser (Debian's chromium): on a store
several devices share, Restore, Files, Query and Compare start on this device's
backups, as ``latest`` does, never on another device's newer one."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from api_helpers import StartServer, cli_env, make_notes_db

CHROMIUM = Path("/usr/bin/chromium")
LAUNCH_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium")


def test_choices_default_to_this_devices_backups(start_server: StartServer, tmp_path: Path) -> None:
    playwright = pytest.importorskip("playwright.sync_api")
    server = start_server(notes=["first"])
    with server.http() as http:
        older = http.post("/backups/create").json()["id"]
        make_notes_db(server.db_path, ["first", "second"])
        newer = http.post("/backups/create").json()["id"]
    other = tmp_path / "desktop"
    make_notes_db(other / "notes.db", ["elsewhere"])
    env = {**cli_env(server), "CLOUDKEEP_DEVICE_NAME": "desktop"}
    subprocess.run(
        [sys.executable, "-m", "cloudkeep", "--data", str(other), "--store",
         server.store_dir.as_uri(), "backup"],
        env=env, check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    server.stop()  # started again, it lists the store with the desktop's backup in it
    server = start_server(root=server.root)
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=LAUNCH_ARGS)
        try:
            page = browser.new_page()
            page.goto(server.url + "/")
            page.locator("#backup-rows tr").nth(2).wait_for()  # all three listed
            chosen = {
                name: page.input_value(f"#{name}")
                for name in (
                    "restore-backup",
                    "files-backup",
                    "query-backup",
                    "compare-a",
                    "compare-b",
                )
            }
        finally:
            browser.close()
    assert chosen == {
        "restore-backup": newer,
        "files-backup": newer,
        "query-backup": newer,
        "compare-a": older,
        "compare-b": newer,
    }
