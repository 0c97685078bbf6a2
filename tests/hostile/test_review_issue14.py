"""Review of issue 14 (browse, diff, query): attacks that found holes, kept as tests."""

from __future__ import annotations

import json
import sqlite3
from contextlib import closing
from pathlib import Path

from tests.hostile.conftest import HostileStore, assert_clean_failure
from tests.hostile.test_restore_escape import Victim


def _store(tmp_path: Path) -> HostileStore:
    class FileStore:
        url = (tmp_path / "store").as_uri()

    return FileStore()  # type: ignore[return-value]


def test_diff_of_a_database_holding_text_that_is_not_utf8_fails_cleanly(
    tmp_path: Path,
    guarded_home: Path,
    cli,  # type: ignore[no-untyped-def]
) -> None:
    """SQLite keeps text bytes as written (any app, or a key holder, can store invalid
    UTF-8 as TEXT); Python's decoding of such a value escaped the diff as a traceback
    (exit 70 / HTTP 500). Now: one line, exit 1."""
    victim = Victim(tmp_path, _store(tmp_path), cli, guarded_home)
    db = victim.data / "app.db"
    with closing(sqlite3.connect(db, isolation_level=None)) as conn:
        conn.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
        conn.execute("INSERT INTO t VALUES (1, 'fine')")
    first = victim.backup()
    with closing(sqlite3.connect(db, isolation_level=None)) as conn:
        conn.execute("INSERT INTO t VALUES (2, CAST(x'ff80fe' AS TEXT))")
    second = victim.backup()
    for args in (("diff", first, second), ("diff", first, second, "--rows", "--json")):
        refused = victim.run(*args)
        assert_clean_failure(refused, codes=(1,))
        assert "not valid UTF-8" in refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1
    assert json.loads(victim.run("diff", first, first, "--json").stdout)["databases"] == []


def test_a_query_of_large_blobs_is_held_to_the_result_bound(
    tmp_path: Path,
    guarded_home: Path,
    cli,  # type: ignore[no-untyped-def]
) -> None:
    """A blob counted only as the part shown (48 bytes) let a result keep 500 rows of
    256 MiB blobs in memory (the API's default max_rows): the server ran out of
    memory. Blobs now count in full, and SQLite's own heap has a ceiling."""
    victim = Victim(tmp_path, _store(tmp_path), cli, guarded_home)
    with closing(sqlite3.connect(victim.data / "app.db", isolation_level=None)) as conn:
        conn.execute("CREATE TABLE t(id INTEGER PRIMARY KEY)")
    backup_id = victim.backup()
    many_rows = (
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c LIMIT 20) "
        "SELECT zeroblob(20000000) FROM c"
    )
    done = victim.run("sql", backup_id, "app.db", many_rows, "--json")
    assert done.code == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["truncated"] and len(result["rows"]) == 1
    assert result["rows"][0] == [{"blob": 20_000_000, "hex": "00" * 32}]
    one_wide_row = "SELECT " + ", ".join(["zeroblob(250000000)"] * 6)
    refused = victim.run("sql", backup_id, "app.db", one_wide_row)
    assert_clean_failure(refused, codes=(1,))
    assert "out of memory" in refused.stderr
