"""diff_database on real SQLite files, always checked against sqldiff."""

from __future__ import annotations

import random
import shutil
import sqlite3
from collections.abc import Callable
from pathlib import Path

import apsw
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from local_side import Reads, local_side
from sqldiff_anchor import sqldiff

from cloudkeep.backups import btree
from cloudkeep.backups.diff import DatabaseDiff, diff_database


def _agree(a: Path, b: Path, result: DatabaseDiff) -> None:
    """Our per-table counts are sqldiff's, table for table."""
    expected = sqldiff(a, b)
    ours = {t.name: t for t in result.tables}
    assert set(ours) == set(expected), (ours, expected)
    for name, counts in expected.items():
        table = ours[name]
        assert (table.added, table.removed, table.changed) == (
            counts.added,
            counts.removed,
            counts.changed,
        ), name
        if "created" in counts.schema and "mismatch" not in counts.schema:
            assert table.schema == "added"
        if counts.schema == {"dropped"}:
            assert table.schema == "removed"
        if "mismatch" in counts.schema:
            assert table.schema == "incompatible"


def _pair(
    tmp_path: Path,
    build: Callable[[sqlite3.Connection], None],
    change: Callable[[sqlite3.Connection], None],
) -> tuple[Path, Path]:
    a, b = tmp_path / "a.db", tmp_path / "b.db"
    conn = sqlite3.connect(a, isolation_level=None)
    conn.execute("PRAGMA synchronous = OFF")
    build(conn)
    conn.close()
    shutil.copyfile(a, b)
    conn = sqlite3.connect(b, isolation_level=None)
    conn.execute("PRAGMA synchronous = OFF")
    change(conn)
    conn.close()
    return a, b


def _notes(rows: int = 3000, body: int = 200) -> Callable[[sqlite3.Connection], None]:
    def build(conn: sqlite3.Connection) -> None:
        rnd = random.Random(1)
        conn.execute("CREATE TABLE notes(id INTEGER PRIMARY KEY, title TEXT, body TEXT)")
        conn.execute("CREATE INDEX notes_title ON notes(title)")
        conn.execute("CREATE TABLE tags(name TEXT PRIMARY KEY, n INTEGER) WITHOUT ROWID")
        conn.execute("CREATE TABLE plain(a, b)")
        conn.execute("BEGIN")
        conn.executemany(
            "INSERT INTO notes VALUES(?, ?, ?)",
            [(i, f"note {i}", "x" * rnd.randint(1, body)) for i in range(1, rows + 1)],
        )
        conn.executemany("INSERT INTO tags VALUES(?, ?)", [(f"tag{i}", i) for i in range(500)])
        conn.executemany("INSERT INTO plain VALUES(?, ?)", [(i, str(i)) for i in range(500)])
        conn.execute("COMMIT")

    return build


def _diff(a: Path, b: Path, rows: bool = False, reads: Reads | None = None) -> DatabaseDiff:
    return diff_database("db", local_side(a, reads), local_side(b, reads), rows=rows)


def test_small_changes_read_only_what_differs(tmp_path: Path) -> None:
    def change(conn: sqlite3.Connection) -> None:
        conn.execute("UPDATE notes SET body = 'changed' WHERE id IN (5, 1700)")
        conn.execute("DELETE FROM notes WHERE id = 2900")
        conn.execute("INSERT INTO notes VALUES(5000, 'new', 'y')")
        conn.execute("UPDATE tags SET n = -1 WHERE name = 'tag7'")
        conn.execute("DELETE FROM plain WHERE a = 3")

    a, b = _pair(tmp_path, _notes(), change)
    reads = Reads()
    result = _diff(a, b, rows=True, reads=reads)
    _agree(a, b, result)
    assert result.method == "pages", result.reason
    notes = next(t for t in result.tables if t.name == "notes")
    assert notes.method == "pages" and notes.ranges >= 1
    assert notes.rows is not None
    assert {row["key"] for row in notes.rows.changed} == {5, 1700}
    assert notes.rows.changed[0]["columns"]["body"]["b"] == "changed"
    assert [row["key"] for row in notes.rows.added] == [5000]
    assert [row["key"] for row in notes.rows.removed] == [2900]
    # The structure walk reads interior pages and the differing pages, not the database.
    assert reads.bytes < (a.stat().st_size + b.stat().st_size) / 4


def test_overflow_rows(tmp_path: Path) -> None:
    def change(conn: sqlite3.Connection) -> None:
        conn.execute("UPDATE notes SET body = body || 'tail' WHERE id % 97 = 0")
        conn.execute("DELETE FROM notes WHERE id % 101 = 0")
        conn.execute("INSERT INTO notes VALUES(99999, 'big', ?)", ("z" * 50_000,))

    a, b = _pair(tmp_path, _notes(rows=400, body=20_000), change)
    result = _diff(a, b)
    _agree(a, b, result)


def test_overflow_rewritten_in_place_under_an_identical_leaf(tmp_path: Path) -> None:
    """A same-size update rewrites the overflow pages in place; the leaf keeps its bytes:
    the differing overflow page belongs to no compared row, so the tables are compared
    in full, and the change is found."""

    def build(conn: sqlite3.Connection) -> None:
        conn.execute("PRAGMA page_size = 8192")  # one page per chunk
        conn.execute("CREATE TABLE blobs(id INTEGER PRIMARY KEY, v BLOB)")
        conn.executemany("INSERT INTO blobs VALUES(?, ?)", [(i, bytes(20_000)) for i in range(50)])

    def change(conn: sqlite3.Connection) -> None:
        conn.execute("UPDATE blobs SET v = ? WHERE id = 17", (bytes(19_999) + b"\x01",))

    a, b = _pair(tmp_path, build, change)
    result = _diff(a, b)
    _agree(a, b, result)
    assert result.method == "full" and "overflow" in result.reason
    assert [(t.name, t.changed) for t in result.tables] == [("blobs", 1)]


def test_schema_changes(tmp_path: Path) -> None:
    def change(conn: sqlite3.Connection) -> None:
        conn.execute("ALTER TABLE plain ADD COLUMN c")
        conn.execute("UPDATE plain SET c = 1 WHERE a < 3")
        # A default is read on B's unchanged pages too: every row changed, as sqldiff says.
        conn.execute("ALTER TABLE notes ADD COLUMN d DEFAULT 7")
        conn.execute("CREATE TABLE fresh(x)")
        conn.execute("INSERT INTO fresh VALUES (1), (2)")
        conn.execute("DROP TABLE tags")
        conn.execute("CREATE INDEX plain_b ON plain(b)")

    a, b = _pair(tmp_path, _notes(rows=3000), change)
    result = _diff(a, b)
    _agree(a, b, result)
    assert {c["name"]: c["change"] for c in result.schema} == {
        "fresh": "added",
        "notes": "altered",
        "plain": "altered",
        "plain_b": "added",
        "tags": "removed",
    }
    assert set(result.schema_changed) == {"fresh", "notes", "plain", "plain_b", "tags"}
    notes = next(t for t in result.tables if t.name == "notes")
    assert (notes.changed, notes.method, notes.reason) == (3000, "full", "columns were added")


def test_incompatible_schema(tmp_path: Path) -> None:
    def change(conn: sqlite3.Connection) -> None:
        conn.execute("DROP TABLE plain")
        conn.execute("CREATE TABLE plain(a, c)")
        conn.execute("INSERT INTO plain VALUES (1, 2)")

    a, b = _pair(tmp_path, _notes(rows=100), change)
    result = _diff(a, b)
    _agree(a, b, result)
    plain = next(t for t in result.tables if t.name == "plain")
    assert (plain.schema, plain.added, plain.removed) == ("incompatible", 1, 500)


def test_vacuum_moves_every_page(tmp_path: Path) -> None:
    def change(conn: sqlite3.Connection) -> None:
        conn.execute("DELETE FROM notes WHERE id % 3 = 0")
        conn.execute("UPDATE notes SET title = 'after' WHERE id = 10")
        conn.execute("VACUUM")

    a, b = _pair(tmp_path, _notes(), change)
    result = _diff(a, b)
    _agree(a, b, result)
    assert result.method == "full"


def test_page_size_change(tmp_path: Path) -> None:
    def change(conn: sqlite3.Connection) -> None:
        conn.execute("PRAGMA page_size = 1024")
        conn.execute("VACUUM")
        conn.execute("DELETE FROM notes WHERE id = 1")

    a, b = _pair(tmp_path, _notes(rows=200), change)
    result = _diff(a, b)
    _agree(a, b, result)
    assert result.method == "full" and "page size" in result.reason


def test_added_and_removed_database(tmp_path: Path) -> None:
    a, _ = _pair(tmp_path, _notes(rows=50), lambda conn: None)
    empty = tmp_path / "empty.db"
    sqlite3.connect(empty).close()
    added = diff_database("db", None, local_side(a), rows=True, max_rows=10)
    _agree(empty, a, added)
    assert added.status == "added"
    notes = next(t for t in added.tables if t.name == "notes")
    assert notes.rows is not None and len(notes.rows.added) == 10 and notes.rows.truncated
    removed = diff_database("db", local_side(a), None)
    _agree(a, empty, removed)
    assert removed.status == "removed"


@pytest.mark.parametrize("seed", range(12))
def test_random_workloads(tmp_path: Path, seed: int) -> None:
    """Random inserts, deletes and updates (small and overflowing) on rowid and WITHOUT
    ROWID tables, in a database with and without auto-vacuum."""
    rnd = random.Random(seed)

    def build(conn: sqlite3.Connection) -> None:
        if seed % 2:
            conn.execute("PRAGMA auto_vacuum = FULL")
        conn.execute("PRAGMA page_size = 1024")
        _notes(rows=1500, body=3000)(conn)

    def change(conn: sqlite3.Connection) -> None:
        conn.execute("BEGIN")
        for _ in range(rnd.randint(1, 60)):
            kind = rnd.random()
            key = rnd.randint(1, 1600)
            if kind < 0.3:
                conn.execute("DELETE FROM notes WHERE id = ?", (key,))
            elif kind < 0.6:
                size = rnd.choice((5, 300, 3000, 9000))
                conn.execute("UPDATE notes SET body = ? WHERE id = ?", ("q" * size, key))
            elif kind < 0.8:
                conn.execute(
                    "INSERT OR REPLACE INTO notes VALUES(?, 'n', ?)",
                    (key + 2000, "r" * rnd.randint(1, 5000)),
                )
            else:
                conn.execute(
                    "UPDATE tags SET n = ? WHERE name = ?", (rnd.random(), f"tag{key % 600}")
                )
        conn.execute("COMMIT")

    a, b = _pair(tmp_path, build, change)
    result = _diff(a, b)
    _agree(a, b, result)
    # Rows updated with new sizes move cells and overflow pages, all accounted for.
    assert result.method == "pages", result.reason
    assert all(t.method == "pages" for t in result.tables if t.name in ("notes", "tags"))


@settings(
    max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    operations=st.lists(
        st.tuples(
            st.sampled_from(["insert", "delete", "update"]),
            st.integers(0, 4000),
            st.integers(0, 1200),
        ),
        min_size=1,
        max_size=40,
    ),
    collate=st.sampled_from(["BINARY", "NOCASE"]),
)
def test_without_rowid_tables(
    tmp_path_factory: pytest.TempPathFactory,
    operations: list[tuple[str, int, int]],
    collate: str,
) -> None:
    """A WITHOUT ROWID table (composite key, entries on interior pages too): the keys
    on its changed pages are looked up on both sides; sqldiff agrees."""
    tmp_path = tmp_path_factory.mktemp("wr")

    def build(conn: sqlite3.Connection) -> None:
        conn.execute("PRAGMA page_size = 1024")
        conn.execute(
            f"CREATE TABLE kv(k TEXT COLLATE {collate}, n INTEGER, v, PRIMARY KEY (k, n)) "
            "WITHOUT ROWID"
        )
        conn.execute("BEGIN")
        conn.executemany(
            "INSERT INTO kv VALUES(?, ?, ?)",
            [(f"key{i % 50}", i, "v" * (i % 90)) for i in range(4000)],
        )
        conn.execute("COMMIT")

    def change(conn: sqlite3.Connection) -> None:
        for kind, number, size in operations:
            if kind == "insert":
                conn.execute(
                    "INSERT OR REPLACE INTO kv VALUES(?, ?, ?)",
                    (f"KEY{number % 50}", number + 1000, "w" * size),
                )
            elif kind == "delete":
                conn.execute("DELETE FROM kv WHERE n = ?", (number,))
            else:
                conn.execute("UPDATE kv SET v = ? WHERE n = ?", ("u" * size, number))

    a, b = _pair(tmp_path, build, change)
    result = _diff(a, b)
    _agree(a, b, result)
    if result.pages_differing <= result.pages / 2:  # else a full comparison, on purpose
        for table in result.tables:
            assert table.method == "pages" or "overflow" in table.reason, table


def test_record_prefix_reads_every_key(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA page_size = 512")
    conn.execute("CREATE TABLE kv(a TEXT, b REAL, c BLOB, v, PRIMARY KEY (b, a, c)) WITHOUT ROWID")
    expected = [(f"é{i}", i / 3, bytes([i % 256]) * (i % 5), "x" * 40) for i in range(600)]
    conn.executemany("INSERT INTO kv VALUES(?, ?, ?, ?)", expected)
    conn.commit()
    (root,) = conn.execute("SELECT rootpage FROM sqlite_schema WHERE name = 'kv'").fetchone()
    conn.close()
    data = path.read_bytes()
    header = btree.parse_header(data[:100])

    def read(pgno: int) -> bytes:
        return data[(pgno - 1) * 512 : pgno * 512]

    shape = btree.tree_shape(read, root, len(data) // 512)
    keys = set()
    for pgno in shape.interior | set(shape.leaves):
        page = btree.parse_page(read(pgno), pgno)
        for cell in page.cells:
            key = btree.record_prefix(read(pgno), page.kind, cell, header.usable, 3, 1)
            keys.add(key)
    assert shape.interior  # entries on interior pages are read too
    assert keys == {(b, a, c) for a, b, c, _ in expected}


def test_a_damaged_page_is_an_error_not_a_wrong_answer(tmp_path: Path) -> None:
    """Store data is untrusted: a b-tree page that does not parse sends the plan to a
    full comparison, where SQLite itself refuses the damaged database."""

    def change(conn: sqlite3.Connection) -> None:
        conn.execute("UPDATE notes SET title = 'x' WHERE id = 1")

    a, b = _pair(tmp_path, _notes(), change)
    conn = sqlite3.connect(b)
    (root,) = conn.execute("SELECT rootpage FROM sqlite_schema WHERE name = 'notes'").fetchone()
    conn.close()
    data = bytearray(b.read_bytes())
    size = btree.parse_header(bytes(data[:100])).page_size
    data[(root - 1) * size] = 0x42  # not a b-tree page type
    b.write_bytes(bytes(data))
    with pytest.raises(apsw.Error):
        _diff(a, b)
