"""What changed between two backups: files from the manifests, rows of SQLite databases.

Files are compared by their chunk-list ids: equal ids are equal content, so no
file data is fetched for them. A database present in both backups is compared
row by row through SQLite (keyed by rowid, or by primary key for WITHOUT ROWID
tables, as ``sqldiff`` pairs rows), reading only what differs where the
page-aligned chunks prove the rest identical (``plan_pages``):

- a chunk with the same blob id at the same offset on both sides holds the same
  pages, known from the chunk lists alone;
- each b-tree is walked through its interior pages (on both sides) to find its
  leaves and, for rowid tables, each leaf's key range;
- a leaf of the same table on both sides whose page is identical holds the same
  cells; the rows of every other leaf (either side) are compared, by querying
  both databases for the key ranges of those leaves;
- a WITHOUT ROWID table (an index b-tree) keeps rows on its interior pages too:
  the primary keys on each of its pages that differ are looked up on both sides;
- candidate leaves are confirmed, their overflow chains walked and their key
  ranges compared together, in key order, so the reader's cache still holds the
  pages SQLite reads;
- every page that differs must then be accounted for: a b-tree page, a freelist
  or pointer-map page, or an overflow page of a row that was compared (or of an
  index, or of a table compared in full). One that is not (an overflow page
  rewritten in place under an identical leaf) sends every table to a full
  comparison; so does anything the structure walk cannot follow, a page-size
  change, or more than half the pages differing (a VACUUM).

The method taken is reported per database and per table.
"""

from __future__ import annotations

import math
import stat
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cloudkeep.backups import btree
from cloudkeep.backups.manifest import FileEntry, Manifest
from cloudkeep.errors import NotADatabase, RepositoryDamaged, UserError
from cloudkeep.repository.untrusted import shown

if TYPE_CHECKING:
    import apsw

    from cloudkeep.backups.reader import BackupReader

#: Rows listed per table with ``rows`` (the counts are always complete).
DEFAULT_MAX_ROWS = 100
#: Bytes of row values one diff lists at most (``rows``), all its tables together: a
#: table's listing stops there (``truncated``), however large its values.
MAX_LISTED_BYTES = 16 * 1024 * 1024
#: Above this share of differing pages, walking the structure saves nothing.
FULL_COMPARE_SHARE = 0.5
#: Pages the plan keeps in memory (both sides together).
PAGE_MEMORY_BYTES = 32 * 1024 * 1024
#: Bytes of a blob shown in a listed row (hex).
BLOB_PREVIEW = 16


# ----------------------------------------------------------------------- files
_TYPE_BITS = {"file": stat.S_IFREG, "dir": stat.S_IFDIR, "symlink": stat.S_IFLNK}


def _mode_text(kind: str, mode: int | None) -> str:
    """A mode as ``ls -l`` (and ``cloudkeep ls --json``, ``GET .../files``) write it."""
    return stat.filemode(_TYPE_BITS.get(kind, 0) | (mode or 0))


@dataclass(frozen=True, slots=True)
class FileChange:
    path: str
    type_a: str | None  # None: not in backup A
    type_b: str | None
    size_a: int = 0
    size_b: int = 0
    mode_a: int | None = None
    mode_b: int | None = None
    what: tuple[str, ...] = ()  # for a changed entry: content, type, mode, target

    def to_json(self) -> dict[str, Any]:
        if self.type_a is None:
            return {"path": self.path, "type": self.type_b, "size": self.size_b}
        if self.type_b is None:
            return {"path": self.path, "type": self.type_a, "size": self.size_a}
        return {
            "path": self.path,
            "size_a": self.size_a,
            "size_b": self.size_b,
            "type_a": self.type_a,
            "type_b": self.type_b,
            "mode_a": _mode_text(self.type_a, self.mode_a),
            "mode_b": _mode_text(self.type_b, self.mode_b),
            "changes": list(self.what),
        }


@dataclass(frozen=True, slots=True)
class FileDiff:
    added: list[FileChange]
    removed: list[FileChange]
    changed: list[FileChange]


def diff_files(a: Manifest, b: Manifest) -> FileDiff:
    """Entries added, removed and changed from ``a`` to ``b`` (manifests only).

    A file is changed when its content (chunk-list ids), type, permission bits or
    link target differ; a new time alone is not a change, as in ``restic diff``.
    """
    old = {entry.path: entry for entry in a.files}
    new = {entry.path: entry for entry in b.files}
    added = [_one_side(new[path], False) for path in sorted(new.keys() - old.keys())]
    removed = [_one_side(old[path], True) for path in sorted(old.keys() - new.keys())]
    changed = []
    for path in sorted(old.keys() & new.keys()):
        before, after = old[path], new[path]
        what = tuple(
            name
            for name, differs in (
                ("type", before.type != after.type),
                (
                    "content",
                    before.type == after.type == "file" and before.content != after.content,
                ),
                ("mode", before.mode != after.mode),
                ("target", before.target != after.target),
            )
            if differs
        )
        if what:
            changed.append(
                FileChange(
                    path,
                    before.type,
                    after.type,
                    before.size,
                    after.size,
                    before.mode,
                    after.mode,
                    what,
                )
            )
    return FileDiff(added, removed, changed)


def _one_side(entry: FileEntry, in_a: bool) -> FileChange:
    if in_a:
        return FileChange(entry.path, entry.type, None, size_a=entry.size, mode_a=entry.mode)
    return FileChange(entry.path, None, entry.type, size_b=entry.size, mode_b=entry.mode)


# ------------------------------------------------------------------- databases
@dataclass(slots=True)
class DatabaseSide:
    """One backed-up copy of a database: its chunks, random reads, a SQLite connection."""

    size: int
    chunks: Callable[[], list[tuple[int, int, bytes]]]
    read: Callable[[int, int], bytes]
    connect: Callable[[], apsw.Connection]


@dataclass(frozen=True, slots=True)
class _Table:
    name: str
    columns: tuple[str, ...]
    without_rowid: bool
    primary_key: tuple[str, ...]  # WITHOUT ROWID tables: the key columns in key order
    root: int
    sql: str


class ListingBudget:
    """Bytes of values one diff may still list (shared by its tables)."""

    def __init__(self, left: int = MAX_LISTED_BYTES) -> None:
        self.left = left


@dataclass(slots=True)
class RowSample:
    """The rows themselves (with ``rows``), at most ``limit`` in all, within ``budget``."""

    limit: int
    budget: ListingBudget = field(default_factory=ListingBudget)
    added: list[dict[str, Any]] = field(default_factory=list)
    removed: list[dict[str, Any]] = field(default_factory=list)
    changed: list[dict[str, Any]] = field(default_factory=list)
    truncated: bool = False

    def room(self) -> bool:
        listed = len(self.added) + len(self.removed) + len(self.changed)
        if listed < self.limit and self.budget.left > 0:
            return True
        self.truncated = True
        return False

    def keep(self, kind: str, row: dict[str, Any]) -> None:
        getattr(self, kind).append(row)
        self.budget.left -= _weight(row)

    def to_json(self) -> dict[str, Any]:
        return {
            "added": self.added,
            "removed": self.removed,
            "changed": self.changed,
            "truncated": self.truncated,
        }


@dataclass(slots=True)
class TableDiff:
    name: str
    added: int = 0
    removed: int = 0
    changed: int = 0
    schema: str = ""  # "", "added", "removed", "altered" (columns added), "incompatible"
    method: str = "unchanged"  # unchanged | pages | full
    ranges: int = 0  # rowid ranges compared (method "pages")
    keys: int = 0  # primary keys looked up (method "pages", WITHOUT ROWID tables)
    reason: str = ""  # why a full comparison
    rows: RowSample | None = None

    @property
    def differs(self) -> bool:
        return bool(self.added or self.removed or self.changed or self.schema)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "added": self.added,
            "removed": self.removed,
            "changed": self.changed,
            "schema": self.schema or None,
            "method": self.method,
        }
        if self.method == "pages":
            out["ranges" if self.ranges or not self.keys else "keys"] = self.ranges or self.keys
        if self.reason:
            out["reason"] = self.reason
        if self.rows is not None:
            out["rows"] = self.rows.to_json()
        return out


@dataclass(slots=True)
class DatabaseDiff:
    path: str
    status: str  # changed | added | removed
    tables: list[TableDiff] = field(default_factory=list)
    schema: list[dict[str, str]] = field(default_factory=list)  # {name, type, change}
    method: str = "pages"  # pages: only differing pages' rows compared; full
    reason: str = ""
    pages: int = 0  # pages of the larger side
    pages_differing: int = 0

    @property
    def schema_changed(self) -> list[str]:
        return [item["name"] for item in self.schema]

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "status": self.status,
            "tables": [table.to_json() for table in self.tables],
            "schema_changed": self.schema_changed,
            "schema": self.schema,
            "method": self.method,
            "reason": self.reason or None,
            "pages": self.pages,
            "pages_differing": self.pages_differing,
        }


@dataclass(slots=True)
class BackupDiff:
    a: str
    b: str
    files: FileDiff
    databases: list[DatabaseDiff]
    fetched_bytes: int = 0
    elapsed_ms: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "a": self.a,
            "b": self.b,
            "files": {
                "added": [change.to_json() for change in self.files.added],
                "removed": [change.to_json() for change in self.files.removed],
                "changed": [change.to_json() for change in self.files.changed],
            },
            "databases": [database.to_json() for database in self.databases],
            "fetched_bytes": self.fetched_bytes,
            "elapsed_ms": round(self.elapsed_ms, 1),
        }


def diff_backups(
    reader: BackupReader,
    a: Manifest,
    b: Manifest,
    rows: bool = False,
    max_rows: int = DEFAULT_MAX_ROWS,
) -> BackupDiff:
    """The difference from backup ``a`` to backup ``b`` (``reader``: their repository's).

    Every SQLite database changed, added or removed is compared row by row; one
    whose content lists are equal is not read at all.
    """
    import apsw

    from cloudkeep.backups.sql import open_database

    started = time.perf_counter()
    fetched = reader.fetched_bytes
    files = diff_files(a, b)

    def side(entry: FileEntry | None) -> DatabaseSide | None:
        if entry is None or entry.type != "file" or not entry.sqlite:
            return None
        backup_file = reader.file(entry)
        return DatabaseSide(
            entry.size,
            backup_file.chunks,
            backup_file.read,
            lambda: open_database(reader, entry),
        )

    old = {entry.path: entry for entry in a.files if entry.type == "file" and entry.sqlite}
    new = {entry.path: entry for entry in b.files if entry.type == "file" and entry.sqlite}
    databases = []
    budget = ListingBudget()
    for path in sorted(old.keys() | new.keys()):
        before, after = old.get(path), new.get(path)
        if before is not None and after is not None and before.content == after.content:
            continue
        try:
            databases.append(diff_database(path, side(before), side(after), rows, max_rows, budget))
        except (apsw.Error, NotADatabase) as exc:
            where = a.id if after is None else b.id if before is None else f"{a.id} or {b.id}"
            raise RepositoryDamaged(
                f"the database {shown(path)} of backup {where} does not read as SQLite "
                f"({shown(str(exc))}): the backup is damaged"
            ) from None
        except UnicodeDecodeError:  # SQLite keeps text bytes as written; Python decodes them
            where = a.id if after is None else b.id if before is None else f"{a.id} or {b.id}"
            raise UserError(
                f"the database {shown(path)} of backup {where} holds text that is not valid "
                "UTF-8: its rows cannot be compared (cloudkeep sql can read it as "
                "hex(column) or CAST(column AS BLOB))"
            ) from None
    return BackupDiff(
        a.id,
        b.id,
        files,
        databases,
        reader.fetched_bytes - fetched,
        (time.perf_counter() - started) * 1000,
    )


def diff_database(
    path: str,
    a: DatabaseSide | None,
    b: DatabaseSide | None,
    rows: bool = False,
    max_rows: int = DEFAULT_MAX_ROWS,
    budget: ListingBudget | None = None,
) -> DatabaseDiff:
    """Row and schema differences of one database (None: absent from that backup);
    ``budget``: the bytes of rows still to list, shared by the databases of a diff."""
    budget = budget if budget is not None else ListingBudget()
    left = budget.left
    status = "added" if a is None else "removed" if b is None else "changed"
    result = DatabaseDiff(path, status)
    conn_a = a.connect() if a is not None else None
    conn_b = b.connect() if b is not None else None
    try:
        schema_a = _schema(conn_a) if conn_a is not None else {}
        schema_b = _schema(conn_b) if conn_b is not None else {}
        result.schema = _schema_changes(schema_a, schema_b)
        tables_a = _tables(conn_a, schema_a) if conn_a is not None else {}
        tables_b = _tables(conn_b, schema_b) if conn_b is not None else {}
        plan: PagePlan | None = None
        if a is not None and b is not None:
            plan = plan_pages(a, b, tables_a, tables_b, _roots(schema_a), _roots(schema_b))
            result.method, result.reason = plan.method, plan.reason
            result.pages, result.pages_differing = plan.pages, plan.differing
        else:
            result.method, result.reason = "full", f"the database was {status}"
        names = sorted(tables_a.keys() | tables_b.keys(), key=str.lower)

        def compare(plan: PagePlan | None) -> list[TableDiff]:
            return [
                _diff_table(
                    name,
                    tables_a.get(name),
                    tables_b.get(name),
                    conn_a,
                    conn_b,
                    plan,
                    rows,
                    max_rows,
                    budget,
                )
                for name in names
            ]

        try:
            result.tables = compare(plan)
            reason = plan.unaccounted(tables_a, tables_b) if plan is not None else ""
        except btree.MalformedPage as exc:  # a compared leaf's overflow chains
            reason = f"cannot follow the database's structure ({exc})"
        if reason and plan is not None:
            # A changed page may hold data of a row on an unchanged page: compare anew.
            plan = _all_full(tables_a, tables_b, reason, plan.pages, plan.differing)
            budget.left = left  # the first comparison's listing is dropped
            result.method, result.reason = plan.method, plan.reason
            result.tables = compare(plan)
        result.tables = [table for table in result.tables if table.differs]
    finally:
        for conn in (conn_a, conn_b):
            if conn is not None:
                conn.close()
    return result


def _schema(conn: apsw.Connection) -> dict[str, tuple[str, str, int, str]]:
    """name -> (type, table name, root page, sql) of every schema object."""
    return {
        name: (kind, table, root or 0, sql or "")
        for kind, name, table, root, sql in conn.execute(
            "SELECT type, name, tbl_name, rootpage, sql FROM sqlite_schema"
        )
    }


def _schema_changes(
    old: dict[str, tuple[str, str, int, str]], new: dict[str, tuple[str, str, int, str]]
) -> list[dict[str, str]]:
    changes = []
    for name in sorted(old.keys() | new.keys(), key=str.lower):
        before, after = old.get(name), new.get(name)
        if before is None or after is None:
            kind = (after or before or ("", "", 0, ""))[0]
            changes.append(
                {"name": name, "type": kind, "change": "added" if before is None else "removed"}
            )
        elif (before[0], before[3]) != (after[0], after[3]):
            changes.append({"name": name, "type": after[0], "change": "altered"})
    return changes


def _tables(
    conn: apsw.Connection, schema: dict[str, tuple[str, str, int, str]]
) -> dict[str, _Table]:
    """The ordinary tables (virtual tables hold no rows of their own; their shadow
    tables are ordinary tables and compared, as sqldiff does)."""
    flags = {
        name: (kind, bool(without_rowid))
        for name, kind, without_rowid in conn.execute(
            "SELECT name, type, wr FROM pragma_table_list WHERE schema = 'main'"
        )
    }
    tables = {}
    for name, (kind, _table, root, sql) in schema.items():
        if kind != "table" or root <= 0 or name.lower().startswith("sqlite_"):
            continue
        info = list(conn.execute("SELECT name, pk FROM pragma_table_info(?)", (name,)))
        without_rowid = flags.get(name, ("table", False))[1]
        key = tuple(column for column, pk in sorted((r for r in info if r[1]), key=lambda r: r[1]))
        tables[name] = _Table(
            name, tuple(r[0] for r in info), without_rowid, key if without_rowid else (), root, sql
        )
    return tables


# ----------------------------------------------------------------- page plan
@dataclass(slots=True)
class PagePlan:
    """Which rows of each table must be compared: ``ranges[name]`` lists a rowid
    table's candidate leaves (each side's leaves not provably unchanged; [] when
    there are none), compared range by range as they are confirmed
    (``_compare_leaves``); ``keys[name]`` the primary keys of a WITHOUT ROWID table
    to look up; a table in neither is compared in full (``full[name]`` says why)."""

    method: str
    reason: str = ""
    pages: int = 0
    differing: int = 0
    ranges: dict[str, list[_Candidate]] = field(default_factory=dict)
    keys: dict[str, list[tuple[Any, ...]]] = field(default_factory=dict)  # WITHOUT ROWID
    full: dict[str, str] = field(default_factory=dict)
    planner: _Planner | None = None

    def unaccounted(self, tables_a: dict[str, _Table], tables_b: dict[str, _Table]) -> str:
        """Why the comparison made may have missed a change ("" if it did not): once
        every compared row's overflow pages are known, each changed page must be
        accounted for (see ``_Planner.loose``)."""
        if self.planner is None:
            return ""
        try:
            for index, tables in ((0, tables_a), (1, tables_b)):
                loose = self.planner.loose(index, tables)
                if loose:
                    side = "first" if index == 0 else "second"
                    return (
                        f"{loose} changed page(s) of the {side} backup are overflow pages "
                        "of rows on unchanged pages"
                    )
        except btree.MalformedPage as exc:
            return f"cannot follow the database's structure ({exc})"
        return ""


def identical_pages(
    chunks_a: Iterable[tuple[int, int, bytes]],
    chunks_b: Iterable[tuple[int, int, bytes]],
    page_size: int,
) -> set[int]:
    """Pages (numbered from 1) lying wholly in a chunk with the same blob id at the
    same offset and length on both sides: their bytes are equal, unread."""
    other = {offset: (length, blob) for offset, length, blob in chunks_b}
    same: set[int] = set()
    for offset, length, blob in chunks_a:
        if other.get(offset) == (length, blob):
            first = -(-offset // page_size)
            stop = (offset + length) // page_size
            same.update(range(first + 1, stop + 1))
    return same


class _Pages:
    """Page reads of one side (``read_page(pgno)``), remembered up to a budget: the
    plan reads a page several times (structure, comparison with the other side,
    overflow chains), and a reader's cache keeps whole frames, which a sparse read
    of many frames evicts before the page is wanted again. A page the other side
    holds identically (``twin``, ``same``) is taken from the other side's memory."""

    def __init__(self, side: DatabaseSide, page_size: int, budget: int) -> None:
        self.side = side
        self.page_size = page_size
        self.count = side.size // page_size
        self.memo: OrderedDict[int, bytes] = OrderedDict()
        self.room = budget // page_size
        self.twin: _Pages | None = None
        self.same: Callable[[int], bool] = lambda pgno: False

    def __call__(self, pgno: int) -> bytes:
        if not 0 < pgno <= self.count:
            raise btree.MalformedPage(f"page {pgno} lies past the end of the database")
        data = self.memo.get(pgno)
        if data is None and self.twin is not None and self.same(pgno):
            data = self.twin.memo.get(pgno)
        if data is None:
            data = self.side.read((pgno - 1) * self.page_size, self.page_size)
            self.memo[pgno] = data
            if len(self.memo) > self.room:
                self.memo.popitem(last=False)
        return data


def plan_pages(
    a: DatabaseSide,
    b: DatabaseSide,
    tables_a: dict[str, _Table],
    tables_b: dict[str, _Table],
    roots_a: set[int],
    roots_b: set[int],
) -> PagePlan:
    """Decide which rows must be compared, from chunk lists and b-tree structure
    (``roots_*``: every b-tree's root page on each side, from its sqlite_schema)."""
    try:
        header_a = btree.parse_header(a.read(0, btree.HEADER_SIZE))
        header_b = btree.parse_header(b.read(0, btree.HEADER_SIZE))
    except btree.MalformedPage as exc:
        return _all_full(tables_a, tables_b, f"cannot read a database header ({exc})")
    size = header_a.page_size
    if (header_a.page_size, header_a.reserved, header_a.text_encoding) != (
        header_b.page_size,
        header_b.reserved,
        header_b.text_encoding,
    ):
        return _all_full(tables_a, tables_b, "the page size or text encoding changed")
    if a.size % size or b.size % size:
        return _all_full(tables_a, tables_b, "a database is not a whole number of pages")
    pages_a = _Pages(a, size, PAGE_MEMORY_BYTES // 2)
    pages_b = _Pages(b, size, PAGE_MEMORY_BYTES // 2)
    total = max(pages_a.count, pages_b.count)
    same = identical_pages(a.chunks(), b.chunks(), size)
    differing = set(range(1, total + 1)) - same
    pages_a.twin, pages_b.twin = pages_b, pages_a
    pages_a.same = pages_b.same = same.__contains__
    if len(differing) > FULL_COMPARE_SHARE * total:
        reason = f"{len(differing)} of {total} pages differ"
        return _all_full(tables_a, tables_b, reason, total, len(differing))
    try:
        layout_a = _Layout.of(pages_a, header_a, roots_a)
        layout_b = _Layout.of(pages_b, header_b, roots_b)
        planner = _Planner(layout_a, layout_b, differing, header_a.text_encoding)
        plan = PagePlan("pages", pages=total, differing=len(differing), planner=planner)
        planner.leaves(tables_a, tables_b, plan)
    except btree.MalformedPage as exc:
        reason = f"cannot follow the database's structure ({exc})"
        return _all_full(tables_a, tables_b, reason, total, len(differing))
    return plan


class _Planner:
    """Leaves to compare, and the check that every changed page is accounted for."""

    def __init__(
        self, layout_a: _Layout, layout_b: _Layout, differing: set[int], encoding: int
    ) -> None:
        self.layouts = (layout_a, layout_b)
        self.differing = differing
        self.encoding = encoding
        self.equal: dict[int, bool] = {}
        self.compared: set[str] = set()  # tables whose rows pair (both sides)
        self.accounted: tuple[set[int], set[int]] = (set(), set())  # overflow of compared rows

    def changed(self, pgno: int) -> bool:
        """Whether a page's bytes differ: unread when its chunk is the same on both
        sides; read on both sides when its chunk differs (another page of the chunk
        may be what changed)."""
        if pgno not in self.differing:
            return False
        pages_a, pages_b = self.layouts[0].pages, self.layouts[1].pages
        if pgno > pages_a.count or pgno > pages_b.count:
            return True
        if pgno not in self.equal:
            self.equal[pgno] = pages_a(pgno) == pages_b(pgno)
        return not self.equal[pgno]

    def leaves(
        self, tables_a: dict[str, _Table], tables_b: dict[str, _Table], plan: PagePlan
    ) -> None:
        """Each compared table's pages holding rows that may differ, into ``plan``.

        A page of that table on both sides with the same bytes holds the same cells.
        Rows live on the leaves of a rowid table: its leaves in differing chunks or
        on one side only are candidates, confirmed later, next to their comparison
        (so their pages are read once). A WITHOUT ROWID table keeps entries on its
        interior pages too: those pages are settled here and their keys listed.
        """
        for name in tables_a.keys() & tables_b.keys():
            table_a, table_b = tables_a[name], tables_b[name]
            if not _compatible(table_a, table_b):
                continue  # every row is reported on both sides
            if len(table_b.columns) > len(table_a.columns):
                # Rows on unchanged pages read the added columns' defaults in B only.
                plan.full[name] = "columns were added"
                continue
            self.compared.add(name)
            shape_a = self.layouts[0].trees[table_a.root]
            shape_b = self.layouts[1].trees[table_b.root]
            if not table_a.without_rowid:
                common = shape_a.leaves.keys() & shape_b.leaves.keys()
                plan.ranges[name] = [
                    _Candidate(low, high, index, pgno, pgno in common)
                    for index, shape in ((0, shape_a), (1, shape_b))
                    for pgno, (low, high) in shape.leaves.items()
                    if pgno in self.differing or pgno not in common
                ]
                continue
            rows_a = set(shape_a.leaves) | shape_a.interior
            rows_b = set(shape_b.leaves) | shape_b.interior
            stable = {pgno for pgno in rows_a & rows_b if not self.changed(pgno)}
            changed_a = sorted(rows_a - stable)
            changed_b = sorted(rows_b - stable)
            for pgno in changed_a:
                self.settle(0, pgno)
            for pgno in changed_b:
                self.settle(1, pgno)
            keys = self.keys(changed_a, changed_b, len(table_a.primary_key))
            if keys is None:
                plan.full[name] = "a changed page holds a primary key that overflows"
            else:
                plan.keys[name] = keys

    def settle(self, index: int, pgno: int) -> None:
        """Note the overflow pages of the cells of a page whose rows are compared."""
        layout = self.layouts[index]
        self.accounted[index].update(layout.overflow_of([pgno]))

    def keys(
        self, changed_a: list[int], changed_b: list[int], width: int
    ) -> list[tuple[Any, ...]] | None:
        """The primary keys on the given pages of a WITHOUT ROWID table, both sides;
        None if one does not lie wholly on its page."""
        found: dict[tuple[Any, ...], tuple[Any, ...]] = {}
        for index, pages in ((0, changed_a), (1, changed_b)):
            read, usable = self.layouts[index].pages, self.layouts[index].usable
            for pgno in pages:
                data = read(pgno)
                page = btree.parse_page(data, pgno)
                for cell in page.cells:
                    key = btree.record_prefix(data, page.kind, cell, usable, width, self.encoding)
                    if key is None:
                        return None
                    found.setdefault(_key(key), key)
        return list(found.values())

    def loose(self, index: int, tables: dict[str, _Table]) -> int:
        """How many changed pages of one side are not accounted for.

        A changed page that is not structure (b-tree, freelist, pointer map) is an
        overflow page: harmless when its row was compared, or when it belongs to an
        index, an internal table or a table reported in full.
        """
        layout = self.layouts[index]
        loose = {
            pgno
            for pgno in self.differing - layout.structure - self.accounted[index]
            if pgno <= layout.pages.count and self.changed(pgno)
        }
        if not loose:
            return 0
        compared = {tables[name].root for name in self.compared}
        owners = []
        for root in layout.trees.keys() - compared:
            owners += sorted(pgno for pgno in layout.pages_of(root) if self.changed(pgno))
        return len(loose - layout.overflow_of(owners))


@dataclass(frozen=True, slots=True, order=True)
class _Candidate:
    """A leaf of a rowid table (on side ``index``) whose rows may differ: keys in
    ``(low, high]``; ``common``: a leaf of the table on both sides."""

    low: int
    high: int
    index: int
    pgno: int
    common: bool


def _all_full(
    tables_a: dict[str, _Table],
    tables_b: dict[str, _Table],
    reason: str,
    pages: int = 0,
    differing: int = 0,
) -> PagePlan:
    plan = PagePlan("full", reason, pages, differing)
    plan.full = dict.fromkeys(tables_a.keys() & tables_b.keys(), reason)
    return plan


@dataclass(slots=True)
class _Layout:
    """One side's page roles: each b-tree's shape, the freelist and the fixed pages."""

    pages: _Pages
    usable: int
    trees: dict[int, btree.TreeShape]
    structure: set[int]  # b-tree, freelist, pointer-map, lock-byte pages and page 1
    # Overflow pages found so far, by the page whose cells own them: a page's chains are
    # followed once, and an overflow page is one cell's only (a page named by two
    # chains, or twice by one, is malformed). So all chains together read each page
    # at most once: crafted cells cannot make the plan cost cells x pages.
    chains: dict[int, set[int]] = field(default_factory=dict)
    claimed: set[int] = field(default_factory=set)

    @classmethod
    def of(cls, pages: _Pages, header: btree.DatabaseHeader, roots: set[int]) -> _Layout:
        """``roots``: every b-tree's root page (sqlite_schema's, page 1 included)."""
        trees = {root: btree.tree_shape(pages, root, pages.count) for root in roots}
        structure = {1}
        for shape in trees.values():
            structure |= shape.interior
            structure |= shape.leaves.keys()
        structure |= btree.freelist(pages, header, pages.count)
        structure |= btree.pointer_map_pages(header, pages.count)
        structure.add(btree.lock_byte_page(header.page_size))
        return cls(pages, header.usable, trees, structure)

    def pages_of(self, root: int) -> set[int]:
        shape = self.trees[root]
        return shape.interior | shape.leaves.keys()

    def overflow_of(self, owners: Iterable[int]) -> set[int]:
        """The overflow pages of the cells on the pages ``owners``."""
        found: set[int] = set()
        for pgno in owners:
            if pgno not in self.chains:
                self.chains[pgno] = self._chains(pgno)
            found |= self.chains[pgno]
        return found

    def _chains(self, pgno: int) -> set[int]:
        data = self.pages(pgno)
        page = btree.parse_page(data, pgno)
        owned: set[int] = set()
        for cell in page.cells:
            first, spilled = btree.first_overflow(data, page.kind, cell, self.usable)
            if not first:
                continue
            for overflow in btree.overflow_chain(
                self.pages, first, spilled, self.usable, self.pages.count
            ):
                if overflow in owned or overflow in self.claimed:
                    raise btree.MalformedPage(f"overflow page {overflow} is in two chains")
                owned.add(overflow)
        self.claimed |= owned
        return owned


def _roots(schema: dict[str, tuple[str, str, int, str]]) -> set[int]:
    """Every b-tree's root page: sqlite_schema's (page 1) and each table's and index's."""
    return {1} | {root for _kind, _table, root, _sql in schema.values() if root > 0}


# ------------------------------------------------------------------ row compare
def _compatible(a: _Table, b: _Table) -> bool:
    """Whether rows pair up as sqldiff pairs them: the same key, and B's columns are A's
    with columns added at the end (ALTER TABLE ADD COLUMN; missing values are NULL)."""
    if a.without_rowid != b.without_rowid:
        return False
    if [c.lower() for c in a.primary_key] != [c.lower() for c in b.primary_key]:
        return False
    head = [c.lower() for c in b.columns[: len(a.columns)]]
    return len(b.columns) >= len(a.columns) and head == [c.lower() for c in a.columns]


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _rowid_name(table: _Table) -> str | None:
    """A name that reaches the rowid (a column may hide ``rowid`` itself)."""
    taken = {column.lower() for column in table.columns}
    return next((name for name in ("rowid", "_rowid_", "oid") if name not in taken), None)


def _select(table: _Table, where: str = "") -> tuple[str, int]:
    """A query returning (key..., columns...) ordered by key, and the key's width."""
    columns = ", ".join(_quote(c) for c in table.columns)
    if table.without_rowid:
        key = ", ".join(_quote(c) for c in table.primary_key)
        return f"SELECT {key}, {columns} FROM {_quote(table.name)}{where}", len(table.primary_key)
    rowid = _rowid_name(table)
    if rowid is None:
        raise _Uncomparable("its columns hide rowid, _rowid_ and oid")
    order = f" ORDER BY {rowid}"
    return f"SELECT {rowid}, {columns} FROM {_quote(table.name)}{where}{order}", 1


class _Uncomparable(Exception):
    pass


def _diff_table(
    name: str,
    a: _Table | None,
    b: _Table | None,
    conn_a: apsw.Connection | None,
    conn_b: apsw.Connection | None,
    plan: PagePlan | None,
    rows: bool,
    max_rows: int,
    budget: ListingBudget,
) -> TableDiff:
    result = TableDiff(name, rows=RowSample(max_rows, budget) if rows else None)
    if a is None or b is None or conn_a is None or conn_b is None or not _compatible(a, b):
        # Added, removed, or rows that cannot pair: every row on each side counts.
        result.method = "full"
        result.schema = "added" if a is None else "removed" if b is None else "incompatible"
        if a is not None and conn_a is not None:
            result.removed = _each_row(conn_a, a, result, "removed")
        if b is not None and conn_b is not None:
            result.added = _each_row(conn_b, b, result, "added")
        return result
    if len(b.columns) > len(a.columns):
        result.schema = "altered"
    if plan is not None and name in plan.keys:
        keys = plan.keys[name]
        result.method, result.keys = "pages", len(keys)
        _compare_keys(conn_a, conn_b, a, b, result, keys)
        return result
    candidates = plan.ranges.get(name) if plan is not None else None
    if candidates is None or plan is None or plan.planner is None:
        result.method = "full"
        result.reason = plan.full.get(name, "") if plan is not None else ""
        _compare(conn_a, conn_b, a, b, result, None)
        return result
    _compare_leaves(conn_a, conn_b, a, b, result, plan.planner, candidates)
    return result


def _compare_leaves(
    conn_a: apsw.Connection,
    conn_b: apsw.Connection,
    a: _Table,
    b: _Table,
    result: TableDiff,
    planner: _Planner,
    candidates: list[_Candidate],
) -> None:
    """Compare the rows of the candidate leaves that differ, in key order: a leaf of
    the table on both sides with the same bytes is passed over; the others' key
    ranges are merged and compared as soon as each merged range is complete, while
    their pages are still in the reader's cache."""
    pending: list[int] | None = None  # [low, high] inclusive
    for candidate in sorted(candidates):
        if candidate.common and not planner.changed(candidate.pgno):
            continue
        planner.settle(candidate.index, candidate.pgno)
        low, high = candidate.low + 1, candidate.high
        if low > high:
            continue  # an empty range holds no row
        if pending is not None and low <= pending[1] + 1:
            pending[1] = max(pending[1], high)
            continue
        if pending is not None:
            _compare(conn_a, conn_b, a, b, result, [(pending[0], pending[1])])
            result.ranges += 1
        pending = [low, high]
    if pending is not None:
        _compare(conn_a, conn_b, a, b, result, [(pending[0], pending[1])])
        result.ranges += 1
    if result.ranges:
        result.method = "pages"


def _each_row(conn: apsw.Connection, table: _Table, result: TableDiff, kind: str) -> int:
    """Count a side's rows (listing them while the sample has room)."""
    if result.rows is None:
        (count,) = next(iter(conn.execute(f"SELECT count(*) FROM {_quote(table.name)}")))
        return int(count)
    try:
        query, width = _select(table)
    except _Uncomparable:
        query, width = f"SELECT NULL, * FROM {_quote(table.name)}", 1
    count = 0
    for row in conn.execute(query):
        count += 1
        if result.rows.room():
            result.rows.keep(kind, _listed(table, row, width))
    return count


def _compare(
    conn_a: apsw.Connection,
    conn_b: apsw.Connection,
    a: _Table,
    b: _Table,
    result: TableDiff,
    ranges: Sequence[tuple[int, int]] | None,
) -> None:
    """Pair rows by key (within rowid ``ranges`` only, if given) and count the differences.

    A WITHOUT ROWID table's rows pair as SQLite's ``=`` pairs its keys (collations
    such as NOCASE included, as sqldiff pairs them): every key of both sides is
    looked up on both sides."""
    if a.without_rowid:
        key = ", ".join(_quote(column) for column in a.primary_key)
        keys = [
            tuple(row)
            for conn in (conn_a, conn_b)
            for row in conn.execute(f"SELECT {key} FROM {_quote(a.name)}")
        ]
        _compare_keys(conn_a, conn_b, a, b, result, keys)
        return
    try:
        query_a, width = _select(a, "" if ranges is None else _between(a))
        query_b, _ = _select(b, "" if ranges is None else _between(b))
    except _Uncomparable as exc:
        result.method, result.reason = "skipped", f"not compared: {exc}"
        return
    pad = (None,) * (len(b.columns) - len(a.columns))
    spans: Iterable[tuple[int, int] | None] = [None] if ranges is None else ranges
    for span in spans:
        params = () if span is None else span
        rows_a = (row + pad for row in conn_a.execute(query_a, params))
        _count(_merge_by_rowid(rows_a, conn_b.execute(query_b, params)), a, b, result, width)


def _compare_keys(
    conn_a: apsw.Connection,
    conn_b: apsw.Connection,
    a: _Table,
    b: _Table,
    result: TableDiff,
    keys: Sequence[tuple[Any, ...]],
) -> None:
    """Look each primary key up on both sides (a WITHOUT ROWID table) and count."""
    width = len(a.primary_key)
    match = " AND ".join(f"{_quote(column)} = ?" for column in a.primary_key)
    query_a, _ = _select(a, f" WHERE {match}")
    query_b, _ = _select(b, f" WHERE {match}")
    pad = (None,) * (len(b.columns) - len(a.columns))

    def pairs() -> Iterator[tuple[Row | None, Row | None]]:
        seen: set[tuple[Any, ...]] = set()
        for key in keys:
            before = next(iter(conn_a.execute(query_a, key)), None)
            after = next(iter(conn_b.execute(query_b, key)), None)
            # A key found under a collation (NOCASE) may pair the same rows twice.
            found = (
                None if before is None else _key(before[:width]),
                None if after is None else _key(after[:width]),
            )
            if found in seen:
                continue
            seen.add(found)
            yield (None if before is None else before + pad), after

    _count(pairs(), a, b, result, width)


def _count(
    pairs: Iterable[tuple[Row | None, Row | None]],
    a: _Table,
    b: _Table,
    result: TableDiff,
    width: int,
) -> None:
    rows = result.rows
    for before, after in pairs:
        if before is None and after is not None:
            result.added += 1
            if rows is not None and rows.room():
                rows.keep("added", _listed(b, after, width))
        elif after is None and before is not None:
            result.removed += 1
            if rows is not None and rows.room():
                rows.keep("removed", _listed(a, before, width))
        elif before is not None and after is not None and not _same(before, after):
            result.changed += 1
            if rows is not None and rows.room():
                rows.keep("changed", _changed(b, before, after, width))


def _between(table: _Table) -> str:
    rowid = _rowid_name(table)
    if rowid is None:
        raise _Uncomparable("its columns hide rowid, _rowid_ and oid")
    return f" WHERE {rowid} BETWEEN ? AND ?"


Row = tuple[Any, ...]


def _merge_by_rowid(
    rows_a: Iterator[Row], rows_b: Iterable[Row]
) -> Iterator[tuple[Row | None, Row | None]]:
    """Pairs of rows with the same rowid (None where a side has none); both ordered."""
    iter_b = iter(rows_b)
    row_a = next(rows_a, None)
    row_b = next(iter_b, None)
    while row_a is not None or row_b is not None:
        if row_b is None or (row_a is not None and row_a[0] < row_b[0]):
            yield row_a, None
            row_a = next(rows_a, None)
        elif row_a is None or row_b[0] < row_a[0]:
            yield None, row_b
            row_b = next(iter_b, None)
        else:
            yield row_a, row_b
            row_a, row_b = next(rows_a, None), next(iter_b, None)


def _key(values: Row) -> tuple[Any, ...]:
    return tuple((type(value) is bytes, value) for value in values)


def _same(before: Row, after: Row) -> bool:
    """Equal values of equal storage class families (1 and 1.0 are equal, as
    SQLite's IS says; '1' and 1, or text and blob, are not)."""
    if len(before) != len(after):
        return False
    for x, y in zip(before, after, strict=True):
        if x is None or y is None:
            if x is not y:
                return False
        elif isinstance(x, str | bytes) or isinstance(y, str | bytes):
            if type(x) is not type(y) or x != y:
                return False
        elif x != y:
            return False
    return True


def _listed(table: _Table, row: Row, width: int) -> dict[str, Any]:
    values = row[width:]
    return {
        "key": _json_value(row[0]) if width == 1 else [_json_value(v) for v in row[:width]],
        "values": {c: _json_value(v) for c, v in zip(table.columns, values, strict=False)},
    }


def _changed(table: _Table, before: Row, after: Row, width: int) -> dict[str, Any]:
    key = before[0] if width == 1 else list(before[:width])
    columns = {
        column: {"a": _json_value(x), "b": _json_value(y)}
        for column, x, y in zip(table.columns, before[width:], after[width:], strict=False)
        if not _same((x,), (y,))
    }
    return {
        "key": _json_value(key) if width == 1 else [_json_value(v) for v in key],
        "columns": columns,
    }


def _weight(value: Any) -> int:
    """About the bytes a listed row holds (its text in full, a blob as its preview)."""
    if isinstance(value, dict):
        return sum(len(key) + _weight(item) for key, item in value.items())
    if isinstance(value, list):
        return sum(_weight(item) for item in value)
    return len(value) if isinstance(value, str) else 8


def _json_value(value: Any) -> Any:
    """A SQLite value as JSON: blobs as their size and first bytes, non-finite reals as text."""
    if isinstance(value, bytes):
        return {"blob": len(value), "hex": value[:BLOB_PREVIEW].hex()}
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value
