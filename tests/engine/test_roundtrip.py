"""Back up, list, restore, delete and check on every kind of store (real servers)."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from cloudkeep.direct_io import DIRECT_MIN_BYTES
from cloudkeep.storage.url import open_store
from tests.engine.conftest import folder_state, make_snippets_db, workspace


def test_round_trip_on_every_store(data_dir: Path, store_url: str, tmp_path: Path) -> None:
    ws = workspace(data_dir, store_url)
    first = ws.backup()
    assert first.bytes > 300_000
    assert first.device_name == "laptop" and first.platform == "LINUX"
    assert first.id == f"{first.version}_{first.timestamp}"

    (data_dir / "config" / "app.json").write_text('{"theme": "light"}')
    second = ws.backup()
    assert [b.id for b in ws.list()] == [second.id, first.id]

    ws.restore(first.id, target=tmp_path / "restored", reuse_local=False)  # all from the store
    restored = folder_state(tmp_path / "restored")
    assert restored["config/app.json"] == b'{"theme": "dark"}'
    assert restored["snippets.db"] == folder_state(data_dir)["snippets.db"]
    assert restored["cache/blob.bin"] == (data_dir / "cache" / "blob.bin").read_bytes()
    assert restored["empty.txt"] == b""

    report = ws.check(read_data=True)
    assert report.ok, report.errors
    assert report.backups == 2 and report.bytes_read > 0

    ws.delete(first.id)
    assert [b.id for b in ws.list()] == [second.id]
    assert ws.check(read_data=True).ok
    ws.restore(second.id, target=tmp_path / "again")
    assert folder_state(tmp_path / "again") == folder_state(data_dir)


def test_nothing_in_the_store_is_plaintext(data_dir: Path, tmp_path: Path) -> None:
    marker = "cloudkeep-SECRET-marker-7f3a"
    (data_dir / "notes.txt").write_text(marker * 50)
    store = tmp_path / "store"
    workspace(data_dir, store.as_uri()).backup()
    storage = open_store(store.as_uri())
    for info in storage.list(""):
        content = storage.get(info.name)
        assert marker.encode() not in content
        assert marker.encode("utf-16-le") not in content
        assert b"snippets" not in content or info.name == "config"


def test_live_restore_replaces_the_data_folder_atomically(data_dir: Path, tmp_path: Path) -> None:
    ws = workspace(data_dir, (tmp_path / "store").as_uri())
    before = folder_state(data_dir)
    backup = ws.backup()
    (data_dir / "config" / "app.json").write_text("changed")
    (data_dir / "new-file.txt").write_text("not in the backup")
    changed = folder_state(data_dir)
    info = ws.restore(backup.id)
    assert folder_state(data_dir) == before
    # What the restore replaced is kept, one generation, beside the data: undo swaps it back.
    undo = data_dir.with_name("production.cloudkeep-undo")
    leftovers = [p.name for p in data_dir.parent.iterdir() if ".cloudkeep-" in p.name]
    assert leftovers == [undo.name] and info.undo_path == str(undo)
    assert folder_state(undo) == changed
    assert ws.undo_restore() == undo
    assert folder_state(data_dir) == changed and folder_state(undo) == before


def test_single_sqlite_file_source_restores_into_the_live_file(tmp_path: Path) -> None:
    from tests.engine.conftest import db_state, make_snippets_db

    db = tmp_path / "app" / "only.db"
    make_snippets_db(db, 100)
    ws = workspace(db, (tmp_path / "store").as_uri())
    backup = ws.backup()
    expected = db_state(db)
    make_snippets_db(db, 50, seed=9)  # the app writes more rows afterwards
    assert db_state(db) != expected
    ws.restore(backup.id)
    assert db_state(db) == expected
    ws.restore(backup.id, target=tmp_path / "copy")
    assert db_state(tmp_path / "copy" / "only.db") == expected


def test_unchanged_backup_adds_almost_nothing(data_dir: Path, tmp_path: Path) -> None:
    import time

    store = tmp_path / "store"
    ws = workspace(data_dir, store.as_uri())
    time.sleep(0.2)  # past the racy-timestamp window
    ws.backup()
    size = sum(p.stat().st_size for p in store.rglob("*") if p.is_file())
    ws.backup()
    grown = sum(p.stat().st_size for p in store.rglob("*") if p.is_file()) - size
    assert 0 < grown < 8_000  # one small manifest (plus lock churn, already removed)


def test_page_level_dedup_keeps_small_updates_small(tmp_path: Path) -> None:
    """1% of rows updated at random: the next backup adds a few % of the database."""
    import random
    import sqlite3

    from tests.engine.conftest import make_snippets_db

    data = tmp_path / "data"
    make_snippets_db(data / "big.db", 6000)
    store = tmp_path / "store"
    ws = workspace(data, store.as_uri())
    ws.backup()
    size = sum(p.stat().st_size for p in store.rglob("*") if p.is_file())
    db = sqlite3.connect(data / "big.db")
    rnd = random.Random(4)
    for row in rnd.sample(range(1, 6001), 60):
        db.execute(
            "UPDATE snippets SET embedding=?, updated=? WHERE id=?",
            (rnd.randbytes(1536), 1e9 + row, row),
        )
    db.commit()
    db.close()
    ws.backup()
    added = sum(p.stat().st_size for p in store.rglob("*") if p.is_file()) - size
    db_size = (data / "big.db").stat().st_size
    assert added <= 0.05 * db_size, f"added {added} bytes for a {db_size}-byte database"


@pytest.mark.parametrize("reuse_local", [False, True], ids=["fetched", "reused"])
def test_large_files_restore_exactly_past_the_page_cache(tmp_path: Path, reuse_local: bool) -> None:
    """Large restored files are written with O_DIRECT in whole blocks.

    Content-defined chunks end anywhere, so the runs written here start and end
    off block boundaries; the partial blocks at their ends go through the page
    cache. Repeated content makes one blob land at several places of a file.
    Both ways in: fetched from the store, and taken from the live files.
    """
    root = tmp_path / "production"
    make_snippets_db(root / "snippets.db", 3000)
    (root / "cache").mkdir()
    noise = os.urandom(9 * 1024 * 1024 + 777)  # runs longer than a 4 MiB window
    (root / "cache" / "noise.bin").write_bytes(noise)
    repeated = os.urandom(600_000)
    (root / "cache" / "repeated.bin").write_bytes(repeated * 5 + b"tail")
    (root / "cache" / "just-over.bin").write_bytes(os.urandom(DIRECT_MIN_BYTES + 1))
    (root / "cache" / "just-under.bin").write_bytes(os.urandom(DIRECT_MIN_BYTES - 1))
    assert (root / "snippets.db").stat().st_size > 4 * 1024 * 1024
    ws = workspace(root, (tmp_path / "store").as_uri())
    backup = ws.backup()
    info = ws.restore(backup.id, target=tmp_path / "restored", reuse_local=reuse_local)
    assert folder_state(tmp_path / "restored") == folder_state(root)
    assert (info.reused_bytes > 0) == reuse_local
    assert info.reused_bytes + info.fetched_bytes == backup.bytes
    snippets = tmp_path / "restored" / "snippets.db"
    assert snippets.read_bytes()[:16] == b"SQLite format 3\x00"
    assert snippets.stat().st_size == (root / "snippets.db").stat().st_size


def test_restore_takes_from_the_live_data_only_what_still_matches(tmp_path: Path) -> None:
    """A restore fetches only the chunks the live files no longer hold at their place.

    After the backup the live data changes every way it can: rows updated (pages
    change in place), a file grown at its start (every later chunk shifts), cut
    short, overwritten in the middle, deleted, turned into a symlink or a FIFO, or
    into a folder. Whatever is taken from the live data must match the backup's
    keyed ids, so the restore equals the backup exactly, in place as into a target.
    """
    root = tmp_path / "production"
    make_snippets_db(root / "snippets.db", 3000, wal=False)
    (root / "cache").mkdir()
    files = {name: os.urandom(3 * 1024 * 1024 + 4321) for name in "abcdefg"}
    for name, content in files.items():
        (root / "cache" / f"{name}.bin").write_bytes(content)
    ws = workspace(root, (tmp_path / "store").as_uri())
    backup = ws.backup()
    expected = folder_state(root)
    db_bytes = (root / "snippets.db").stat().st_size

    db = sqlite3.connect(root / "snippets.db")
    db.execute("UPDATE snippets SET body = upper(body) WHERE id % 50 = 0")
    db.commit()
    db.close()
    cache = root / "cache"
    (cache / "a.bin").write_bytes(b"shifted" + files["a"])
    (cache / "b.bin").write_bytes(files["b"][:1_000_000])
    middle = bytearray(files["c"])
    middle[1_500_000:1_600_000] = os.urandom(100_000)
    (cache / "c.bin").write_bytes(middle)
    (cache / "d.bin").unlink()
    (cache / "e.bin").unlink()
    (cache / "e.bin").symlink_to(root / "snippets.db")
    (cache / "f.bin").unlink()
    os.mkfifo(cache / "f.bin")  # never opened for reading: the restore must not hang on it
    (cache / "g.bin").unlink()
    (cache / "g.bin").mkdir()

    into_target = ws.restore(backup.id, target=tmp_path / "restored")
    assert folder_state(tmp_path / "restored") == expected
    # Nearly all the database is still in place; nothing of the moved or replaced files is.
    assert into_target.reused_bytes > 0.8 * db_bytes
    assert into_target.fetched_bytes >= sum(len(files[name]) for name in "adefg")
    assert into_target.reused_bytes + into_target.fetched_bytes == backup.bytes

    in_place = ws.restore(backup.id)
    assert folder_state(root) == expected
    assert in_place.reused_bytes == into_target.reused_bytes


def test_restored_database_equals_the_backup_even_when_the_live_copy_lies(
    tmp_path: Path,
) -> None:
    """The comparison itself is tested: a live database corrupted in place with bytes of
    equal length keeps its integrity, row count and total body length, so the old
    measure (those three) called it equal to the backup; ``db_state`` does not. A
    restore that takes chunks from that live copy must check each against its id and
    fetch the corrupted one, so the restored database equals the backup's, value for
    value."""
    from tests.engine.conftest import db_state

    def old_measure(path: Path) -> tuple[str, int, int]:
        db = sqlite3.connect(path)
        try:
            check = db.execute("PRAGMA integrity_check").fetchone()[0]
            count, total = db.execute("SELECT count(*), sum(length(body)) FROM snippets").fetchone()
            return check, count, total
        finally:
            db.close()

    root = tmp_path / "production"
    make_snippets_db(root / "snippets.db", 2000, wal=False)
    ws = workspace(root, (tmp_path / "store").as_uri())
    backup = ws.backup()
    expected = db_state(root / "snippets.db")
    expected_measure = old_measure(root / "snippets.db")

    raw = bytearray((root / "snippets.db").read_bytes())
    at = raw.index(b"return", len(raw) // 2)
    raw[at : at + 6] = b"RETURN"  # a row's text, same length: no header or b-tree touched
    (root / "snippets.db").write_bytes(raw)
    assert old_measure(root / "snippets.db") == expected_measure  # blind to it
    assert db_state(root / "snippets.db") != expected  # sees it

    info = ws.restore(backup.id, target=tmp_path / "restored")
    assert info.reused_bytes > 0 and info.fetched_bytes > 0
    assert db_state(tmp_path / "restored" / "snippets.db") == expected
    ws.restore(backup.id)
    assert db_state(root / "snippets.db") == expected
