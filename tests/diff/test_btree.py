"""The page parser against real SQLite files: dbstat (SQLite's own page walk) agrees."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import apsw
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cloudkeep.backups import btree


def _pages(path: Path):
    data = path.read_bytes()
    header = btree.parse_header(data[:100])
    size = header.page_size

    def read(pgno: int) -> bytes:
        return data[(pgno - 1) * size : pgno * size]

    return data, header, read, len(data) // size


def _dbstat(path: Path) -> list[tuple[str, int, str]]:
    conn = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        return [tuple(r) for r in conn.execute("SELECT name, pageno, pagetype FROM dbstat")]
    finally:
        conn.close()


def _build(path: Path, rows: list[tuple[int, bytes]], page_size: int, deletes: list[int]) -> None:
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA page_size={page_size}")
    conn.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB)")
    conn.execute("CREATE INDEX t_v ON t(v)")
    conn.execute("CREATE TABLE w(k TEXT PRIMARY KEY, v) WITHOUT ROWID")
    conn.executemany("INSERT OR REPLACE INTO t VALUES(?, ?)", rows)
    conn.executemany("INSERT OR REPLACE INTO w VALUES(?, ?)", [(str(i), v) for i, v in rows])
    conn.executemany("DELETE FROM t WHERE id = ?", [(i,) for i in deletes])
    conn.commit()
    conn.close()


def _check(path: Path) -> None:
    _data, header, read, count = _pages(path)
    stat = _dbstat(path)
    conn = sqlite3.connect(path)
    roots = dict(conn.execute("SELECT name, rootpage FROM sqlite_schema WHERE rootpage > 0"))
    (rowids,) = conn.execute("SELECT count(*) FROM t").fetchone()
    keys = [r for (r,) in conn.execute("SELECT id FROM t ORDER BY id")]
    conn.close()
    roots["sqlite_schema"] = 1
    for name, root in roots.items():
        shape = btree.tree_shape(read, root, count)
        leaves = {p for n, p, kind in stat if n == name and kind == "leaf"}
        interior = {p for n, p, kind in stat if n == name and kind == "internal"}
        if not interior:  # a single-page tree: its root is its only leaf
            assert set(shape.leaves) == {root}
        else:
            assert set(shape.leaves) == leaves
            assert shape.interior == interior
        if name == "t":
            assert shape.table
            # Each leaf's range holds exactly the keys on that leaf.
            found = 0
            for pgno, (low, high) in shape.leaves.items():
                data = read(pgno)
                page = btree.parse_page(data, pgno)
                for cell in page.cells:
                    _, pos = btree.varint(data, cell)
                    key, _ = btree.varint(data, pos)
                    assert low < key <= high
                    found += 1
            assert found == rowids == len(keys)
        # Overflow chains found from the cells are dbstat's overflow pages.
        overflow = {p for n, p, kind in stat if n == name and kind == "overflow"}
        chained: set[int] = set()
        for pgno in shape.interior | set(shape.leaves):
            data = read(pgno)
            page = btree.parse_page(data, pgno)
            for cell in page.cells:
                first, spilled = btree.first_overflow(data, page.kind, cell, header.usable)
                if first:
                    chained.update(btree.overflow_chain(read, first, spilled, header.usable, count))
        assert chained == overflow
    free = btree.freelist(read, header, count)
    assert len(free) == header.freelist_count


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    sizes=st.lists(st.integers(0, 9000), min_size=1, max_size=300),
    page_size=st.sampled_from([512, 1024, 4096, 8192]),
    delete_share=st.floats(0, 0.8),
)
def test_tree_shape_matches_dbstat(
    tmp_path: Path, sizes: list[int], page_size: int, delete_share: float
) -> None:
    path = tmp_path / f"db-{len(sizes)}-{page_size}.sqlite"
    path.unlink(missing_ok=True)
    rows = [(i * 7 + 1, bytes([i % 251]) * size) for i, size in enumerate(sizes)]
    deletes = [key for key, _ in rows[: int(len(rows) * delete_share)]]
    _build(path, rows, page_size, deletes)
    _check(path)


def test_freelist_and_negative_keys(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    rows = [(key, b"x" * 700) for key in range(-(1 << 62), -(1 << 62) + 3000)]
    _build(path, rows, 1024, [key for key, _ in rows[::2]])
    _check(path)
    assert btree.parse_header(path.read_bytes()[:100]).freelist_count > 0


def test_malformed_pages_raise() -> None:
    with pytest.raises(btree.MalformedPage):
        btree.parse_header(b"not a database" + bytes(100))
    with pytest.raises(btree.MalformedPage):
        btree.parse_page(b"\x07" + bytes(511), 2)
    page = bytearray(512)
    page[0] = btree.TABLE_LEAF
    page[3:5] = (200).to_bytes(2, "big")  # 200 cell pointers do not fit in the page
    with pytest.raises(btree.MalformedPage):
        btree.parse_page(bytes(page), 2)

    # An interior page pointing at itself is a cycle, not an endless walk.
    loop = bytearray(512)
    loop[0] = btree.TABLE_INTERIOR
    loop[8:12] = (2).to_bytes(4, "big")
    with pytest.raises(btree.MalformedPage):
        btree.tree_shape(lambda pgno: bytes(loop), 2, 10)
