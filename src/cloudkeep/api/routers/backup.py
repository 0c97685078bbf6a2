"""BackupApi: one backup — read it, restore it, follow and cancel its jobs."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request, WebSocket
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from cloudkeep.api.deps import BackupId, Service, get_service, optional_body, request_body_doc
from cloudkeep.api.errors import ApiError, error_response, text_response
from cloudkeep.api.jobs import Job
from cloudkeep.api.routers._responses import COMMON, ENGINE, errors, streamed_content
from cloudkeep.api.service import BackupService, validate_id
from cloudkeep.api.streaming import (
    final_event,
    job_events,
    job_outcome_response,
    json_response,
    pump_websocket,
    stream_mode,
    streamed_response,
)
from cloudkeep.errors import CloudkeepError
from cloudkeep.wire import Backup, BackupStatus, BackupStatusEnum, BackupStreamedProgress

router = APIRouter(tags=["Backup"])

BackupBody = Annotated[Backup | None, Depends(optional_body(Backup))]
# How long a cancel request waits for the engine to stop, so that the status read just
# after the 204 already says CANCELED (the engine checks its cancel flag often).
_CANCEL_WAIT = 5.0


def _same_backup(path_id: str, body: Backup | None) -> None:
    if body is not None and body.id != path_id:
        raise ApiError(
            400,
            f"The body names backup {body.id!r} but the path {path_id!r}; "
            "send the same id or no body.",
        )


@router.get(
    "/backup/{backup}",
    operation_id="backup_specific_backup_snapshot",
    summary="/backup/{backup} [GET]",
    description="One backup's metadata.",
    response_model=Backup,
    responses=errors(*ENGINE, 404),
)
async def get_backup(backup: BackupId, service: Service) -> Response:
    return json_response(await service.get(backup))


@router.post(
    "/backup/{backup}/restore",
    operation_id="backup_restore_specific_backup",
    summary="/backup/{backup}/restore [POST]",
    description="Restore this backup over the live data (an atomic swap: readers see the "
    "old or the new database, never a mix) and answer the Backup when done. Queued behind "
    "any backup or restore already running. A client that disconnects does not cancel it.",
    response_model=Backup,
    responses=errors(*ENGINE, 404, 409, 400, 413, 415, 422),
    openapi_extra=request_body_doc(Backup),
)
async def restore_backup(backup: BackupId, service: Service, body: BackupBody) -> Response:
    _same_backup(backup, body)
    job, subscription = await service.restore(backup)
    final = await final_event(service.jobs, job, subscription)
    return job_outcome_response(job, final)


@router.post(
    "/backup/{backup}/restore/streamed",
    operation_id="backup_restore_specific_backup_streamed",
    summary="/backup/{backup}/restore/streamed [POST]",
    description="Start a restore and follow it; content negotiation as for "
    "/backups/create/streamed (application/json: the final event only; "
    "application/x-ndjson or text/event-stream: every event).",
    response_model=BackupStreamedProgress,
    responses={
        200: {"content": streamed_content("BackupStreamedProgress")},
        **errors(*ENGINE, 404, 400, 413, 415, 422),
    },
    openapi_extra=request_body_doc(Backup),
)
async def restore_backup_streamed(
    backup: BackupId, request: Request, service: Service, body: BackupBody
) -> Response:
    _same_backup(backup, body)
    job, subscription = await service.restore(backup)
    return await streamed_response(service.jobs, job, subscription, stream_mode(request))


@router.get(
    "/backup/{backup}/restore/streamed/websocket",
    operation_id="backup_restore_specific_backup_streamed_websocket",
    summary="/backup/{backup}/restore/streamed/websocket [WS]",
    description="WebSocket: connecting starts a restore of this backup; each "
    "BackupStreamedProgress is sent as JSON text and the socket closes (1000) after the "
    "final one. An unknown id is refused with HTTP 404 before the upgrade. A plain HTTP "
    "GET answers 426.",
    response_model=BackupStreamedProgress,
    responses=errors(*COMMON, 404, 426),
)
async def restore_backup_websocket_http(backup: BackupId) -> Response:
    return text_response(
        426, f"Connect with a WebSocket client or use POST /backup/{backup}/restore/streamed."
    )


@router.websocket("/backup/{backup}/restore/streamed/websocket")
async def restore_backup_websocket(
    websocket: WebSocket, backup: str, service: Annotated[BackupService, Depends(get_service)]
) -> None:
    try:
        job, subscription = await service.restore(validate_id(backup))
    except ApiError as exc:
        await websocket.send_denial_response(text_response(exc.status, exc.message))
        return
    except CloudkeepError as exc:
        await websocket.send_denial_response(error_response(exc))
        return
    await websocket.accept()
    await pump_websocket(websocket, job_events(service.jobs, job, subscription))


async def _status(
    job: Job | None, backup_id: str, service: BackupService, default: BackupStatusEnum
) -> Response:
    if job is not None:
        return json_response(job.status_model())
    stored = await service.get(backup_id)
    percentage = 100.0 if default is BackupStatusEnum.COMPLETED else None
    return json_response(BackupStatus(backup=stored, value=default, percentage=percentage))


@router.get(
    "/backup/{backup}/creation/status",
    operation_id="backup_specific_creation_status",
    summary="/backup/{backup}/creation/status [GET]",
    description="State of a creation, by the job id announced in INITIALIZED (job-…) or, once "
    "it completed, by the final backup id. A stored backup this server did not create "
    "(another device, the CLI, an earlier run) is COMPLETED. FAILED carries `reason`.",
    response_model=BackupStatus,
    responses=errors(*ENGINE, 404),
)
async def creation_status(backup: BackupId, service: Service) -> Response:
    job = service.creation_job(backup)
    return await _status(job, backup, service, BackupStatusEnum.COMPLETED)


@router.get(
    "/backup/{backup}/restoration/status",
    operation_id="backup_specific_restoration_status",
    summary="/backup/{backup}/restoration/status [GET]",
    description="State of the latest restoration of this backup (by backup id or by the "
    "restoration's job id). A stored backup never restored by this server is UNKNOWN. "
    "FAILED carries `reason`.",
    response_model=BackupStatus,
    responses=errors(*ENGINE, 404),
)
async def restoration_status(backup: BackupId, service: Service) -> Response:
    job = service.restoration_job(backup)
    return await _status(job, backup, service, BackupStatusEnum.UNKNOWN)


async def _cancel(job: Job | None, backup_id: str, service: BackupService) -> Response:
    if job is None:
        await service.get(backup_id)  # 404 for an unknown id; otherwise nothing runs
        return Response(status_code=204)
    service.jobs.cancel(job)
    await run_in_threadpool(job.finished.wait, _CANCEL_WAIT)
    return Response(status_code=204)


@router.post(
    "/backup/{backup}/creation/cancel",
    operation_id="backup_specific_creation_cancel",
    summary="/backup/{backup}/creation/cancel [POST]",
    description="Cancel a creation (by job id). A queued one ends CANCELED at once; a "
    "running one as soon as the engine notices (this call waits up to 5 s for that). A "
    "canceled backup leaves nothing visible. Canceling a finished job changes nothing.",
    status_code=204,
    response_class=Response,
    responses=errors(*COMMON, 404),
)
async def creation_cancel(backup: BackupId, service: Service) -> Response:
    return await _cancel(service.creation_job(backup), backup, service)


@router.post(
    "/backup/{backup}/restoration/cancel",
    operation_id="backup_specific_restoration_cancel",
    summary="/backup/{backup}/restoration/cancel [POST]",
    description="Cancel the restoration of this backup (by backup id or job id). The live "
    "data is left as it was before the restore started.",
    status_code=204,
    response_class=Response,
    responses=errors(*COMMON, 404),
)
async def restoration_cancel(backup: BackupId, service: Service) -> Response:
    return await _cancel(service.restoration_job(backup), backup, service)
