"""Backups of a database that another process keeps writing are consistent images."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from tests.engine.conftest import workspace

WRITER = textwrap.dedent(
    """
    import random, sqlite3, sys, time
    db = sqlite3.connect(sys.argv[1], timeout=30, isolation_level=None)
    db.execute("PRAGMA journal_mode=" + sys.argv[2])
    rnd = random.Random(1)
    n = 0
    deadline = time.monotonic() + 300
    stop = sys.argv[3]
    import os
    while time.monotonic() < deadline and not os.path.exists(stop):
        db.execute("BEGIN IMMEDIATE")
        a, b = rnd.sample(range(100), 2)
        amount = rnd.randint(1, 50)
        db.execute("UPDATE accounts SET balance = balance - ? WHERE id = ?", (amount, a))
        db.execute("UPDATE accounts SET balance = balance + ? WHERE id = ?", (amount, b))
        n += 1
        db.execute("INSERT INTO ledger(seq, payload) VALUES (?, ?)", (n, rnd.randbytes(700)))
        db.execute("COMMIT")
    print(n)
    """
)


def _make_bank(path: Path, journal_mode: str) -> None:
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA journal_mode={journal_mode}")
    db.execute("CREATE TABLE accounts(id INTEGER PRIMARY KEY, balance INTEGER)")
    db.execute("CREATE TABLE ledger(seq INTEGER PRIMARY KEY, payload BLOB)")
    db.executemany("INSERT INTO accounts VALUES (?, 1000)", [(i,) for i in range(100)])
    db.executemany("INSERT INTO ledger VALUES (?, zeroblob(2000))", [(-i,) for i in range(3000)])
    db.commit()
    db.close()


def _assert_consistent(path: Path) -> int:
    db = sqlite3.connect(path)
    try:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        # Invariants planted by the writer: money is conserved in every transaction, and
        # the ledger has no gaps (a torn copy would break one or the other).
        assert db.execute("SELECT sum(balance) FROM accounts").fetchone()[0] == 100_000
        count, top = db.execute(
            "SELECT count(*), coalesce(max(seq), 0) FROM ledger WHERE seq > 0"
        ).fetchone()
        assert count == top
        return top
    finally:
        db.close()


def _backup_while_writing(tmp_path: Path, journal_mode: str) -> None:
    data = tmp_path / "data"
    data.mkdir()
    _make_bank(data / "bank.db", journal_mode)
    ws = workspace(data, (tmp_path / "store").as_uri())
    stop = tmp_path / "stop-writing"
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(data / "bank.db"), journal_mode, str(stop)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(0.3)
        backups = []
        for _ in range(3):  # each one while the writer is committing
            assert writer.poll() is None
            backups.append(ws.backup())
            time.sleep(0.2)
    finally:
        stop.touch()
        out, _ = writer.communicate(timeout=60)
    assert writer.returncode == 0 and int(out) > 0
    seen = []
    for number, backup in enumerate(backups):
        target = tmp_path / f"restored-{number}"
        ws.restore(backup.id, target=target)
        seen.append(_assert_consistent(target / "bank.db"))
        assert not (target / "bank.db-wal").exists()
    assert seen == sorted(seen) and seen[-1] > 0  # later backups hold later moments
    assert ws.check(read_data=True).ok


def test_wal_database_under_a_live_writer(tmp_path: Path) -> None:
    _backup_while_writing(tmp_path, "wal")


def test_rollback_journal_database_under_a_live_writer(tmp_path: Path) -> None:
    _backup_while_writing(tmp_path, "delete")
