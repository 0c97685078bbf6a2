"""Querying a backed-up database in place: ``GET /cloudkeep/backups/{backup}/databases``
and ``POST /cloudkeep/backups/{backup}/sql``.

Read-only (``backups.sql``: reading statements only, nothing local touched), run in
the thread pool, never on the event loop, with a time limit and bounded rows. A
query stopped at its time limit is a 400 like any refused query (not a 408, which
clients and proxies may retry on their own: the same query would run as long again).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from cloudkeep.api.deps import BackupId, Service
from cloudkeep.api.routers._responses import ENGINE, errors, json_safe
from cloudkeep.backups.sql import API_TIME_LIMIT, MAX_ROWS, json_value

router = APIRouter(prefix="/cloudkeep/backups", tags=["cloudkeep"])

#: Characters of a query's text.
MAX_QUERY_CHARS = 100_000
#: Seconds a query waits for a prune holding the repository before a 409.
LOCK_WAIT_SECONDS = 30.0

_RESPONSES = errors(*ENGINE, 404, 409)


class DatabaseFile(BaseModel):
    path: str = Field(description="The database's path inside the backup.")
    size: int = Field(description="Its size in bytes.")


class Databases(BaseModel):
    """The SQLite databases of a backup, largest first."""

    databases: list[DatabaseFile]


class SqlQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    database: str | None = Field(
        None,
        max_length=4096,
        description="The database's path inside the backup; null: the only one, or the largest.",
    )
    query: str = Field(
        min_length=1,
        max_length=MAX_QUERY_CHARS,
        description="One statement that reads: SELECT (WITH ...), or a PRAGMA that reads.",
        examples=["SELECT id, body FROM snippets WHERE id = 42"],
    )
    max_rows: int = Field(500, ge=0, le=MAX_ROWS, description="Rows returned at most.")


class SqlResult(BaseModel):
    database: str = Field(description="The database queried (its path inside the backup).")
    columns: list[str]
    rows: list[list[Any]] = Field(
        description="Values as JSON: a blob as {blob: size, hex: its first bytes in hex}; "
        "a float JSON cannot write (inf, nan) as text."
    )
    truncated: bool = Field(description="Rows were left out for the row or size limit.")
    elapsed_ms: float = Field(description="Time the query itself ran.")
    fetched_bytes: int = Field(
        description="Bytes fetched from the store to answer (chunk lists and pages)."
    )


@router.get(
    "/{backup}/databases",
    operation_id="cloudkeep_backup_databases",
    summary="The SQLite databases a backup holds",
    response_model=Databases,
    responses=_RESPONSES,
)
async def databases(backup: BackupId, service: Service) -> Databases:
    entries = await service.read_backup(backup, lambda: service.workspace().databases(backup))
    return Databases(
        databases=[DatabaseFile(path=json_safe(entry.path), size=entry.size) for entry in entries]
    )


@router.post(
    "/{backup}/sql",
    operation_id="cloudkeep_backup_sql",
    summary="Query a database inside a backup, read-only, without restoring it",
    description="Pages are fetched from the store as the query reads them. 400 with "
    "SQLite's message for bad SQL, anything but reading, several statements, or a query "
    f"stopped at the time limit ({API_TIME_LIMIT:g} s); 404 for an unknown backup or database.",
    response_model=SqlResult,
    responses=errors(*ENGINE, 400, 404, 409, 422),
)
async def query(backup: BackupId, body: SqlQuery, service: Service) -> SqlResult:
    return await service.read_backup(backup, lambda: _run(service, backup, body))


def _run(service: Service, backup: str, body: SqlQuery) -> SqlResult:
    workspace = service.workspace()
    with workspace.database(
        backup, body.database, largest=True, lock_timeout=LOCK_WAIT_SECONDS
    ) as db:
        result = db.query(body.query, max_rows=body.max_rows, time_limit=API_TIME_LIMIT)
        return SqlResult(
            database=json_safe(db.entry.path),
            columns=result.columns,
            rows=[[json_value(value) for value in row] for row in result.rows],
            truncated=result.truncated,
            elapsed_ms=round(result.elapsed * 1000, 3),
            fetched_bytes=db.reader.fetched_bytes,
        )
