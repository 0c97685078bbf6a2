"""Restoring over a running app (issue 11, item 11).

A real child process holds the app's WAL-mode database open (idle, or writing
all the time) while the user restores in place with the real CLI: the restore
must refuse with one clear line naming the database and the process, change
nothing, and with ``--force`` go ahead, keeping the replaced folder as the undo
copy that ``restore --undo`` puts back. The data folder keeps its own mode, and
a data path that is a symlink is restored into where it points.
"""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from cloudkeep.backups.in_use import PENDING_BYTE, SHM_DMS_BYTE, _held, users_of
from tests.hostile.conftest import CliResult, assert_clean_failure, tree_state

APP = """
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("PRAGMA journal_mode=WAL")
db.execute("SELECT count(*) FROM notes").fetchone()
print("ready", flush=True)
n = 0
while True:
    if sys.argv[2] == "writing":
        db.execute("INSERT INTO notes(body) VALUES (?)", (f"app write {n}",))
        n += 1
    time.sleep(0.02)
"""


def make_app_data(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(root / "app.db")
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE notes(id INTEGER PRIMARY KEY, body TEXT)")
    db.executemany("INSERT INTO notes(body) VALUES (?)", [(f"note {i}",) for i in range(200)])
    db.commit()
    db.close()
    (root / "settings.json").write_text('{"theme": "dark"}')
    return root / "app.db"


def bodies(database: Path) -> list[str]:
    db = sqlite3.connect(database)
    try:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        return [row[0] for row in db.execute("SELECT body FROM notes ORDER BY id")]
    finally:
        db.close()


def add_note(database: Path, body: str) -> None:
    db = sqlite3.connect(database)
    db.execute("INSERT INTO notes(body) VALUES (?)", (body,))
    db.commit()
    db.close()


@contextmanager
def running_app(database: Path, mode: str) -> Iterator[subprocess.Popen[str]]:
    """A real process holding ``database`` open in WAL mode, idle or writing."""
    app = subprocess.Popen(
        [sys.executable, "-c", APP, str(database), mode],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert app.stdout is not None and app.stdout.readline().strip() == "ready"
        yield app
    finally:
        app.terminate()
        app.wait(timeout=30)


class Device:
    def __init__(self, data: Path, store: Path, cli) -> None:  # type: ignore[no-untyped-def]
        self.data, self.store, self.cli = data, store, cli

    def run(self, *args: str) -> CliResult:
        result: CliResult = self.cli(
            "--data", str(self.data), "--store", self.store.as_uri(), *args
        )
        return result

    def backup(self) -> str:
        done = self.run("backup", "--json")
        assert done.code == 0, done.stderr
        backup_id: str = json.loads(done.stdout)["id"]
        return backup_id


@pytest.mark.parametrize("mode", ["idle", "writing"])
def test_restore_refuses_data_a_running_app_holds_open(mode: str, tmp_path: Path, cli) -> None:
    database = make_app_data(tmp_path / "production")
    device = Device(tmp_path / "production", tmp_path / "store", cli)
    backup_id = device.backup()
    saved = bodies(database)
    add_note(database, "written after the backup")
    undo = tmp_path / "production.cloudkeep-undo"

    with running_app(database, mode) as app:
        before = tree_state(tmp_path / "production") if mode == "idle" else None
        refused = device.run("restore", backup_id)
        assert_clean_failure(refused, codes=(1,))
        line = refused.stderr.strip()
        assert "in use" in line and "app.db" in line and f"pid {app.pid} " in line, line
        assert "--force" in line and len(line.splitlines()) == 1
        assert "written after the backup" in bodies(database)
        assert not undo.exists()
        if before is not None:
            assert tree_state(tmp_path / "production") == before

        forced = device.run("restore", backup_id, "--force")
        assert forced.code == 0, forced.stderr
        assert str(undo) in forced.stderr and "--undo" in forced.stderr
        assert bodies(database) == saved
        # The app goes on with the files it holds: they are the undo copy now.
        time.sleep(0.3)
    replaced = bodies(undo / "app.db")
    assert "written after the backup" in replaced
    assert bodies(database) == saved

    undone = device.run("restore", "--undo")
    assert undone.code == 0, undone.stderr
    assert bodies(database) == replaced
    if mode == "writing":
        assert any(body.startswith("app write") for body in bodies(database))
    assert bodies(undo / "app.db") == saved  # undo again redoes
    redone = device.run("restore", "--undo")
    assert redone.code == 0 and bodies(database) == saved


def test_sqlite_locks_tell_an_open_database_without_proc(tmp_path: Path) -> None:
    """The portable probe alone: a WAL connection's shared lock on the -shm DMS byte."""
    database = make_app_data(tmp_path / "production")
    with running_app(database, "idle"):
        assert _held(Path(f"{database}-shm"), SHM_DMS_BYTE, 1)
        assert users_of(tmp_path / "production")
    assert not _held(Path(f"{database}-shm"), SHM_DMS_BYTE, 1)
    assert not _held(database, PENDING_BYTE, 512)
    assert users_of(tmp_path / "production") == {}


def test_the_data_folder_keeps_its_own_mode(tmp_path: Path, cli) -> None:
    data = tmp_path / "production"
    make_app_data(data)
    os.chmod(data, 0o700)
    device = Device(data, tmp_path / "store", cli)
    backup_id = device.backup()
    assert device.run("restore", backup_id).code == 0
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    os.chmod(data, 0o750)  # the user's choice since the backup is kept too
    assert device.run("restore", backup_id).code == 0
    assert stat.S_IMODE(data.stat().st_mode) == 0o750
    target = tmp_path / "copy"
    assert device.run("restore", backup_id, "--target", str(target)).code == 0
    assert stat.S_IMODE(target.stat().st_mode) == 0o700  # the backed-up folder's mode


def test_restore_through_a_symlinked_data_folder(tmp_path: Path, cli) -> None:
    real = tmp_path / "disk" / "production"
    database = make_app_data(real)
    link = tmp_path / "app" / "production"
    link.parent.mkdir()
    link.symlink_to(real)
    device = Device(link, tmp_path / "store", cli)
    backup_id = device.backup()
    saved = bodies(database)
    add_note(database, "written after the backup")
    (real / "settings.json").write_text('{"theme": "light"}')

    restored = device.run("restore", backup_id)
    assert restored.code == 0, restored.stderr
    assert link.is_symlink() and os.readlink(link) == str(real)
    assert bodies(real / "app.db") == saved
    assert (real / "settings.json").read_text() == '{"theme": "dark"}'
    assert sorted(p.name for p in link.parent.iterdir()) == ["production"]
    undo = real.with_name("production.cloudkeep-undo")
    assert "written after the backup" in bodies(undo / "app.db")
    assert device.run("restore", "--undo").code == 0
    assert link.is_symlink() and "written after the backup" in bodies(real / "app.db")
