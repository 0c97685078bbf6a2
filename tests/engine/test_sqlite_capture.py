"""The in-place capture equals SQLite's own view of the same read transaction."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cloudkeep.backups import sqlite_capture
from tests.engine.test_live_sqlite import WRITER, _make_bank

# Header bytes the backup API rewrites in its copy: file change counter, schema cookie
# (bumped to invalidate the destination's cached schema), version-valid-for.
REWRITTEN = (range(24, 28), range(40, 44), range(92, 96))


@pytest.fixture(autouse=True)
def _in_place_forced(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests are about the in-place strategy: on even where the platform
    switches it off (CLOUDKEEP_PORTABLE=1, Windows)."""
    monkeypatch.setenv("CLOUDKEEP_SQLITE_CAPTURE", "in-place")


def _same_except_counters(image: bytes, reference: bytes, page_size: int) -> list[int]:
    differing = []
    for number in range(max(len(image), len(reference)) // page_size):
        a = image[number * page_size : (number + 1) * page_size]
        b = reference[number * page_size : (number + 1) * page_size]
        if number == 0 and len(a) == len(b):
            a, b = bytearray(a), bytearray(b)
            for span in REWRITTEN:
                for i in span:
                    a[i] = b[i] = 0
        if a != b:
            differing.append(number + 1)
    return differing


@pytest.mark.parametrize("journal_mode", ["wal", "delete"])
def test_in_place_capture_matches_what_sqlite_sees(tmp_path: Path, journal_mode: str) -> None:
    db = tmp_path / "bank.db"
    _make_bank(db, journal_mode)
    stop = tmp_path / "stop"
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(db), journal_mode, str(stop)],
        stdout=subprocess.PIPE,
        text=True,
    )
    captured = attempts = 0
    try:
        time.sleep(0.3)
        # A commit between two samples of the shm header sends an attempt to the fallback;
        # on a loaded 2-core CI machine that happens more often, so try until enough
        # in-place captures were compared rather than a fixed number of times.
        while captured < 8 and attempts < 60:
            attempts += 1
            files = sqlite_capture._Descriptors(db)
            try:
                found = sqlite_capture._in_place(db, 64, files)
                if found is None:
                    continue
                reader, capture = found
                blocks = []
                for block in capture.blocks:
                    blocks.append(block)
                    time.sleep(0.005)  # slow reader: checkpoints and commits run meanwhile
                image = b"".join(blocks)
                reference_path = tmp_path / "reference.db"
                reference_path.unlink(missing_ok=True)
                target = sqlite3.connect(reference_path)
                reader.backup(target)  # the same read transaction, copied by SQLite itself
                target.close()
                reader.close()
            finally:
                files.close()
            reference = reference_path.read_bytes()
            assert _same_except_counters(image, reference, capture.page_size) == []
            captured += 1
    finally:
        stop.touch()
        writer.communicate(timeout=60)
    assert captured >= 6, f"in-place path taken {captured} times in {attempts} attempts"


def test_capture_never_modifies_the_database_files(tmp_path: Path) -> None:
    """A read-only reader: no checkpoint, no WAL deletion, no change of mtime."""
    db = tmp_path / "app.db"
    _make_bank(db, "wal")
    writer = sqlite3.connect(db)
    writer.execute("INSERT INTO ledger VALUES (999999, x'00')")
    writer.commit()  # leaves frames in the WAL, as a running app does
    before = {p.name: (p.stat().st_mtime_ns, p.stat().st_size) for p in (db, Path(f"{db}-wal"))}
    with sqlite_capture.consistent_pages(db, tmp_path / "scratch", 1 << 20) as capture:
        assert capture.method == "in-place"
        assert sum(len(b) for b in capture.blocks) > 0
    after = {p.name: (p.stat().st_mtime_ns, p.stat().st_size) for p in (db, Path(f"{db}-wal"))}
    writer.close()
    assert before == after


def test_backup_api_fallback_gives_the_same_database(tmp_path: Path, monkeypatch) -> None:
    import os

    db = tmp_path / "app.db"
    _make_bank(db, "wal")
    stamp = time.time_ns() - 10**9
    os.utime(db, ns=(stamp, stamp))  # settled: the in-place path may vouch for it
    images = {}
    for method in ("in-place", "backup-api"):
        monkeypatch.setenv("CLOUDKEEP_SQLITE_CAPTURE", method)
        with sqlite_capture.consistent_pages(db, tmp_path / "scratch", 1 << 20) as capture:
            assert capture.method == method
            images[method] = b"".join(capture.blocks)
    assert _same_except_counters(images["in-place"], images["backup-api"], 4096) == []


def test_closed_wal_database_is_read_without_creating_companions(tmp_path: Path) -> None:
    """An app that closed cleanly leaves no -wal/-shm: reading must not create them."""
    import os

    db = tmp_path / "closed.db"
    _make_bank(db, "wal")
    assert not Path(f"{db}-wal").exists()
    stamp = time.time_ns() - 10**9
    os.utime(db, ns=(stamp, stamp))
    with sqlite_capture.consistent_pages(db, tmp_path / "scratch", 1 << 20) as capture:
        image = b"".join(capture.blocks)
        assert capture.method == "in-place"
    assert image == db.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("closed")) == [
        "closed.db"
    ]


def test_a_file_that_changes_during_an_optimistic_read_is_reported_torn(tmp_path: Path) -> None:
    import os

    db = tmp_path / "closed.db"
    _make_bank(db, "wal")
    stamp = time.time_ns() - 10**9
    os.utime(db, ns=(stamp, stamp))
    with (
        pytest.raises(sqlite_capture.CaptureTorn),
        sqlite_capture.consistent_pages(db, tmp_path / "scratch", 4096) as capture,
    ):
        for number, _block in enumerate(capture.blocks):
            if number == 1:
                os.utime(db)  # as a checkpoint by an app that just opened it would
