"""A restore over data a running app holds open is refused with 409 (issue 11, item 11)."""

from __future__ import annotations

import subprocess
import sys

from api_helpers import StartServer, read_notes

APP = """
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("PRAGMA journal_mode=WAL")
db.execute("SELECT count(*) FROM notes").fetchone()
print("ready", flush=True)
time.sleep(600)
"""


def test_restore_over_an_open_database_is_409(start_server: StartServer) -> None:
    server = start_server(notes=["one", "two"])
    with server.http() as http:
        created = http.post("/backups/create")
        assert created.status_code == 200, created.text
        backup_id = created.json()["id"]
        app = subprocess.Popen(
            [sys.executable, "-c", APP, str(server.db_path)], stdout=subprocess.PIPE, text=True
        )
        try:
            assert app.stdout is not None and app.stdout.readline().strip() == "ready"
            refused = http.post(f"/backup/{backup_id}/restore")
            assert refused.status_code == 409, refused.text
            assert refused.headers["content-type"].startswith("text/plain")
            assert "in use" in refused.text and f"pid {app.pid} " in refused.text
            assert not server.data_dir.with_name("data.cloudkeep-undo").exists()
        finally:
            app.terminate()
            app.wait(timeout=30)
        restored = http.post(f"/backup/{backup_id}/restore")
        assert restored.status_code == 200, restored.text
    assert read_notes(server.db_path) == ["one", "two"]
    assert server.data_dir.with_name("data.cloudkeep-undo").is_dir()
