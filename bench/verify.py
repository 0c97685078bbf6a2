"""Is a restore equal to its source? SQLite databases row by row and blob by blob, every
other file byte for byte.

Databases are compared by content, not bytes: cloudkeep restores a consistent database
image, restic and borg the raw db + -wal pair. Both sides are opened read-only
(``mode=ro`` URIs): the source is read through its -wal as the app left it and is never
checkpointed or written (a read-only connection cannot checkpoint).
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Iterator
from itertools import zip_longest
from pathlib import Path
from typing import Any

SQLITE_MAGIC = b"SQLite format 3\x00"
CHUNK = 4 * 1024 * 1024
SIDE_FILES = ("-wal", "-shm", "-journal")  # part of a database image, compared through it


def is_sqlite(path: Path) -> bool:
    """Whether ``path`` starts with the SQLite header."""
    try:
        with open(path, "rb") as f:
            return f.read(len(SQLITE_MAGIC)) == SQLITE_MAGIC
    except OSError:
        return False


def open_ro(path: Path) -> sqlite3.Connection:
    """A read-only connection that reads through the -wal and never writes the database."""
    return sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True,
                           isolation_level=None, check_same_thread=False)


def _feed(h: Any, row: tuple[Any, ...]) -> None:
    """Hash one row with its types, so 1, 1.0, '1' and b'1' differ."""
    for v in row:
        if v is None:
            h.update(b"N")
        elif isinstance(v, int):
            h.update(b"I%d;" % v)
        elif isinstance(v, float):
            h.update(b"F" + v.hex().encode() + b";")
        elif isinstance(v, str):
            b = v.encode("utf-8", "surrogatepass")
            h.update(b"T%d:" % len(b) + b)
        else:
            b = bytes(v)
            h.update(b"B%d:" % len(b) + b)


def _tables(con: sqlite3.Connection) -> list[tuple[str, str]]:
    """(name, sql) of every ordinary table; virtual tables are compared through their
    shadow tables, which are ordinary."""
    return [(n, s or "") for n, s in con.execute(
        "SELECT name, sql FROM sqlite_master WHERE type = 'table' ORDER BY name")
        if not (s or "").upper().startswith("CREATE VIRTUAL")]


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _rows(con: sqlite3.Connection, table: str) -> tuple[list[str], Iterator[tuple[Any, ...]]]:
    """(column names, rows ordered by rowid) with the key first; WITHOUT ROWID tables are
    ordered by their primary key."""
    t = _quote(table)
    try:
        cur = con.execute(f"SELECT rowid, * FROM {t} ORDER BY rowid")
    except sqlite3.OperationalError:  # WITHOUT ROWID
        pk = [r[1] for r in sorted(con.execute(f"PRAGMA table_info({t})"), key=lambda r: r[5])
              if r[5]]
        cols = ", ".join(_quote(c) for c in pk)
        cur = con.execute(f"SELECT ({cols}), * FROM {t} ORDER BY {cols}" if len(pk) == 1
                          else f"SELECT NULL, * FROM {t} ORDER BY {cols}")
    names = [d[0] for d in cur.description]
    return names, iter(cur)


def compare_table(a: sqlite3.Connection, b: sqlite3.Connection, table: str) -> dict[str, Any]:
    """Stream ``table`` from both sides in key order: rows, a hash each, the first
    differing row's key and column."""
    names, rows_a = _rows(a, table)
    _, rows_b = _rows(b, table)
    ha, hb = hashlib.sha256(), hashlib.sha256()
    n_a = n_b = 0
    first: dict[str, Any] | None = None
    for ra, rb in zip_longest(rows_a, rows_b):
        if ra is not None:
            n_a += 1
            _feed(ha, ra)
        if rb is not None:
            n_b += 1
            _feed(hb, rb)
        if first is None and ra != rb:
            if ra is None or rb is None:
                first = {"rowid": (rb if ra is None else ra)[0],
                         "why": "missing in the restore" if rb is None else "extra in the restore"}
            else:
                col = next(i for i, (x, y) in enumerate(zip(ra, rb, strict=True)) if x != y)
                first = {"rowid": ra[0] if col else f"{ra[0]} (restored: {rb[0]})",
                         "column": names[col] if col else "rowid", "why": "value differs"}
    out: dict[str, Any] = {"rows": n_a, "restored_rows": n_b, "sha256": ha.hexdigest(),
                           "equal": first is None}
    if first is not None:
        out["restored_sha256"] = hb.hexdigest()
        out["first_difference"] = first
    return out


def compare_databases(source: Path, restored: Path) -> dict[str, Any]:
    """Every table, every row by rowid, every value (blobs included) of two databases."""
    a, b = open_ro(source), open_ro(restored)
    try:
        schema = "SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY type, name"
        schema_equal = list(a.execute(schema)) == list(b.execute(schema))
        tables_a, tables_b = _tables(a), _tables(b)
        out: dict[str, Any] = {"schema_equal": schema_equal, "tables": {}}
        missing = sorted({n for n, _ in tables_a} ^ {n for n, _ in tables_b})
        if missing:
            out["tables_only_on_one_side"] = missing
        for name, _sql in tables_a:
            if name not in missing:
                out["tables"][name] = compare_table(a, b, name)
        out["ok"] = schema_equal and not missing and all(
            t["equal"] for t in out["tables"].values())
        return out
    finally:
        a.close()
        b.close()


def first_byte_difference(a: Path, b: Path) -> int | None:
    """Offset of the first byte where two files differ (the shorter one's end counts), or
    None if they are equal."""
    with open(a, "rb") as fa, open(b, "rb") as fb:
        pos = 0
        while True:
            x, y = fa.read(CHUNK), fb.read(CHUNK)
            if x != y:
                n = min(len(x), len(y))
                return pos + next((i for i in range(n) if x[i] != y[i]), n)
            if not x:
                return None
            pos += len(x)


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and not p.is_symlink())


def verify_tree(source: Path, restored: Path) -> dict[str, Any]:
    """Every file of ``source`` in ``restored``: databases compared by content (their
    -wal/-shm are part of that), other files byte for byte; extra files are reported."""
    problems: list[str] = []
    databases: dict[str, Any] = {}
    files = 0
    seen: set[Path] = set()
    for p in _files(source):
        rel = p.relative_to(source)
        if p.name.endswith(SIDE_FILES):
            continue
        q = restored / rel
        seen.add(rel)
        files += 1
        if not q.is_file():
            problems.append(f"missing {rel}")
        elif is_sqlite(p):
            try:
                d = compare_databases(p, q)
            except sqlite3.Error as exc:
                d = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
            databases[str(rel)] = d
            if not d["ok"]:
                problems.append(f"database differs {rel}: {describe_db_problem(d)}")
        elif (off := first_byte_difference(p, q)) is not None:
            problems.append(f"content differs {rel} from byte {off}")
    extra = [str(q.relative_to(restored)) for q in _files(restored)
             if q.relative_to(restored) not in seen and not q.name.endswith(SIDE_FILES)]
    problems += [f"extra {e}" for e in extra]
    return {"ok": not problems, "files": files, "databases": databases,
            "problems": problems[:20]}


def describe_db_problem(d: dict[str, Any]) -> str:
    """One line: the first table that differs and where."""
    if "error" in d:
        return str(d["error"])
    if not d.get("schema_equal", True):
        return "schema differs"
    if d.get("tables_only_on_one_side"):
        return f"tables on one side only: {d['tables_only_on_one_side']}"
    for name, t in d.get("tables", {}).items():
        if not t["equal"]:
            f = t["first_difference"]
            return (f"table {name} ({t['rows']} rows, restored {t['restored_rows']}): "
                    f"first at rowid {f['rowid']}"
                    + (f", column {f['column']}" if "column" in f else "") + f" ({f['why']})")
    return "differs"
