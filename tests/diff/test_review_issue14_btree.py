"""Review of issue 14: crafted pages of a key holder's database against the diff's plan."""

from __future__ import annotations

import shutil
import sqlite3
import struct
from contextlib import closing
from pathlib import Path

import apsw
import pytest
from local_side import local_side

from cloudkeep.backups import btree
from cloudkeep.backups import diff as diff_module
from cloudkeep.backups.diff import diff_database

PAGE = 4096


def _pair(tmp_path: Path, without_rowid: bool) -> tuple[Path, Path, int]:
    """Two databases, the second with one row changed; the page of that row's leaf."""
    a, b = tmp_path / "a.db", tmp_path / "b.db"
    wr = " WITHOUT ROWID" if without_rowid else ""
    with closing(sqlite3.connect(a, isolation_level=None)) as conn:
        conn.execute(f"PRAGMA page_size = {PAGE}")
        conn.execute(f"CREATE TABLE t(k TEXT PRIMARY KEY, v){wr}")
        conn.execute("CREATE TABLE pad(x)")
        conn.execute("BEGIN")
        conn.executemany(
            "INSERT INTO t VALUES (?, ?)", [(f"k{i:04}", "x" * 50) for i in range(200)]
        )
        conn.executemany("INSERT INTO pad VALUES (?)", [("p" * 3000,) for _ in range(400)])
        conn.execute("COMMIT")
    shutil.copyfile(a, b)
    with closing(sqlite3.connect(b, isolation_level=None)) as conn:
        conn.execute("UPDATE t SET v = 'changed' WHERE k = 'k0001'")
        (leaf,) = conn.execute(
            "SELECT pageno FROM dbstat WHERE name = 't' AND pagetype = 'leaf' "
            "ORDER BY pageno LIMIT 1"
        ).fetchone()
    return a, b, leaf


def _varint9(value: int) -> bytes:
    out = bytearray(9)
    out[8] = value & 0xFF
    value >>= 8
    for i in range(7, -1, -1):
        out[i] = (value & 0x7F) | 0x80
        value >>= 7
    return bytes(out)


def _craft_leaf(path: Path, leaf: int, kind: int, chain: int, cells: int) -> None:
    """Every cell of ``leaf`` one crafted cell whose payload spills over (almost) every
    page of the database, its chain starting at ``chain``, a page naming itself."""
    data = bytearray(path.read_bytes())
    count = len(data) // PAGE
    least = (PAGE - 12) * 32 // 255 - 23
    payload = least + (count - 2) * (PAGE - 4)
    local = btree.local_payload(kind, payload, PAGE)
    rowid = b"\x01" if kind == btree.TABLE_LEAF else b""
    cell = _varint9(payload) + rowid + b"\0" * local + struct.pack(">I", chain)
    start = (leaf - 1) * PAGE
    at = 8 + 2 * cells + 16
    assert at + len(cell) <= PAGE
    data[start + at : start + at + len(cell)] = cell
    struct.pack_into(">H", data, start + 3, cells)
    struct.pack_into(f">{cells}H", data, start + 8, *([at] * cells))
    struct.pack_into(">I", data, (chain - 1) * PAGE, chain)
    path.write_bytes(bytes(data))


def _plan(a: Path, b: Path) -> diff_module.PagePlan:
    side_a, side_b = local_side(a), local_side(b)
    with closing(side_a.connect()) as conn_a, closing(side_b.connect()) as conn_b:
        schema_a, schema_b = diff_module._schema(conn_a), diff_module._schema(conn_b)
        tables_a = diff_module._tables(conn_a, schema_a)
        tables_b = diff_module._tables(conn_b, schema_b)
        return diff_module.plan_pages(
            side_a,
            side_b,
            tables_a,
            tables_b,
            diff_module._roots(schema_a),
            diff_module._roots(schema_b),
        )


def test_overflow_chains_sharing_a_page_end_the_plan_at_once(tmp_path: Path) -> None:
    """Attack: 1,700 cells of one changed leaf, each spilling over every page of the
    database through a page naming itself: each chain ended within the page count,
    so the plan walked cells x pages (2 s for 8 MiB; hours for a real database, in a
    server thread nobody can stop). An overflow page is one cell's only: the second
    visit of page ``chain`` ends the plan, which falls back to SQLite's full reading."""
    a, b, leaf = _pair(tmp_path, without_rowid=True)
    _craft_leaf(b, leaf, btree.INDEX_LEAF, leaf + 1, cells=1700)
    plan = _plan(a, b)
    assert plan.method == "full"
    assert f"overflow page {leaf + 1} is in two chains" in plan.reason
    with pytest.raises(apsw.Error):  # SQLite refuses the crafted page when it reads it
        diff_database("db", local_side(a), local_side(b))


def test_a_malformed_chain_of_a_compared_leaf_is_no_uncaught_error(tmp_path: Path) -> None:
    """Attack: a rowid table's changed leaf whose cells' overflow chains are malformed.
    Its chains are followed only while its rows are compared, outside the plan's
    guard: MalformedPage (a ValueError) escaped diff_database, a traceback in
    `cloudkeep diff` and a 500 from the API. It now sends the comparison to SQLite's
    full reading, which refuses the page as damaged."""
    a, b, leaf = _pair(tmp_path, without_rowid=False)
    _craft_leaf(b, leaf, btree.TABLE_LEAF, leaf + 1, cells=2)
    with pytest.raises(apsw.Error):
        diff_database("db", local_side(a), local_side(b))


def test_listed_rows_are_held_to_a_byte_budget(tmp_path: Path) -> None:
    """Attack: a key holder's table of large text values (1 MiB each here; zeros store
    in a few bytes) listed with rows: every listed row was kept whole, max_rows per
    table (10,000 in the API) times every table: the server ran out of memory. The
    listing of one diff now stops at MAX_LISTED_BYTES, all tables together."""
    a, b = tmp_path / "a.db", tmp_path / "b.db"
    with closing(sqlite3.connect(a, isolation_level=None)) as conn:
        conn.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
    shutil.copyfile(a, b)
    with closing(sqlite3.connect(b, isolation_level=None)) as conn:
        for name in ("t", "u"):
            conn.execute(f"CREATE TABLE IF NOT EXISTS {name}(id INTEGER PRIMARY KEY, v TEXT)")
            conn.execute(
                f"WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c LIMIT 40) "
                f"INSERT INTO {name} SELECT x, printf('%.*c', 1048576, 'a') FROM c"
            )
    result = diff_database("db", local_side(a), local_side(b), rows=True, max_rows=10_000)
    listed = {table.name: table for table in result.tables}
    assert {name: listed[name].added for name in ("t", "u")} == {"t": 40, "u": 40}
    samples = [listed[name].rows for name in ("t", "u")]
    assert all(sample is not None and sample.truncated for sample in samples)
    kept = sum(len(sample.added) for sample in samples if sample is not None)
    assert kept * 1_048_576 <= diff_module.MAX_LISTED_BYTES + 1_048_576
