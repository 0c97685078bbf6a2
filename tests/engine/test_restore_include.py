"""restore --include: chosen files and folders of a backup, into a target or in place one
entry at a time (atomically each), with undo; real SQLite databases, real repositories."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cloudkeep.backups.swap import partial_undo_path, undo_path
from cloudkeep.errors import DataInUse, EntryNotFound, UserError
from cloudkeep.operations import Restore, run
from cloudkeep.workspace import Workspace
from tests.engine.conftest import db_state, workspace


def _rows(path: Path) -> list[tuple[object, ...]]:
    db = sqlite3.connect(path)
    try:
        return db.execute("SELECT id, body FROM snippets ORDER BY id").fetchall()
    finally:
        db.close()


@pytest.fixture
def backed_up(data_dir: Path, tmp_path: Path) -> tuple[Workspace, str, dict[str, object]]:
    """A backup of ``data_dir`` (with sub/deep/c.txt added); the database's state then."""
    (data_dir / "sub" / "deep").mkdir(parents=True)
    (data_dir / "sub" / "b.txt").write_text("b as backed up")
    (data_dir / "sub" / "deep" / "c.txt").write_text("c as backed up")
    ws = workspace(data_dir, (tmp_path / "store").as_uri())
    info = ws.backup()
    return ws, info.id, db_state(data_dir / "snippets.db")


def test_include_a_subtree_into_a_target_fetches_only_its_chunks(
    backed_up: tuple[Workspace, str, dict[str, object]], data_dir: Path, tmp_path: Path
) -> None:
    ws, backup_id, _ = backed_up
    target = tmp_path / "target"
    info = ws.restore(backup_id, target, include=["sub"], reuse_local=False)
    restored = sorted(p.relative_to(target).as_posix() for p in target.rglob("*"))
    assert restored == ["sub", "sub/b.txt", "sub/deep", "sub/deep/c.txt"]
    assert (target / "sub" / "deep" / "c.txt").read_text() == "c as backed up"
    assert info.fetched_bytes == len("b as backed up") + len("c as backed up")


APP = """
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("PRAGMA wal_autocheckpoint=0")
db.execute("DELETE FROM snippets WHERE id <= 100")
print("ready", flush=True)
n = 0
while True:
    db.execute("INSERT INTO snippets(body) VALUES (?)", (f"app write {n}",))
    n += 1
    time.sleep(0.01)
"""


def test_include_a_database_in_place_while_an_app_writes_it(
    backed_up: tuple[Workspace, str, dict[str, object]], data_dir: Path
) -> None:
    """An app writes the live database in WAL mode (no checkpoint: its transactions sit
    in the -wal). Refused while it runs; with force, the database restored in place must
    read as backed up once the app is gone, never with the old log replayed onto it (the
    -wal and -shm go to the undo folder with the file they belong to)."""
    ws, backup_id, backed_up_state = backed_up
    db_path = data_dir / "snippets.db"
    (data_dir / "sub" / "b.txt").write_text("b changed")
    app = subprocess.Popen(
        [sys.executable, "-c", APP, str(db_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert app.stdout is not None and app.stdout.readline().strip() == "ready"
        with pytest.raises(DataInUse):
            ws.restore(backup_id, include=["snippets.db"])
        assert (data_dir / "snippets.db-wal").stat().st_size > 0
        info = ws.restore(backup_id, include=["snippets.db"], force=True)
        time.sleep(0.1)  # the app goes on writing: into the files now kept for undo
    finally:
        app.kill()  # no clean close: its log stays as a crash leaves it
        app.wait(timeout=30)
    assert db_state(db_path) == backed_up_state
    assert (data_dir / "sub" / "b.txt").read_text() == "b changed"  # not chosen: untouched
    assert Path(info.undo_path) == partial_undo_path(data_dir)
    ws.undo_restore()
    rows = _rows(db_path)
    assert rows[0][0] == 101 and rows[-1][1].startswith("app write")  # type: ignore[union-attr]
    ws.undo_restore()  # redo
    assert db_state(db_path) == backed_up_state


def test_include_a_single_file_in_place_and_undo(
    backed_up: tuple[Workspace, str, dict[str, object]], data_dir: Path
) -> None:
    ws, backup_id, _ = backed_up
    (data_dir / "sub" / "b.txt").write_text("b changed")
    (data_dir / "sub" / "deep" / "c.txt").write_text("c changed")
    (data_dir / "sub" / "new.txt").write_text("made after the backup")
    info = run(Restore(backup_id, include=("sub/b.txt",)), ws).info
    assert (data_dir / "sub" / "b.txt").read_text() == "b as backed up"
    assert (data_dir / "sub" / "deep" / "c.txt").read_text() == "c changed"
    assert (data_dir / "sub" / "new.txt").read_text() == "made after the backup"
    assert info.restored_to == str(data_dir) and info.undo_path
    assert not undo_path(data_dir).exists()
    ws.undo_restore()
    assert (data_dir / "sub" / "b.txt").read_text() == "b changed"


def test_include_a_subtree_in_place_makes_missing_folders_and_undo_removes_them(
    backed_up: tuple[Workspace, str, dict[str, object]], data_dir: Path
) -> None:
    ws, backup_id, _ = backed_up
    import shutil

    shutil.rmtree(data_dir / "sub")
    ws.restore(backup_id, include=["sub/deep"])
    assert (data_dir / "sub" / "deep" / "c.txt").read_text() == "c as backed up"
    assert not (data_dir / "sub" / "b.txt").exists()  # only what was chosen
    ws.undo_restore()
    assert not (data_dir / "sub").exists()
    ws.undo_restore()
    assert (data_dir / "sub" / "deep" / "c.txt").read_text() == "c as backed up"


def test_one_undo_at_a_time_between_whole_and_partial_restores(
    backed_up: tuple[Workspace, str, dict[str, object]], data_dir: Path
) -> None:
    ws, backup_id, _ = backed_up
    ws.restore(backup_id, include=["config/app.json"])
    assert partial_undo_path(data_dir).exists()
    ws.restore(backup_id)
    assert undo_path(data_dir).is_dir() and not partial_undo_path(data_dir).exists()
    ws.restore(backup_id, include=["config"])
    assert partial_undo_path(data_dir).exists() and not undo_path(data_dir).exists()


def test_an_interrupted_include_restore_is_taken_back_before_another(
    backed_up: tuple[Workspace, str, dict[str, object]],
    data_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Killed after its first entry: the next restore refuses until --undo puts back what
    that entry replaced; entries never reached are left alone."""
    from cloudkeep.backups.restore import partial

    ws, backup_id, _ = backed_up
    (data_dir / "sub" / "b.txt").write_text("b changed")
    (data_dir / "sub" / "deep" / "c.txt").write_text("c changed")
    real_put = partial.Placer.put
    calls = 0

    def dying_put(self: partial.Placer, path: str) -> None:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise KeyboardInterrupt  # as a kill between two entries
        real_put(self, path)

    monkeypatch.setattr(partial.Placer, "put", dying_put)
    with pytest.raises(KeyboardInterrupt):
        ws.restore(backup_id, include=["sub"])
    monkeypatch.setattr(partial.Placer, "put", real_put)
    assert (data_dir / "sub" / "b.txt").read_text() == "b as backed up"
    assert (data_dir / "sub" / "deep" / "c.txt").read_text() == "c changed"
    with pytest.raises(UserError, match="interrupted restore"):
        ws.restore(backup_id, include=["sub"])
    with pytest.raises(UserError, match="interrupted restore"):
        ws.restore(backup_id)
    ws.undo_restore()
    assert (data_dir / "sub" / "b.txt").read_text() == "b changed"
    assert (data_dir / "sub" / "deep" / "c.txt").read_text() == "c changed"
    ws.restore(backup_id, include=["sub"])
    assert (data_dir / "sub" / "deep" / "c.txt").read_text() == "c as backed up"


def test_a_path_not_in_the_backup_is_refused_before_anything_changes(
    backed_up: tuple[Workspace, str, dict[str, object]], data_dir: Path, tmp_path: Path
) -> None:
    ws, backup_id, _ = backed_up
    with pytest.raises(EntryNotFound, match="'nope/x' is not in backup"):
        ws.restore(backup_id, include=["sub/b.txt", "nope/x"])
    with pytest.raises(EntryNotFound, match=r"'sub/b\.txt' is a file there"):
        ws.restore(backup_id, include=["sub/b.txt/x"])
    for bad in ("../x", "sub/../../x", "a\0b", "..\\x", "sub//b.txt"):
        with pytest.raises(UserError, match="not a path inside a backup"):
            ws.restore(backup_id, tmp_path / "t", include=[bad])
    # A leading '/' is the top of the backup (as restic writes paths), never this system's.
    with pytest.raises(EntryNotFound, match="'etc/passwd' is not in backup"):
        ws.restore(backup_id, tmp_path / "t", include=["/etc/passwd"])
    assert not partial_undo_path(data_dir).exists() and not (tmp_path / "t").exists()


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX symlinks")
def test_a_symlink_planted_where_the_backup_has_a_folder_is_replaced_not_followed(
    backed_up: tuple[Workspace, str, dict[str, object]], data_dir: Path, tmp_path: Path
) -> None:
    ws, backup_id, _ = backed_up
    outside = tmp_path / "outside"
    (outside / "deep").mkdir(parents=True)
    (outside / "b.txt").write_text("not yours")
    import shutil

    shutil.rmtree(data_dir / "sub")
    os.symlink(outside, data_dir / "sub")
    ws.restore(backup_id, include=["sub/b.txt", "sub/deep/c.txt"])
    assert (outside / "b.txt").read_text() == "not yours"
    assert sorted(p.name for p in outside.rglob("*")) == ["b.txt", "deep"]
    assert not (data_dir / "sub").is_symlink()
    assert (data_dir / "sub" / "b.txt").read_text() == "b as backed up"
    ws.undo_restore()
    assert (data_dir / "sub").is_symlink() and os.readlink(data_dir / "sub") == str(outside)
    assert (outside / "b.txt").read_text() == "not yours"
