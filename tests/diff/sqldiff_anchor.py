"""The anchor of ``cloudkeep diff``: SQLite's own ``sqldiff`` on two database files.

Its SQL output (the statements turning the first database into the second) is
counted per table: inserts, deletes and updates, a table created or dropped, and
a table dropped and re-created "due to schema mismatch".
"""

from __future__ import annotations

import re
import shutil
import sqlite3
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

SQLDIFF = shutil.which("sqldiff") or "/usr/bin/sqldiff"
_NAME = r'("(?:[^"]|"")+"|[^\s(]+)'
_STATEMENT = re.compile(
    rf"^(INSERT INTO {_NAME}\(|UPDATE {_NAME} SET |DELETE FROM {_NAME} WHERE |"
    rf"DROP TABLE {_NAME};|CREATE TABLE {_NAME}|ALTER TABLE {_NAME} ADD COLUMN )",
    re.DOTALL,
)

_OTHER_SCHEMA = re.compile(r"^(CREATE|DROP) (UNIQUE )?(INDEX|VIEW|TRIGGER) ")


@dataclass
class TableCounts:
    added: int = 0
    removed: int = 0
    changed: int = 0
    schema: set[str] = field(default_factory=set)  # created, dropped, mismatch, altered


def _unquote(name: str) -> str:
    return name[1:-1].replace('""', '"') if name.startswith('"') else name


def statements(text: str) -> list[str]:
    """Split sqldiff's output into complete statements (values may hold newlines)."""
    out, pending = [], ""
    for line in text.splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            out.append(pending.strip())
            pending = ""
    assert not pending.strip(), f"sqldiff left an incomplete statement: {pending[:200]!r}"
    return out


def sqldiff(a: Path, b: Path) -> dict[str, TableCounts]:
    """Per table, what sqldiff says changed from ``a`` to ``b`` (tables it leaves alone
    are absent). A table dropped and re-created counts every row on both sides."""
    run = subprocess.run([SQLDIFF, str(a), str(b)], capture_output=True, text=True, check=True)
    return count_statements(run.stdout, a)


def count_statements(output: str, a: Path) -> dict[str, TableCounts]:
    """Per-table counts of sqldiff's ``output`` for the databases ``a`` → b."""
    tables: dict[str, TableCounts] = {}
    for statement in statements(output):
        if _OTHER_SCHEMA.match(statement):
            continue  # indexes, views and triggers hold no rows
        match = _STATEMENT.match(statement)
        assert match, f"unexpected sqldiff statement: {statement[:200]!r}"
        insert, update, delete, drop, create, alter = match.groups()[1:]
        name = _unquote(next(n for n in (insert, update, delete, drop, create, alter) if n))
        counts = tables.setdefault(name, TableCounts())
        if insert:
            counts.added += 1
        elif update:
            counts.changed += 1
        elif delete:
            counts.removed += 1
        elif drop:
            counts.schema.add("mismatch" if "schema mismatch" in statement else "dropped")
        elif create:
            counts.schema.add("created")
        else:
            counts.schema.add("altered")
    for name, counts in tables.items():
        if "dropped" in counts.schema or "mismatch" in counts.schema:
            with sqlite3.connect(f"file:{a}?mode=ro", uri=True) as conn:
                (counts.removed,) = conn.execute(
                    f'SELECT count(*) FROM "{name.replace(chr(34), chr(34) * 2)}"'
                ).fetchone()
    return tables
