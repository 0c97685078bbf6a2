"""The bench's restore check: databases row by row and blob by blob, files byte by byte."""

from __future__ import annotations

import sqlite3
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import verify


def make_db(path: Path, rows: int = 50) -> sqlite3.Connection:
    """A WAL database with blobs; returned open so its -wal stays as a live app leaves it."""
    con = sqlite3.connect(path, isolation_level=None)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA wal_autocheckpoint=0")
    con.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT, data BLOB, score REAL)")
    con.executemany(
        "INSERT INTO t VALUES (?, ?, ?, ?)",
        [(i, f"row {i}", bytes([i % 256]) * 100, i / 3) for i in range(1, rows + 1)],
    )
    return con


def test_equal_databases_match_and_the_source_wal_is_left_alone(tmp_path: Path) -> None:
    source = make_db(tmp_path / "a.db")
    restored = make_db(tmp_path / "b.db")
    wal = tmp_path / "a.db-wal"
    before = wal.read_bytes()
    result = verify.compare_databases(tmp_path / "a.db", tmp_path / "b.db")
    assert result["ok"]
    assert result["tables"]["t"]["rows"] == 50
    assert wal.read_bytes() == before  # read through, never checkpointed
    source.close()
    restored.close()


def test_a_changed_blob_is_found_with_its_rowid_and_column(tmp_path: Path) -> None:
    source = make_db(tmp_path / "a.db")
    restored = make_db(tmp_path / "b.db")
    restored.execute("UPDATE t SET data = ? WHERE id = 37", (bytes([37]) * 99 + b"\x00",))
    result = verify.compare_databases(tmp_path / "a.db", tmp_path / "b.db")
    assert not result["ok"]
    table = result["tables"]["t"]
    assert table["first_difference"] == {"rowid": 37, "column": "data", "why": "value differs"}
    assert table["sha256"] != table["restored_sha256"]
    assert "rowid 37, column data" in verify.describe_db_problem(result)
    source.close()
    restored.close()


def test_a_missing_row_and_a_missing_table_are_differences(tmp_path: Path) -> None:
    source = make_db(tmp_path / "a.db")
    restored = make_db(tmp_path / "b.db")
    restored.execute("DELETE FROM t WHERE id = 50")
    result = verify.compare_databases(tmp_path / "a.db", tmp_path / "b.db")
    assert result["tables"]["t"]["first_difference"]["rowid"] == 50
    assert result["tables"]["t"]["restored_rows"] == 49
    source.execute("CREATE TABLE extra (x)")
    result = verify.compare_databases(tmp_path / "a.db", tmp_path / "b.db")
    assert result["tables_only_on_one_side"] == ["extra"]
    assert not result["ok"]
    source.close()
    restored.close()


def test_values_of_different_types_differ(tmp_path: Path) -> None:
    for name, value in (("a.db", 1), ("b.db", "1")):
        con = sqlite3.connect(tmp_path / name)
        con.execute("CREATE TABLE t (v)")
        con.execute("INSERT INTO t VALUES (?)", (value,))
        con.commit()
        con.close()
    assert not verify.compare_databases(tmp_path / "a.db", tmp_path / "b.db")["ok"]


def test_tree_compares_files_byte_for_byte_and_databases_by_content(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    for root in (src, dst):
        (root / "sub").mkdir(parents=True)
        make_db(root / "sub" / "app.db").close()
        (root / "plain.bin").write_bytes(b"x" * 10_000)
    assert verify.verify_tree(src, dst)["ok"]
    (dst / "plain.bin").write_bytes(b"x" * 4_321 + b"y" + b"x" * 5_678)
    (dst / "stray.txt").write_text("not in the source")
    result = verify.verify_tree(src, dst)
    assert not result["ok"]
    assert "content differs plain.bin from byte 4321" in result["problems"]
    assert "extra stray.txt" in result["problems"]
    assert verify.first_byte_difference(src / "plain.bin", src / "plain.bin") is None
