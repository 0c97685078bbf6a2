"""Review: what an in-place restore keeps aside is as private as what it replaced,
and undoing a restore over a running app is refused like the restore itself."""

from __future__ import annotations

import json
import os
import sqlite3
import stat
from pathlib import Path

from tests.hostile.conftest import assert_clean_failure
from tests.hostile.test_restore_running_app import (
    Device,
    add_note,
    bodies,
    make_app_data,
    running_app,
)


def test_undo_copy_of_a_private_database_stays_private(tmp_path: Path, cli) -> None:
    """A single-file SQLite source of mode 0600: its undo copy used to be made by
    SQLite under the umask (0644 here), readable by every local user."""
    database = tmp_path / "app" / "vault.db"
    database.parent.mkdir()
    db = sqlite3.connect(database)
    db.execute("CREATE TABLE notes(id INTEGER PRIMARY KEY, body TEXT)")
    db.execute("INSERT INTO notes(body) VALUES ('in the backup')")
    db.commit()
    db.close()
    os.chmod(database, 0o600)
    env = {"CLOUDKEEP_DATA": str(database), "CLOUDKEEP_STORE": (tmp_path / "store").as_uri()}
    previous = os.umask(0o022)
    try:
        saved = cli("backup", "--json", env=env)
        assert saved.code == 0, saved.stderr
        add_note(database, "private, written after the backup")
        restored = cli("restore", json.loads(saved.stdout)["id"], env=env)
        assert restored.code == 0, restored.stderr
        undo = database.with_name("vault.db.cloudkeep-undo")
        assert "private, written after the backup" in bodies(undo)
        assert stat.S_IMODE(undo.stat().st_mode) == 0o600
        assert stat.S_IMODE(database.stat().st_mode) == 0o600
        undone = cli("restore", "--undo", env=env)
        assert undone.code == 0, undone.stderr
        assert "private, written after the backup" in bodies(database)
        assert stat.S_IMODE(undo.stat().st_mode) == 0o600
    finally:
        os.umask(previous)


def test_undo_over_a_running_app_is_refused(tmp_path: Path, cli) -> None:
    database = make_app_data(tmp_path / "production")
    device = Device(tmp_path / "production", tmp_path / "store", cli)
    backup_id = device.backup()
    add_note(database, "written after the backup")
    assert device.run("restore", backup_id).code == 0
    with running_app(database, "idle"):
        refused = device.run("restore", "--undo")
        assert_clean_failure(refused, codes=(1,))
        assert "in use" in refused.stderr and "--force" in refused.stderr
        assert "written after the backup" not in bodies(database)
    assert device.run("restore", "--undo").code == 0
    assert "written after the backup" in bodies(database)
