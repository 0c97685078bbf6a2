"""``cloudkeep diff A B``: files, and SQLite rows, changed between two backups."""

# No ``from __future__ import annotations``: Typer would compile every option's
# annotation string again each time it builds the commands.
from typing import TYPE_CHECKING, Annotated, Any

import typer

from cloudkeep.cli.app import JsonOption, app, workspace
from cloudkeep.cli.output import one_line, print_json
from cloudkeep.cli.params import FastCommand
from cloudkeep.errors import UserError

if TYPE_CHECKING:
    from cloudkeep.backups.diff import BackupDiff, DatabaseDiff, FileChange, TableDiff

#: Characters of a value shown in a listed row.
SHOWN_VALUE = 60


@app.command(cls=FastCommand)
def diff(
    ctx: typer.Context,
    a: Annotated[
        str,
        typer.Argument(
            metavar="A", help="The first backup: its id, a unique beginning of it, or 'latest'."
        ),
    ],
    b: Annotated[
        str,
        typer.Argument(
            metavar="B", help="The second backup: its id, a unique beginning of it, or 'latest'."
        ),
    ],
    device: Annotated[
        str | None,
        typer.Option(
            "--device",
            metavar="NAME",
            help="With 'latest' (as A, B or both): the newest backup of this device "
            "(default: this device's, or the only device's).",
        ),
    ] = None,
    rows: Annotated[
        bool, typer.Option("--rows", help="List the rows added, removed and changed.")
    ] = False,
    max_rows: Annotated[
        int,
        typer.Option("--max-rows", metavar="N", help="With --rows: at most N rows per table."),
    ] = 20,
    json: JsonOption = False,
) -> None:
    """What changed from backup A to backup B: files added, removed and changed, and for
    each SQLite database the rows added, removed and changed per table.

    Files are compared from the backups' lists alone; a database's rows are read
    only where its pages differ (the method taken is shown)."""
    if max_rows < 0:
        raise UserError("--max-rows must be 0 or more")
    result = workspace(ctx).diff(a, b, rows=rows, max_rows=max_rows, device=device)
    if json:
        import json as json_text

        print_json(json_text.dumps(result.to_json()))
        return
    _print(result)


def _print(result: "BackupDiff") -> None:
    files = result.files
    print(
        f"{result.a} → {result.b}: {len(files.added)} added, {len(files.removed)} removed, "
        f"{len(files.changed)} changed"
    )
    for change in files.added:
        print(one_line(f"+ {change.path}  {_size(change.type_b, change.size_b)}"))
    for change in files.removed:
        print(one_line(f"- {change.path}  {_size(change.type_a, change.size_a)}"))
    for change in files.changed:
        print(one_line(f"M {change.path}  {_changed_file(change)}"))
    for database in result.databases:
        _print_database(database)
    print(f"fetched {result.fetched_bytes:,} bytes in {result.elapsed_ms / 1000:.2f} s")


def _size(kind: str | None, size: int) -> str:
    return f"{size:,} bytes" if kind == "file" else f"({kind})"


def _changed_file(change: "FileChange") -> str:
    parts = []
    if "type" in change.what:
        parts.append(f"{change.type_a} → {change.type_b}")
    if "content" in change.what or change.size_a != change.size_b:
        parts.append(f"{change.size_a:,} → {change.size_b:,} bytes")
    if "mode" in change.what:
        parts.append(f"mode {change.mode_a or 0:o} → {change.mode_b or 0:o}")
    if "target" in change.what:
        parts.append("link target changed")
    return ", ".join(parts)


def _print_database(database: "DatabaseDiff") -> None:
    how = (
        f"{database.pages_differing:,} of {database.pages:,} pages in changed chunks, "
        "only their rows read"
        if database.method == "pages"
        else f"compared in full: {database.reason}"
    )
    print(one_line(f"database {database.path} ({database.status}; {how})"))
    for item in database.schema:
        print(one_line(f"  schema: {item['type']} {item['name']} {item['change']}"))
    if not database.tables:
        print("  no rows changed")
    for table in database.tables:
        _print_table(table)


def _print_table(table: "TableDiff") -> None:
    note = f" (table {table.schema})" if table.schema else ""
    print(
        one_line(
            f"  {table.name}: {table.added:,} added, {table.removed:,} removed, "
            f"{table.changed:,} changed{note}"
        )
    )
    if table.rows is None:
        return
    for row in table.rows.added:
        print(one_line(f"    + {_key(row['key'])} {_values(row['values'])}"))
    for row in table.rows.removed:
        print(one_line(f"    - {_key(row['key'])} {_values(row['values'])}"))
    for row in table.rows.changed:
        columns = ", ".join(
            f"{name}: {_value(pair['a'])} → {_value(pair['b'])}"
            for name, pair in row["columns"].items()
        )
        print(one_line(f"    ~ {_key(row['key'])} {columns}"))
    if table.rows.truncated:
        print("    … (more rows: raise --max-rows)")


def _key(key: Any) -> str:
    return "(" + ", ".join(map(_value, key)) + ")" if isinstance(key, list) else _value(key)


def _values(values: dict[str, Any]) -> str:
    return ", ".join(f"{name}={_value(value)}" for name, value in values.items())


def _value(value: Any) -> str:
    if isinstance(value, dict) and "blob" in value:
        return f"<blob {value['blob']:,} bytes>"
    text = repr(value)
    return text if len(text) <= SHOWN_VALUE else text[: SHOWN_VALUE - 1] + "…"
