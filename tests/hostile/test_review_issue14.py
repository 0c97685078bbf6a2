"""Review of issue 14 (browse, diff, query): attacks that found holes, kept as tests."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path

import pytest

from tests.hostile.conftest import HostileStore, assert_clean_failure
from tests.hostile.test_restore_escape import Victim
from tests.hostile.test_server import StartServer
from tests.hostile.test_server import start_server as start_server  # the fixture


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


def _wal_of(base: Path, work: Path) -> bytes:
    """A write-ahead log adding the row 'forged' to a copy of the database ``base``."""
    copy = work / "forge.db"
    shutil.copyfile(base, copy)
    conn = sqlite3.connect(copy, isolation_level=None)
    try:
        conn.execute("PRAGMA wal_autocheckpoint = 0")
        conn.execute("INSERT INTO t VALUES ('forged')")
        return (work / "forge.db-wal").read_bytes()  # before close checkpoints it
    finally:
        conn.close()


def test_a_log_without_its_database_is_not_restored_beside_a_live_one(
    tmp_path: Path,
    guarded_home: Path,
    cli,  # type: ignore[no-untyped-def]
) -> None:
    """A backup holding ``sub/notes.db-wal`` but not ``sub/notes.db`` (a key holder's
    forgery, or a stale log backed up alone): restoring ``sub`` in place put the log
    beside the live ``notes.db``, and SQLite replayed it onto that database on its next
    open (a forged row in the user's data). Now refused before anything is fetched."""
    victim = Victim(tmp_path, _store(tmp_path), cli, guarded_home)
    work = tmp_path / "work"
    work.mkdir()
    base = work / "notes.db"
    with closing(sqlite3.connect(base, isolation_level=None)) as conn:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("CREATE TABLE t(v TEXT)")
        conn.execute("INSERT INTO t VALUES ('mine')")
    sub = victim.data / "sub"
    sub.mkdir()
    (sub / "notes.db-wal").write_bytes(_wal_of(base, work))
    (sub / "readme.txt").write_text("hello")
    backup_id = victim.backup()
    (sub / "notes.db-wal").unlink()
    shutil.copyfile(base, sub / "notes.db")
    for include in ("sub", "sub/notes.db-wal"):
        refused = victim.run("restore", backup_id, "--include", include, "--force")
        assert_clean_failure(refused, codes=(1,))
        assert "does not hold its database 'sub/notes.db'" in refused.stderr
        assert not (sub / "notes.db-wal").exists()
    with closing(sqlite3.connect(sub / "notes.db")) as conn:
        assert conn.execute("SELECT v FROM t").fetchall() == [("mine",)]
    target = tmp_path / "elsewhere"
    done = victim.run("restore", backup_id, "--include", "sub", "--target", str(target))
    assert done.code == 0, done.stderr
    assert (target / "sub" / "notes.db-wal").is_file()


def test_queries_sqlite_cannot_take_are_refused_not_crashes(
    tmp_path: Path,
    guarded_home: Path,
    cli,  # type: ignore[no-untyped-def]
) -> None:
    """A NUL (apsw: ValueError) or a lone surrogate (UnicodeEncodeError: bytes of a
    command line that are not UTF-8) in a query escaped as a traceback, exit 70."""
    victim = Victim(tmp_path, _store(tmp_path), cli, guarded_home)
    with closing(sqlite3.connect(victim.data / "app.db", isolation_level=None)) as conn:
        conn.execute("CREATE TABLE t(id INTEGER PRIMARY KEY)")
    backup_id = victim.run("backup", "--json")
    assert backup_id.code == 0, backup_id.stderr
    refused = victim.run("sql", json.loads(backup_id.stdout)["id"], "app.db", "SELECT '\udcff'")
    assert_clean_failure(refused, codes=(1,))
    assert "not valid Unicode text" in refused.stderr


def test_the_api_refuses_odd_text_in_queries_and_paths(
    start_server: StartServer, guarded_home: Path
) -> None:
    server = start_server()
    with server.http() as http:
        created = http.post("/backups/create")
        assert created.status_code == 200, created.text
        backup_id = created.json()["id"]
        for query in ("SELECT 1\\u0000; SELECT 2", "SELECT '\\ud800'"):
            answer = http.post(
                f"/cloudkeep/backups/{backup_id}/sql",
                content=f'{{"query": "{query}"}}'.encode(),
                headers={"content-type": "application/json"},
            )
            assert answer.status_code in (400, 422), (query, answer.status_code, answer.text)
        for route, params in (
            (f"/cloudkeep/backups/{backup_id}/files", "path=%ff%fe"),
            (f"/cloudkeep/backups/{backup_id}/file", "path=%ed%a0%80"),
            ("/cloudkeep/find", "pattern=%ff*"),
            ("/cloudkeep/diff", f"a={backup_id}&b=%ff"),
        ):
            answer = http.get(f"{route}?{params}")
            assert answer.status_code < 500, (route, answer.status_code, answer.text)
    assert "Traceback" not in server.stderr()


def test_names_that_are_not_utf8_reach_the_api_as_json(
    start_server: StartServer, guarded_home: Path, tmp_path: Path
) -> None:
    """A file name that is not UTF-8 (a Linux name, kept as Python keeps it: lone
    surrogates) is backed up as it is; every route showing backup paths must answer
    it as JSON, as the backups list does, never 500 (a response model rendered by
    Starlette encodes strictly)."""
    server = start_server()
    data = tmp_path / "server-0" / "data"
    assert (data / "notes.db").is_file()
    with server.http() as http:
        first = http.post("/backups/create").json()["id"]
        (data / os.fsdecode(b"\xff-odd.txt")).write_bytes(b"odd")
        second = http.post("/backups/create").json()["id"]
        answer = http.get("/cloudkeep/diff", params={"a": first, "b": second})
        assert answer.status_code == 200, answer.text
        assert [c["path"] for c in answer.json()["files"]["added"]] == ["\\udcff-odd.txt"]
        listed = http.get(f"/cloudkeep/backups/{second}/files")
        assert listed.status_code == 200, listed.text
        found = http.get("/cloudkeep/find", params={"pattern": "*odd*"})
        assert found.status_code == 200, found.text
        name = os.fsdecode(b"\xff-odd.db")
        with closing(sqlite3.connect(data / name, isolation_level=None)) as conn:
            conn.execute("CREATE TABLE t(v)")
        third = http.post("/backups/create").json()["id"]
        databases = http.get(f"/cloudkeep/backups/{third}/databases")
        assert databases.status_code == 200, databases.text
        assert "\\udcff-odd.db" in [d["path"] for d in databases.json()["databases"]]
        queried = http.post(
            f"/cloudkeep/backups/{third}/sql",
            json={"database": "notes.db", "query": "SELECT 1"},
        )
        assert queried.status_code == 200, queried.text
    assert "Traceback" not in server.stderr()


@pytest.mark.skipif(sys.platform == "win32", reason="a pseudo-terminal")
def test_dump_does_not_write_a_backups_bytes_to_a_terminal(
    tmp_path: Path,
    guarded_home: Path,
    cli,  # type: ignore[no-untyped-def]
) -> None:
    """A key holder's file holding terminal escape sequences (OSC 52 sets the
    clipboard; older terminals ran more) was written to the user's terminal by
    ``cloudkeep dump ID FILE``. Refused, as restic's dump refuses."""
    import pty

    victim = Victim(tmp_path, _store(tmp_path), cli, guarded_home)
    (victim.data / "evil.txt").write_bytes(b"\x1b]52;c;ZWNobyBwd25lZA==\x07")
    backup_id = victim.backup()
    leader, follower = pty.openpty()
    try:
        done = subprocess.run(
            [sys.executable, "-m", "cloudkeep", "--data", str(victim.data), "--store",
             victim.store.url, "dump", backup_id, "evil.txt"],
            stdout=follower, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
            timeout=120, cwd=tmp_path, check=False,
        )  # fmt: skip
        os.set_blocking(leader, False)
        try:
            shown = os.read(leader, 4096)
        except (BlockingIOError, OSError):
            shown = b""
    finally:
        os.close(leader)
        os.close(follower)
    assert done.returncode == 1, done.stderr
    assert b"stdout is a terminal" in done.stderr and b"\x1b]52" not in shown
    piped = victim.run("dump", backup_id, "evil.txt")
    assert piped.code == 0 and piped.stdout.startswith("\x1b]52")


def test_find_patterns_with_many_wildcards_end(
    tmp_path: Path,
    guarded_home: Path,
    cli,  # type: ignore[no-untyped-def]
) -> None:
    """A pattern of many stars (or many ``**``) became a regular expression whose
    backtracking grew as the name's length to the number of stars: ``find`` (and GET
    /cloudkeep/find, a server thread nobody can stop) ran for hours on one long
    name. Wildcards now match at their first place, atomically, as fnmatch's do."""
    victim = Victim(tmp_path, _store(tmp_path), cli, guarded_home)
    deep = victim.data / "/".join(["a"] * 60)
    deep.mkdir(parents=True)
    (deep / ("a" * 200)).write_text("x")
    backup_id = victim.backup()
    for pattern in ("**/" + "*a" * 20 + "*c", "a/" + "**/a/" * 12 + "**/c", "**/[!b]*a*a*a*a*a*a"):
        found = victim.run("find", pattern, "--json")
        assert found.code == 0, found.stderr
        matches = json.loads(found.stdout)["matches"]
        assert len(matches) == (1 if pattern.startswith("**/[!b]") else 0), pattern
        assert all(match["backup"] == backup_id for match in matches)
