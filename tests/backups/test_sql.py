"""backups.sql through Workspace.database on a real backup: queries answer as SQLite does on
the source, only the pages read are fetched, anything but reading is refused, a runaway
query stops at its time limit, results are bounded, and a path that is no database says so."""

from __future__ import annotations

import random
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from cloudkeep.backups.sql import json_value
from cloudkeep.errors import DatabaseNotFound, NotADatabase, QueryRefused, QueryTimeout
from cloudkeep.settings import Settings
from cloudkeep.workspace import Workspace

PASSPHRASE = "sql passphrase"
ROWS = 4000


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("CLOUDKEEP_CONFIG_DIR", str(home / "config"))
    monkeypatch.setenv("CLOUDKEEP_CACHE_DIR", str(home / "cache"))


def make_snippets(path: Path, rows: int) -> None:
    rnd = random.Random(7)
    db = sqlite3.connect(path)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute(
        "CREATE TABLE snippets(id INTEGER PRIMARY KEY, body TEXT, embedding BLOB, score REAL)"
    )
    db.execute("CREATE INDEX snippets_score ON snippets(score)")
    db.executemany(
        "INSERT INTO snippets(body, embedding, score) VALUES (?, ?, ?)",
        [
            (f"snippet {n} " + "x" * rnd.randint(10, 400), rnd.randbytes(512), n / 7)
            for n in range(rows)
        ],
    )
    db.commit()
    db.close()


@dataclass
class Backed:
    ws: Workspace
    backup_id: str
    data: Path


@pytest.fixture
def backed(tmp_path: Path) -> Backed:
    data = tmp_path / "data"
    (data / "sub").mkdir(parents=True)
    make_snippets(data / "snippets.db", ROWS)
    with sqlite3.connect(data / "sub" / "small.db") as db:
        db.execute("CREATE TABLE t(a)")
        db.execute("INSERT INTO t VALUES (1)")
    db.close()
    (data / "notes.txt").write_text("not a database\n" * 100)
    settings = Settings.resolve(data=data, store=(tmp_path / "store").as_uri(), device_name="d")
    ws = Workspace(Settings(**{**settings.__dict__, "passphrase": PASSPHRASE}))
    return Backed(ws, ws.backup().id, data)


@pytest.fixture
def snippets(backed: Backed) -> Iterator:  # type: ignore[type-arg]
    with backed.ws.database(backed.backup_id, "snippets.db") as db:
        yield db


def source_rows(backed: Backed, sql: str) -> list[tuple[object, ...]]:
    with sqlite3.connect(backed.data / "snippets.db") as db:
        rows = db.execute(sql).fetchall()
    db.close()
    return rows


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT * FROM snippets WHERE id = 1234",
        "SELECT count(*), sum(length(embedding)), max(score) FROM snippets",
        "SELECT id, body FROM snippets WHERE score BETWEEN 100 AND 102 ORDER BY body DESC",
        "SELECT name, type FROM sqlite_schema ORDER BY name",
        "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < 5) "
        "SELECT x, (SELECT body FROM snippets WHERE id = x) FROM n",
    ],
)
def test_queries_answer_as_sqlite_on_the_source(backed: Backed, snippets, sql: str) -> None:  # type: ignore[no-untyped-def]
    result = snippets.query(sql)
    assert result.rows == source_rows(backed, sql)
    assert not result.truncated


def test_columns_come_without_rows_too(snippets) -> None:  # type: ignore[no-untyped-def]
    result = snippets.query("SELECT id, body AS text FROM snippets WHERE 0")
    assert (result.columns, result.rows) == (["id", "text"], [])


def test_a_point_lookup_fetches_a_small_part_of_the_database(backed: Backed) -> None:
    size = (backed.data / "snippets.db").stat().st_size
    with backed.ws.database(backed.backup_id, "snippets.db") as db:
        assert db.query("SELECT body FROM snippets WHERE id = 3000").rows
        assert 0 < db.reader.fetched_bytes < size / 3


def test_reading_pragmas_are_allowed(snippets) -> None:  # type: ignore[no-untyped-def]
    assert snippets.query("PRAGMA table_info(snippets)").rows[1][1] == "body"
    assert snippets.query("PRAGMA integrity_check").rows == [("ok",)]
    assert snippets.query("SELECT name FROM pragma_index_list('snippets')").rows == [
        ("snippets_score",)
    ]
    assert snippets.tables() == ["snippets"]
    assert any("CREATE INDEX" in sql for sql in snippets.schema("SNIPPETS"))


@pytest.mark.parametrize(
    "sql",
    [
        "INSERT INTO snippets(body) VALUES ('x')",
        "UPDATE snippets SET body = 'x'",
        "DELETE FROM snippets",
        "DROP TABLE snippets",
        "CREATE TABLE t(a)",
        "CREATE TEMP TABLE t(a)",
        "CREATE TEMP VIEW v AS SELECT 1",
        "ALTER TABLE snippets ADD COLUMN c",
        "PRAGMA user_version = 5",
        "PRAGMA journal_mode = DELETE",
        "PRAGMA temp_store = FILE",
        "PRAGMA writable_schema = ON",
        "REINDEX",
        "ANALYZE",
        "VACUUM",
        "BEGIN",
        "SELECT load_extension('libc.so.6')",
    ],
)
def test_anything_but_reading_is_refused(snippets, sql: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(QueryRefused, match="authoriz"):
        snippets.query(sql)
    assert snippets.query("SELECT count(*) FROM snippets").rows == [(ROWS,)]


def test_bad_sql_and_several_statements_are_refused(snippets) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(QueryRefused, match="syntax error"):
        snippets.query("SELEC 1")
    with pytest.raises(QueryRefused, match="no such table"):
        snippets.query("SELECT * FROM missing")
    with pytest.raises(QueryRefused, match="one statement"):
        snippets.query("SELECT 1; SELECT 2")
    assert snippets.query("SELECT 1;  -- a comment").rows == [(1,)]


def test_a_runaway_query_stops_at_its_time_limit(snippets) -> None:  # type: ignore[no-untyped-def]
    runaway = "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n) SELECT max(x) FROM n"
    with pytest.raises(QueryTimeout, match=r"longer than 0\.2 seconds"):
        snippets.query(runaway, time_limit=0.2)
    assert snippets.query("SELECT 1").rows == [(1,)]  # the connection still answers


def test_results_are_bounded(snippets) -> None:  # type: ignore[no-untyped-def]
    result = snippets.query("SELECT id FROM snippets ORDER BY id", max_rows=10)
    assert (result.rows, result.truncated) == ([(n,) for n in range(1, 11)], True)
    capped = snippets.query("SELECT body FROM snippets", max_bytes=10_000)
    assert capped.truncated and 0 < len(capped.rows) < ROWS
    exact = snippets.query("SELECT id FROM snippets WHERE id <= 10", max_rows=10)
    assert not exact.truncated


def test_values_become_json(snippets) -> None:  # type: ignore[no-untyped-def]
    (row,) = snippets.query("SELECT embedding, 1e999, -1e999, 2.5, NULL FROM snippets LIMIT 1").rows
    blob, *rest = (json_value(value) for value in row)
    assert blob == {"blob": 512, "hex": row[0][:32].hex()}
    assert rest == ["inf", "-inf", 2.5, None]


def test_choosing_the_database(backed: Backed) -> None:
    ws, backup_id = backed.ws, backed.backup_id
    assert [(e.path, e.sqlite) for e in ws.databases(backup_id)] == [
        ("snippets.db", True),
        ("sub/small.db", True),
    ]
    with pytest.raises(DatabaseNotFound, match=r"holds 2 databases; name one: 'snippets.db'"):
        ws.database(backup_id).__enter__()
    with ws.database(backup_id, largest=True) as db:
        assert db.entry.path == "snippets.db"
    with ws.database(backup_id, "./sub/small.db") as db:
        assert db.query("SELECT a FROM t").rows == [(1,)]
    with pytest.raises(DatabaseNotFound, match=r"no database 'nope\.db'"):
        ws.database(backup_id, "nope.db").__enter__()
    with pytest.raises(NotADatabase, match=r"'notes\.txt' .* is not a SQLite database"):
        ws.database(backup_id, "notes.txt").__enter__()
    with pytest.raises(NotADatabase):
        ws.database(backup_id, "sub").__enter__()
