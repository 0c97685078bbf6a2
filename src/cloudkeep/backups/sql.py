"""Querying a backed-up SQLite database in place: its pages come from the store on demand.

A SQLite VFS (apsw) serves the database file from a ``BackupFile``: SQLite reads
the pages a query needs, the reader fetches the frames holding them (each blob
re-hashed against its keyed id) and keeps them in its bounded cache. Nothing
else is ever opened: the VFS knows one file per connection and refuses every
other name, temp files included (temp storage is memory), so no statement can
reach the local disk, whatever the database or the query holds.

The connection is read-only four times over: opened READONLY and ``immutable=1``
(the backed-up file is self-contained: no journal, WAL or -shm is looked up, no
lock taken), the VFS refuses writes, ``SQLITE_LIMIT_ATTACHED`` is 0, and an
authorizer allows reading only (SELECT, reading PRAGMAs, functions other than
``load_extension``). A backup's schema is a key holder's text, so it is not
trusted (``trusted_schema`` off, defensive mode on). A progress handler ends a
query past its time limit; results are cut at a number of rows and of bytes.
"""

from __future__ import annotations

import math
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import apsw

from cloudkeep.backups.manifest import FileEntry, Manifest
from cloudkeep.backups.reader import BackupFile, BackupReader
from cloudkeep.errors import DatabaseNotFound, NotADatabase, QueryRefused, QueryTimeout
from cloudkeep.repository.untrusted import shown

__all__ = [
    "API_TIME_LIMIT",
    "CLI_TIME_LIMIT",
    "Database",
    "QueryResult",
    "choose_database",
    "databases",
    "json_value",
    "open_database",
]

SQLITE_HEADER = b"SQLite format 3\x00"
#: Seconds a query may run: the CLI's default, and the API's (a server's worker thread).
CLI_TIME_LIMIT = 30.0
API_TIME_LIMIT = 10.0
#: Rows a result holds at most unless the caller asks for fewer (API and shell).
MAX_ROWS = 10_000
#: Bytes of values a result holds at most (blobs in full: a row keeps them whole).
MAX_RESULT_BYTES = 16 * 1024 * 1024
#: Bytes SQLite (apsw's own library) may allocate in this process at most: a row of
#: many large values (``zeroblob``, ``randomblob``, a backup's blobs) fails with
#: "out of memory" instead of exhausting the server's memory.
MAX_SQLITE_HEAP = 1024 * 1024 * 1024
#: Largest string or blob a statement may make (SQLITE_LIMIT_LENGTH).
MAX_VALUE_BYTES = 256 * 1024 * 1024
#: Bytes of a blob shown (as hex) in a result.
BLOB_PREFIX_BYTES = 32
#: Virtual machine steps between two looks at the clock.
PROGRESS_STEPS = 10_000
VFS_NAME = "cloudkeep-backup"

#: PRAGMAs that only read, without an argument (``PRAGMA x`` / ``pragma_x``).
_READING_PRAGMAS = frozenset(
    {
        "application_id",
        "auto_vacuum",
        "collation_list",
        "compile_options",
        "data_version",
        "database_list",
        "encoding",
        "freelist_count",
        "function_list",
        "module_list",
        "page_count",
        "page_size",
        "pragma_list",
        "schema_version",
        "table_list",
        "user_version",
    }
)
#: PRAGMAs whose argument names what to read (a table, an index, a count of errors).
_READING_PRAGMAS_WITH_ARGUMENT = frozenset(
    {
        "foreign_key_check",
        "foreign_key_list",
        "index_info",
        "index_list",
        "index_xinfo",
        "integrity_check",
        "quick_check",
        "table_info",
        "table_list",
        "table_xinfo",
    }
)
_REFUSED_FUNCTIONS = frozenset({"load_extension", "fts3_tokenizer"})
_READING_ACTIONS = frozenset({apsw.SQLITE_SELECT, apsw.SQLITE_READ, apsw.SQLITE_RECURSIVE})


# -------------------------------------------------------------------------- the VFS
class _PageFile:
    """The database file of one connection: reads come from the backup, writes fail.

    apsw calls these methods by their names (SQLite's ``sqlite3_io_methods``)."""

    def __init__(self, backup_file: BackupFile) -> None:
        self._file = backup_file

    def xRead(self, amount: int, offset: int) -> bytes:
        return self._file.read(offset, amount)

    def xFileSize(self) -> int:
        return self._file.size

    def xWrite(self, data: bytes, offset: int) -> None:
        raise apsw.ReadOnlyError("a backed-up database is read-only")

    def xTruncate(self, size: int) -> None:
        raise apsw.ReadOnlyError("a backed-up database is read-only")

    def xSync(self, flags: int) -> None:
        raise apsw.ReadOnlyError("a backed-up database is read-only")

    def xLock(self, level: int) -> None:
        """Nothing to lock: the file never changes."""

    def xUnlock(self, level: int) -> None:
        """Nothing was locked."""

    def xCheckReservedLock(self) -> bool:
        return False

    def xFileControl(self, op: int, ptr: int) -> bool:
        return False

    def xSectorSize(self) -> int:
        return 4096

    def xDeviceCharacteristics(self) -> int:
        return apsw.SQLITE_IOCAP_IMMUTABLE

    def xClose(self) -> None:
        """The backup file holds nothing to release."""


class _BackupVFS(apsw.VFS):
    """Opens the files ``open_database`` registered, each once; refuses every other name.

    It inherits from no VFS: no call of it reaches the local filesystem.
    """

    def __init__(self) -> None:
        self._files: dict[str, BackupFile] = {}
        self._lock = threading.Lock()
        super().__init__(VFS_NAME, base="")

    def register(self, backup_file: BackupFile) -> str:
        name = f"/{uuid.uuid4().hex}.db"
        with self._lock:
            self._files[name] = backup_file
        return name

    def forget(self, name: str) -> None:
        with self._lock:
            self._files.pop(name, None)

    # A file object of our own, not an apsw.VFSFile (which would open a file of a base VFS).
    def xOpen(  # type: ignore[override]
        self, name: str | apsw.URIFilename | None, flags: list[int]
    ) -> _PageFile:
        filename = name.filename() if isinstance(name, apsw.URIFilename) else name
        with self._lock:
            backup_file = None if filename is None else self._files.pop(filename, None)
        if backup_file is None or not flags[0] & apsw.SQLITE_OPEN_MAIN_DB:
            raise apsw.CantOpenError("only the backed-up database can be opened")
        flags[1] = apsw.SQLITE_OPEN_READONLY | apsw.SQLITE_OPEN_MAIN_DB
        return _PageFile(backup_file)

    def xAccess(self, pathname: str, flags: int) -> bool:
        return False  # no journal, WAL or -shm exists beside a backed-up database

    def xFullPathname(self, name: str) -> str:
        return name

    def xDelete(self, filename: str, syncdir: bool) -> None:
        raise apsw.ReadOnlyError("a backed-up database is read-only")

    def xDlOpen(self, filename: str) -> int:
        return 0  # no extension is ever loaded


_vfs: _BackupVFS | None = None
_vfs_lock = threading.Lock()


def _the_vfs() -> _BackupVFS:
    global _vfs
    with _vfs_lock:
        if _vfs is None:
            apsw.hard_heap_limit(MAX_SQLITE_HEAP)
            _vfs = _BackupVFS()
        return _vfs


# ------------------------------------------------------------------- the connection
def _authorize(
    action: int, arg1: str | None, arg2: str | None, dbname: str | None, trigger: str | None
) -> int:
    """Reading only: SELECT, reading PRAGMAs, functions but ``load_extension``."""
    if action in _READING_ACTIONS:
        return apsw.SQLITE_OK
    if action == apsw.SQLITE_FUNCTION:
        return apsw.SQLITE_DENY if (arg2 or "").lower() in _REFUSED_FUNCTIONS else apsw.SQLITE_OK
    if action == apsw.SQLITE_PRAGMA:
        pragma = (arg1 or "").lower()
        if pragma in _READING_PRAGMAS_WITH_ARGUMENT or (
            arg2 is None and pragma in _READING_PRAGMAS
        ):
            return apsw.SQLITE_OK
    return apsw.SQLITE_DENY


def _check_header(backup_file: BackupFile, entry: FileEntry) -> None:
    if not entry.sqlite:
        raise NotADatabase(f"{shown(entry.path)} is not a SQLite database in this backup")
    if backup_file.read(0, len(SQLITE_HEADER)) != SQLITE_HEADER:
        raise NotADatabase(
            f"{shown(entry.path)} does not start with a SQLite header: not a database"
        )


def open_database(reader: BackupReader, entry: FileEntry) -> apsw.Connection:
    """A read-only connection to the backed-up database ``entry``, its pages fetched
    through ``reader`` as queries need them (see the module's text for what is refused).

    ``NotADatabase`` if ``entry`` is not a SQLite database of the backup. Damage of
    the stored data surfaces from the statement that reads it (``RepositoryDamaged``).
    """
    if entry.type != "file":
        raise NotADatabase(f"{shown(entry.path)} is a {entry.type}, not a database")
    backup_file = reader.file(entry)
    _check_header(backup_file, entry)
    vfs = _the_vfs()
    name = vfs.register(backup_file)
    try:
        connection = apsw.Connection(
            f"file:{name}?immutable=1",
            flags=apsw.SQLITE_OPEN_READONLY | apsw.SQLITE_OPEN_URI,
            vfs=VFS_NAME,
        )
    finally:
        vfs.forget(name)
    try:
        connection.limit(apsw.SQLITE_LIMIT_ATTACHED, 0)
        connection.limit(apsw.SQLITE_LIMIT_LENGTH, MAX_VALUE_BYTES)
        connection.config(apsw.SQLITE_DBCONFIG_DEFENSIVE, 1)
        connection.config(apsw.SQLITE_DBCONFIG_TRUSTED_SCHEMA, 0)
        connection.config(apsw.SQLITE_DBCONFIG_ENABLE_LOAD_EXTENSION, 0)
        connection.execute("PRAGMA temp_store = MEMORY")  # sorts never spill to a temp file
        connection.authorizer = _authorize
    except apsw.Error as exc:  # a header that says SQLite over pages that are not
        connection.close()
        raise NotADatabase(
            f"{shown(entry.path)} does not open as a SQLite database: {exc}"
        ) from None
    except BaseException:
        connection.close()
        raise
    return connection


# ------------------------------------------------------------------------- choosing
def databases(manifest: Manifest) -> list[FileEntry]:
    """The SQLite databases a backup holds, largest first."""
    found = [entry for entry in manifest.files if entry.type == "file" and entry.sqlite]
    found.sort(key=lambda entry: (-entry.size, entry.path))
    return found


def choose_database(manifest: Manifest, path: str | None, largest: bool = False) -> FileEntry:
    """The database ``path`` names in the backup; without one, the only database (or the
    largest with ``largest``). ``DatabaseNotFound`` naming the databases there are."""
    found = databases(manifest)
    listed = ", ".join(shown(entry.path) for entry in found[:20]) or "none"
    if path is None:
        if len(found) == 1 or (found and largest):
            return found[0]
        if not found:
            raise DatabaseNotFound(f"backup {manifest.id} holds no SQLite database")
        raise DatabaseNotFound(
            f"backup {manifest.id} holds {len(found)} databases; name one: {listed}"
        )
    wanted = path.strip().removeprefix("./").strip("/")
    for entry in manifest.files:
        if entry.path == wanted:
            if entry.type != "file" or not entry.sqlite:
                raise NotADatabase(
                    f"{shown(entry.path)} in backup {manifest.id} is not a SQLite database; "
                    f"its databases: {listed}"
                )
            return entry
    raise DatabaseNotFound(
        f"no database {shown(path)} in backup {manifest.id}; its databases: {listed}"
    )


# -------------------------------------------------------------------------- queries
@dataclass(frozen=True, slots=True)
class QueryResult:
    """Columns and rows of one statement (values as SQLite gave them: bytes for
    blobs); ``truncated`` when rows were left out for the row or byte limit."""

    columns: list[str]
    rows: list[tuple[Any, ...]]
    truncated: bool
    elapsed: float  # seconds
    fetched_bytes: int  # fetched from the store by this query


def json_value(value: object) -> object:
    """A value as JSON can carry it: a blob as its size and first bytes in hex, a float
    that JSON cannot write (inf, nan) as text."""
    if isinstance(value, bytes):
        return {"blob": len(value), "hex": value[:BLOB_PREFIX_BYTES].hex()}
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def _cost(value: object) -> int:
    """What a value adds to a result's memory (a blob in full, though only its start
    is shown: the row holds all of it)."""
    if isinstance(value, str | bytes):
        return len(value)
    return 8


def _check_text(sql: str, bindings: tuple[Any, ...] | dict[str, Any] | None) -> None:
    """``QueryRefused`` for text SQLite cannot take: apsw raises ValueError for a NUL
    and UnicodeEncodeError for a lone surrogate (undecodable bytes of a command line,
    ``\\ud800`` in JSON)."""
    values = bindings.values() if isinstance(bindings, dict) else bindings or ()
    for text in (sql, *(value for value in values if isinstance(value, str))):
        if "\0" in text and text is sql:
            raise QueryRefused("a query cannot hold a NUL character")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise QueryRefused(
                "the query or a parameter is not valid Unicode text (a lone surrogate)"
            ) from None


class Database:
    """A backed-up database open for queries (``open_database``), and its reader."""

    def __init__(self, reader: BackupReader, entry: FileEntry) -> None:
        self.reader = reader
        self.entry = entry
        self.connection = open_database(reader, entry)

    def close(self) -> None:
        self.connection.close()

    def query(
        self,
        sql: str,
        bindings: tuple[Any, ...] | dict[str, Any] | None = None,
        max_rows: int = MAX_ROWS,
        time_limit: float = CLI_TIME_LIMIT,
        max_bytes: int = MAX_RESULT_BYTES,
    ) -> QueryResult:
        """Run one statement that reads (``bindings``: its parameters); at most
        ``max_rows`` rows and about ``max_bytes`` of values are kept (the statement
        stops there).

        ``QueryRefused`` (SQLite's message) for bad SQL, a statement that would do
        anything but read, or several statements; ``QueryTimeout`` past ``time_limit``.
        """
        if max_rows < 0:
            raise QueryRefused("the row limit is a number of rows, at least 0")
        _check_text(sql, bindings)
        started = time.monotonic()
        fetched = self.reader.fetched_bytes
        statements = 0
        columns: list[str] = []

        def one_statement(cursor: apsw.Cursor, sql: str, bindings: object) -> bool:
            """Keeps the statement's columns (known before its first row, or without
            any row); a second statement is refused."""
            nonlocal statements, columns
            if not cursor.has_vdbe:  # a comment after the statement: nothing to run
                return True
            statements += 1
            columns = [name for name, _ in cursor.get_description()]
            return statements == 1

        rows: list[tuple[Any, ...]] = []
        truncated = False
        size = 0
        with self._time_limit(time_limit):
            cursor = self.connection.cursor()
            cursor.exec_trace = one_statement
            try:
                cursor.execute(sql, bindings)
                for row in cursor:
                    if len(rows) >= max_rows or size > max_bytes:
                        truncated = True
                        break
                    size += sum(_cost(value) for value in row)
                    rows.append(tuple(row))
            except apsw.ExecTraceAbort:
                raise QueryRefused("one statement at a time, please") from None
            except apsw.InterruptError:
                raise QueryTimeout(
                    f"the query ran longer than {time_limit:g} seconds and was stopped"
                ) from None
            except apsw.AuthError as exc:
                raise QueryRefused(
                    f"{exc}: only reading is allowed (SELECT, and PRAGMAs that read)"
                ) from None
            except UnicodeDecodeError:
                raise QueryRefused(
                    "a text value of the result is not valid UTF-8: select it as "
                    "CAST(column AS BLOB) or hex(column)"
                ) from None
            except (apsw.CorruptError, apsw.NotADBError) as exc:
                raise QueryRefused(f"the backed-up database is malformed: {exc}") from None
            except apsw.Error as exc:  # SQLite's own refusals: bad SQL, too big, no memory
                raise QueryRefused(str(exc)) from None
            finally:
                cursor.close(force=True)
        return QueryResult(
            columns,
            rows,
            truncated,
            time.monotonic() - started,
            self.reader.fetched_bytes - fetched,
        )

    @contextmanager
    def _time_limit(self, seconds: float) -> Iterator[None]:
        deadline = time.monotonic() + seconds

        def past_deadline() -> bool:
            return time.monotonic() > deadline

        self.connection.set_progress_handler(past_deadline, PROGRESS_STEPS)
        try:
            yield
        finally:
            self.connection.set_progress_handler(None)

    def tables(self) -> list[str]:
        """Names of the tables and views (SQLite's own left out)."""
        result = self.query(
            "SELECT name FROM sqlite_schema WHERE type IN ('table', 'view') "
            "AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' ORDER BY name"
        )
        return [row[0] for row in result.rows]

    def schema(self, table: str | None = None) -> list[str]:
        """The CREATE statements of every table, view, index and trigger (of ``table``)."""
        result = self.query(
            "SELECT sql FROM sqlite_schema WHERE sql IS NOT NULL "
            "AND (:table IS NULL OR tbl_name = :table COLLATE NOCASE) "
            "ORDER BY tbl_name, type DESC, name",
            {"table": table},
        )
        return [row[0] for row in result.rows]
