"""Looking into backups and taking parts of them back, under ``/cloudkeep/``: a folder's
entries, one file's bytes, a search across backups, a restore of chosen paths, and the
undo of the last in-place restore. Reads run in the thread pool; restores and undos
are jobs on the data, as every change is. Backup ids are exact (no prefixes here).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response, StreamingResponse

from cloudkeep.api.deps import BackupId, Service
from cloudkeep.api.errors import ApiError
from cloudkeep.api.routers._responses import ENGINE, errors
from cloudkeep.wire_browse import found_to_json, listing_to_json

router = APIRouter(prefix="/cloudkeep", tags=["cloudkeep"])

MAX_PATHS = 1000
MAX_PATH_CHARS = 4096
MAX_FIND_LIMIT = 10_000
DEFAULT_FIND_LIMIT = 1000

_ENTRY: dict[str, object] = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "path": {"type": "string"},
        "type": {"type": "string", "enum": ["file", "dir", "symlink"]},
        "size": {"type": "integer"},
        "mode": {"type": "string", "examples": ["-rw-r--r--"]},
        "mtime": {"type": ["string", "null"], "format": "date-time"},
        "sqlite": {"type": "boolean"},
        "target": {"type": ["string", "null"]},
    },
}


def _json(document: object, status: int = 200) -> Response:
    return Response(json.dumps(document), status_code=status, media_type="application/json")


def _json_doc(schema: dict[str, object]) -> dict[int | str, dict[str, object]]:
    return {200: {"content": {"application/json": {"schema": schema}}}}


@router.get(
    "/backups/{backup}/files",
    operation_id="cloudkeep_backup_files",
    summary="The entries of a folder of a backup",
    description='The direct children of the folder `path` of the backup ("" or absent: '
    "its top; a file's path lists the file), or with `recursive=true` its whole subtree, "
    "sorted by path. Reads the backup's manifest only. 404 when the backup or the path "
    "does not exist; 400 for a path that is not a plain relative one ('..', NUL).",
    response_class=Response,
    responses={
        **_json_doc(
            {
                "type": "object",
                "properties": {
                    "backup": {"type": "string"},
                    "created": {"type": "string"},
                    "device_name": {"type": "string"},
                    "path": {"type": "string"},
                    "entries": {"type": "array", "items": _ENTRY},
                },
            }
        ),
        **errors(*ENGINE, 400, 404, 422),
    },
)
async def backup_files(
    backup: BackupId,
    service: Service,
    path: Annotated[str, Query(max_length=MAX_PATH_CHARS)] = "",
    recursive: bool = False,
) -> Response:
    listing = await service.ls(backup, path, recursive)
    return _json(listing_to_json(listing))


def content_disposition(name: str) -> str:
    """``attachment`` naming ``name`` (a backup's text): an ASCII fallback with anything
    but letters, digits, dot, dash and underscore replaced, and the exact name encoded
    (RFC 6266, RFC 5987); never a quote, separator or control character unescaped."""
    fallback = re.sub(r"[^A-Za-z0-9._-]", "_", name).lstrip(".") or "download"
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(name, safe='')}"


@router.get(
    "/backups/{backup}/file",
    operation_id="cloudkeep_backup_file",
    summary="Download a file of a backup",
    description="The bytes of the file `path` as backed up (`application/octet-stream`, "
    "`Content-Length`, `Content-Disposition: attachment`), streamed: only its chunks are "
    "fetched, each verified. 404 when the backup or the path does not exist; 400 for a "
    "folder, a symlink, or a path that is not a plain relative one. A blob found damaged "
    "mid-way cuts the download short (never wrong bytes).",
    response_class=Response,
    responses={
        200: {
            "content": {"application/octet-stream": {"schema": {"type": "string"}}},
            "headers": {"Content-Disposition": {"schema": {"type": "string"}}},
        },
        **errors(*ENGINE, 400, 404, 422),
    },
)
async def backup_file(
    backup: BackupId,
    service: Service,
    path: Annotated[str, Query(min_length=1, max_length=MAX_PATH_CHARS)],
) -> Response:
    entry = await service.file_entry(backup, path)
    return StreamingResponse(
        service.file_stream(backup, entry.path),
        media_type="application/octet-stream",
        headers={
            "Content-Length": str(entry.size),
            "Content-Disposition": content_disposition(entry.path.rsplit("/", 1)[-1]),
            "X-Content-Type-Options": "nosniff",
        },
    )


@router.get(
    "/find",
    operation_id="cloudkeep_find",
    summary="Find entries across backups",
    description="Entries whose name matches the shell pattern (`*`, `?`, `[...]`), or "
    "whose whole path does when the pattern holds a '/' (there `*` stays within a name "
    "and `**` spans folders), in every backup (of `device`, or only `backup`), newest "
    "backup first. At most `limit` matches; `truncated` says when there were more. "
    "Manifests only.",
    response_class=Response,
    responses={
        **_json_doc(
            {
                "type": "object",
                "properties": {
                    "matches": {"type": "array", "items": {"type": "object"}},
                    "truncated": {"type": "boolean"},
                },
            }
        ),
        **errors(*ENGINE, 400, 404, 422),
    },
)
async def find(
    service: Service,
    pattern: Annotated[str, Query(min_length=1, max_length=MAX_PATH_CHARS)],
    device: Annotated[str | None, Query(max_length=MAX_PATH_CHARS)] = None,
    backup: Annotated[str | None, Query(max_length=128)] = None,
    type: Annotated[str | None, Query(pattern="^(file|dir|symlink)$")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_FIND_LIMIT)] = DEFAULT_FIND_LIMIT,
) -> Response:
    groups, truncated = await service.find(pattern, device, backup, type, limit)
    return _json(found_to_json(groups, truncated))


class RestoreRequest(BaseModel):
    """What to restore: chosen paths (none: the whole backup), where, and whether to
    restore in place even while another program holds the data open."""

    model_config = ConfigDict(extra="forbid")

    paths: list[Annotated[str, Field(max_length=MAX_PATH_CHARS)]] = Field(
        default_factory=list,
        max_length=MAX_PATHS,
        description="Files or folders of the backup, as /files lists them; empty: all.",
    )
    target: str | None = Field(
        None,
        max_length=MAX_PATH_CHARS,
        description="An absolute path on the server's machine: a new or empty folder to "
        "restore into; null restores in place (each chosen file atomically).",
    )
    force: bool = Field(
        False, description="Restore in place even while another program holds it open."
    )


@router.post(
    "/backups/{backup}/restore",
    operation_id="cloudkeep_backup_restore",
    summary="Restore a backup, or chosen paths of it",
    description="Queues a restore and answers 202 at once; its progress shows on the "
    "WebSocket `/backups/streamed/progress` (restorations) and its outcome on "
    "`GET /backup/{id}/restoration/status` (a data folder in use fails there with the "
    "running-app message: send `force: true` to restore anyway). In place, what it "
    "replaces is kept for `POST /cloudkeep/restore/undo`.",
    status_code=202,
    response_class=Response,
    responses={
        202: {
            "content": {
                "application/json": {
                    "schema": {
                        "type": "object",
                        "properties": {
                            "backup": {"type": "string"},
                            "job": {"type": "string"},
                            "status": {"type": "string", "enum": ["QUEUED"]},
                        },
                    }
                }
            }
        },
        **errors(*ENGINE, 400, 404, 413, 415, 422, 429),
    },
)
async def restore(
    backup: BackupId, service: Service, body: RestoreRequest | None = None
) -> Response:
    request = body or RestoreRequest()
    target = None
    if request.target is not None:
        if "\0" in request.target or not Path(request.target).is_absolute():
            raise ApiError(400, "The target must be an absolute path on the server's machine.")
        target = Path(request.target)
    job = await service.queue_restore(backup, request.paths, target, request.force)
    return _json({"backup": backup, "job": job.id, "status": "QUEUED"}, 202)


class UndoRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    force: bool = Field(False, description="Undo even while another program holds the data open.")


def _undo_document(found: tuple[Path, str, str | None] | None) -> dict[str, object]:
    if found is None:
        return {"undo_path": None, "kind": None, "state": None}
    path, kind, state = found
    return {"undo_path": str(path), "kind": kind, "state": state}


_UNDO_SCHEMA: dict[str, object] = {
    "type": "object",
    "properties": {
        "undo_path": {"type": ["string", "null"]},
        "kind": {"type": ["string", "null"], "enum": ["whole", "paths", None]},
        "state": {"type": ["string", "null"], "enum": ["restored", "undone", "restoring", None]},
    },
}


@router.get(
    "/restore/undo",
    operation_id="cloudkeep_restore_undo_state",
    summary="What an undo would put back",
    description="`undo_path`: where the last in-place restore keeps what it replaced "
    "(null: nothing to undo); `kind`: `whole` (the data folder) or `paths` (entries of a "
    "restore of chosen paths, with `state` restored, undone, or restoring: interrupted).",
    response_class=Response,
    responses={**_json_doc(_UNDO_SCHEMA), **errors(*ENGINE)},
)
async def undo_state(service: Service) -> Response:
    return _json(_undo_document(await service.pending_undo()))


@router.post(
    "/restore/undo",
    operation_id="cloudkeep_restore_undo",
    summary="Undo the last in-place restore",
    description="Puts back what the last in-place restore replaced (again: redoes it), as "
    "`cloudkeep restore --undo`; a job on the data, answered when done with the undo "
    "state afterwards. 400 when there is nothing to undo, 409 when another program "
    "holds the data open (send `force: true`).",
    response_class=Response,
    responses={**_json_doc(_UNDO_SCHEMA), **errors(*ENGINE, 400, 409, 413, 415, 422, 429)},
)
async def undo(service: Service, body: UndoRequest | None = None) -> Response:
    await service.undo_restore(force=(body or UndoRequest()).force)
    return _json(_undo_document(await service.pending_undo()))
