"""``cloudkeep sql``: query a database inside a backup, read-only, without restoring it.

One statement given on the command line prints its rows (a table, or ``--json``);
without one, a shell reads statements (each ending with ``;``) and dot commands
from the terminal or a pipe. Pages are fetched from the store as the queries need
them (``backups.sql``); values are a backup's text and are printed escaped.
"""

# No ``from __future__ import annotations``: Typer would compile every option's
# annotation string again each time it builds the commands.
import sys
import time
from typing import TYPE_CHECKING, Annotated, Any

import typer

from cloudkeep.cli.app import JsonOption, app, workspace
from cloudkeep.cli.output import error, notice, one_line, print_json, size_text
from cloudkeep.cli.params import FastCommand

if TYPE_CHECKING:
    from collections.abc import Iterator

    from cloudkeep.backups.sql import Database, QueryResult
    from cloudkeep.workspace import Workspace

#: Rows printed unless --max-rows says otherwise.
DEFAULT_MAX_ROWS = 1000
#: Characters of a text value a table shows (--json prints them all).
TABLE_TEXT_CHARS = 200

SHELL_HELP = """\
Statements end with ';' and may span lines. Only reading is allowed.
.tables            the tables and views
.schema [TABLE]    the CREATE statements (of TABLE)
.databases         the databases in this backup
.help              this text
.quit              leave (end of input too)"""


@app.command(cls=FastCommand)
def sql(
    ctx: typer.Context,
    backup_id: Annotated[
        str,
        typer.Argument(
            metavar="ID", help="The backup: its id, a unique beginning of it, or 'latest'."
        ),
    ],
    database: Annotated[
        str | None,
        typer.Argument(
            metavar="[DB]",
            help="The database's path inside the backup (see .databases); optional when "
            "the backup holds one.",
        ),
    ] = None,
    query: Annotated[
        str | None,
        typer.Argument(metavar="[QUERY]", help="One statement; without it, a shell."),
    ] = None,
    device: Annotated[
        str | None,
        typer.Option("--device", metavar="NAME", help="With 'latest': this device's newest."),
    ] = None,
    max_rows: Annotated[
        int,
        typer.Option("--max-rows", min=0, help="Print at most this many rows of a result."),
    ] = DEFAULT_MAX_ROWS,
    timeout: Annotated[
        float,
        typer.Option("--timeout", min=0.1, help="Stop a statement after this many seconds."),
    ] = 30.0,
    json: JsonOption = False,
) -> None:
    """Query a SQLite database inside a backup, read-only, without restoring it.

    Pages are fetched from the store as the query needs them and kept in a bounded
    cache. Examples: cloudkeep sql latest "SELECT count(*) FROM snippets";
    cloudkeep sql latest data/notes.db (a shell; statements end with ';').
    """
    ws = workspace(ctx)
    started = time.monotonic()
    resolved = ws.resolve(backup_id, device)
    if query is None and database is not None and not _names_a_database(ws, resolved, database):
        database, query = None, database  # `sql ID "SELECT ..."`: the one database
    with ws.database(resolved, database) as db:
        if query is None:
            code = _shell(ws, resolved, db, max_rows, timeout)
            raise typer.Exit(code)
        result = db.query(query, max_rows=max_rows, time_limit=timeout)
        total = time.monotonic() - started
        if json:
            _print_json(resolved, db, result, total)
        else:
            _print_table(result)
            notice(_summary(db, result, total))


def _names_a_database(ws: "Workspace", backup_id: str, text: str) -> bool:
    """Whether the one argument after the id is the database (else it is a query): an
    entry of the backup, or one word (no statement that reads is one word), so a
    mistyped path is said to be missing rather than bad SQL."""
    wanted = text.strip().removeprefix("./").strip("/")
    if not any(char.isspace() for char in wanted):
        return True
    return any(entry.path == wanted for entry in ws.manifest(backup_id).files)


def _summary(db: "Database", result: "QueryResult", total: float) -> str:
    rows = f"{len(result.rows)} row{'s' if len(result.rows) != 1 else ''}"
    if result.truncated:
        rows += " (more left out: --max-rows)"
    return (
        f"{rows} from {one_line(db.entry.path)}; {db.reader.fetched_bytes:,} bytes fetched "
        f"from the store; query {result.elapsed:.3f} s, {total:.3f} s in all"
    )


def _print_json(backup_id: str, db: "Database", result: "QueryResult", total: float) -> None:
    import json as json_module

    from cloudkeep.backups.sql import json_value

    print_json(
        json_module.dumps(
            {
                "backup": backup_id,
                "database": db.entry.path,
                "columns": result.columns,
                "rows": [[json_value(value) for value in row] for row in result.rows],
                "truncated": result.truncated,
                "fetched_bytes": db.reader.fetched_bytes,
                "elapsed_ms": round(result.elapsed * 1000, 3),
                "total_ms": round(total * 1000, 3),
            }
        )
    )


def _cell(value: Any) -> Any:
    """A value as a table shows it: escaped text (a backup's text is never markup or a
    terminal sequence), NULL, a blob as its size and first bytes."""
    from rich.text import Text

    if value is None:
        return Text("NULL", style="dim")
    if isinstance(value, bytes):
        shown = value[:16].hex() + ("…" if len(value) > 16 else "")
        return Text(f"<blob {len(value):,} bytes {shown}>", style="dim")
    text = one_line(str(value))
    if len(text) > TABLE_TEXT_CHARS:
        text = text[: TABLE_TEXT_CHARS - 1] + "…"
    return Text(text)


def _print_table(result: "QueryResult") -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    if not result.columns:
        return
    table = Table(box=None, show_edge=False)
    for name in result.columns:
        table.add_column(Text(one_line(name)), overflow="fold")
    for row in result.rows:
        table.add_row(*(_cell(value) for value in row))
    # A pipe gets whole lines (for grep and awk), not the 80 columns of no terminal.
    Console(highlight=False, width=None if sys.stdout.isatty() else 1000).print(table)


# ---------------------------------------------------------------------- the shell
def _shell(ws: "Workspace", backup_id: str, db: "Database", max_rows: int, timeout: float) -> int:
    """Run statements and dot commands until .quit or the end of input; the exit code:
    1 if a statement failed while reading a pipe (as sqlite3 does), else 0."""
    from cloudkeep.errors import QueryRefused

    interactive = sys.stdin.isatty()
    if interactive:
        notice(
            f"querying {one_line(db.entry.path)} of backup {backup_id} (read-only); "
            ".help for help, .quit to leave"
        )
    failed = False
    for kind, text in _inputs(interactive):
        if kind == "unfinished":
            error(
                "error: the last statement is incomplete (an open quote or comment) and was not run"
            )
            failed = True
            break
        command = text.split(maxsplit=1)
        if kind == "dot" and command[0] in (".quit", ".exit"):
            break
        try:
            if kind == "dot":
                _dot(ws, backup_id, db, command[0], command[1] if len(command) > 1 else None)
                continue
            result = db.query(text, max_rows=max_rows, time_limit=timeout)
        except QueryRefused as exc:
            error(f"error: {exc}")
            failed = True
            continue
        _print_table(result)
        if result.truncated:
            notice(f"only the first {len(result.rows)} rows are shown (--max-rows)")
    return 1 if failed and not interactive else 0


def _inputs(interactive: bool) -> "Iterator[tuple[str, str]]":
    """("dot", a dot command) and ("sql", a complete statement) as they are read; at the
    end of input, a last statement without its ';' as ("sql", ...), or ("unfinished",
    text) if it cannot be completed (an open quote or comment)."""
    import apsw

    if interactive:
        import contextlib

        with contextlib.suppress(ImportError):  # line editing and history where there is one
            import readline  # noqa: F401
    buffer = ""
    while True:
        try:
            line = input("sql> " if not buffer else "...> ") if interactive else _read_line()
        except EOFError:
            line = None
        except KeyboardInterrupt:  # drops the statement being typed, as sqlite3 does
            print()
            buffer = ""
            continue
        if line is None:
            yield from _last(buffer)
            return
        if not buffer.strip():  # blank lines before a statement: still at its start
            buffer = ""
            if line.strip().startswith("."):
                yield "dot", line.strip()
                continue
            if not line.strip():
                continue
        buffer += line + "\n"
        if apsw.complete(buffer):
            for statement in _split(buffer):
                yield "sql", statement
            buffer = ""


def _last(buffer: str) -> "Iterator[tuple[str, str]]":
    """The text left at the end of input: a last statement without its ';' runs, as
    sqlite3 runs it; an open quote or comment cannot be completed ("unfinished")."""
    import apsw

    if not buffer.strip():
        return
    if apsw.complete(buffer + ";"):
        yield from (("sql", statement) for statement in _split(buffer + ";"))
    else:
        yield "unfinished", buffer


def _split(text: str) -> "Iterator[str]":
    """The statements of complete SQL text (``a; b;`` is two): each shortest prefix
    ending with a ';' that SQLite calls complete (quotes, comments, triggers kept)."""
    import apsw

    start = 0
    for end, char in enumerate(text):
        if char == ";" and apsw.complete(text[start : end + 1]):
            if text[start:end].strip():
                yield text[start : end + 1]
            start = end + 1


def _lines(text: str) -> str:
    """A backup's multi-line text, each line escaped (no terminal sequence gets through)."""
    return "\n".join(one_line(line.replace("\t", "    ")) for line in text.split("\n"))


def _read_line() -> str | None:
    line = sys.stdin.readline()
    return None if not line else line.rstrip("\n")


def _dot(ws: "Workspace", backup_id: str, db: "Database", command: str, arg: str | None) -> None:
    if command == ".help":
        print(SHELL_HELP)
    elif command == ".tables":
        for name in db.tables():
            print(one_line(name))
    elif command == ".schema":
        for statement in db.schema(arg):
            print(_lines(statement) + ";")
    elif command == ".databases":  # as 'cloudkeep ls': the size, then the path
        entries = ws.databases(backup_id)
        width = max((len(size_text(entry.size)) for entry in entries), default=0)
        for entry in entries:
            mark = "*" if entry.path == db.entry.path else " "
            print(one_line(f"{mark} {size_text(entry.size):>{width}}  {entry.path}"))
    else:
        from cloudkeep.errors import QueryRefused

        raise QueryRefused(f"unknown command {one_line(command)}: .help lists them")
