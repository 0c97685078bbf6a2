"""``GET /cloudkeep/diff``: what changed between two backups, files and database rows.

Read-only: it runs in the server's thread pool through ``Workspace.diff`` (a shared
repository lock for its duration, as a restore holds), never as a job.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from cloudkeep.api.deps import Service
from cloudkeep.api.routers._responses import ENGINE, errors, json_safe

router = APIRouter(tags=["cloudkeep"])

#: Rows listed per table with ``rows=true`` at most (the counts are always complete).
MAX_ROWS_LIMIT = 10_000


class FileSide(BaseModel):
    """A file (or folder, or symlink) in one backup only."""

    path: str
    type: str
    size: int


class FileChanged(BaseModel):
    path: str
    size_a: int
    size_b: int
    type_a: str
    type_b: str
    #: Type and permissions as ``ls -l`` writes them ("-rw-r--r--"), as the files route.
    mode_a: str
    mode_b: str
    #: What differs: content, type, mode, target.
    changes: list[str]


class FilesDiff(BaseModel):
    added: list[FileSide]
    removed: list[FileSide]
    changed: list[FileChanged]


class TableRows(BaseModel):
    """Rows as ``{"key", "values": {column: value}}`` (added, removed) and ``{"key",
    "columns": {column: {"a", "b"}}}`` (changed: the columns that differ). Blobs are
    ``{"blob": size, "hex": first bytes}``."""

    added: list[dict[str, Any]]
    removed: list[dict[str, Any]]
    changed: list[dict[str, Any]]
    #: More rows differ than were listed (``max_rows``).
    truncated: bool


class TableDiff(BaseModel):
    name: str
    added: int
    removed: int
    changed: int
    #: added, removed, altered (columns added), incompatible (rows cannot pair); or null.
    schema_: str | None = Field(default=None, alias="schema")
    #: unchanged, pages (only the key ranges of differing pages read), full, skipped.
    method: str
    ranges: int | None = None
    reason: str | None = None
    #: Only with rows=true.
    rows: TableRows | None = None


class SchemaChange(BaseModel):
    name: str
    type: str
    #: added, removed or altered.
    change: str


class DatabaseDiff(BaseModel):
    path: str
    #: changed, added (only in b) or removed (only in a).
    status: str
    tables: list[TableDiff]
    schema_changed: list[str]
    schema_: list[SchemaChange] = Field(alias="schema")
    #: pages: only rows on differing pages were read; full: every row compared (reason says why).
    method: str
    reason: str | None
    pages: int
    pages_differing: int


class Diff(BaseModel):
    a: str
    b: str
    files: FilesDiff
    databases: list[DatabaseDiff]
    #: Bytes fetched from the store for this diff.
    fetched_bytes: int
    elapsed_ms: float


@router.get(
    "/cloudkeep/diff",
    operation_id="cloudkeep_diff",
    summary="/cloudkeep/diff [GET]",
    description="What changed from backup a to backup b (ids, unique prefixes or "
    "'latest'): files added, removed and changed (from the backups' lists alone), and "
    "for each SQLite database the rows added, removed and changed per table (keyed by "
    "rowid, or primary key for WITHOUT ROWID tables, as sqldiff pairs them) and its "
    "schema changes. Only the pages that differ are fetched where the backups' "
    "page-aligned chunks allow; each database says which method was taken. With "
    "rows=true the rows themselves are listed (at most max_rows per table).",
    response_model=Diff,
    response_model_exclude_unset=True,
    responses=errors(400, 404, 409, *ENGINE),
)
async def diff(
    service: Service,
    a: Annotated[str, Query(min_length=1, max_length=200)],
    b: Annotated[str, Query(min_length=1, max_length=200)],
    rows: bool = False,
    max_rows: Annotated[int, Query(ge=0, le=MAX_ROWS_LIMIT)] = 100,
) -> Any:
    result = await service.read_backup(
        a, lambda: service.workspace().diff(a, b, rows=rows, max_rows=max_rows)
    )
    return json_safe(result.to_json())
