"""BackupsApi: create, list, delete, and the plural progress stream."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Depends, Request, WebSocket
from starlette.responses import Response

from cloudkeep.api.deps import BackupId, Service, get_service, optional_body, request_body_doc
from cloudkeep.api.errors import ApiError, error_response, error_text, text_response
from cloudkeep.api.routers._responses import COMMON, ENGINE, errors, streamed_content
from cloudkeep.api.service import BackupService
from cloudkeep.api.streaming import (
    Subscription,
    final_event,
    job_events,
    job_outcome_response,
    json_response,
    pump_websocket,
    stream_mode,
    streamed_response,
)
from cloudkeep.errors import TooManyJobs
from cloudkeep.wire import (
    Backup,
    Backups,
    BackupsStreamedProgress,
    BackupStreamedProgress,
    SeededBackup,
)

router = APIRouter(tags=["Backups"])

SeededBody = Annotated[SeededBackup | None, Depends(optional_body(SeededBackup))]
BackupBody = Annotated[Backup | None, Depends(optional_body(Backup))]

_WEBSOCKET_ONLY = (
    "This path is a WebSocket endpoint. A plain HTTP GET answers 426: starting work on a "
    "GET would let any link trigger it."
)


@router.post(
    "/backups/create",
    operation_id="backups_create_new_backup",
    summary="/backups/create [POST]",
    description="Back up the local database to the store and answer the new Backup when it "
    "is complete. Requests are queued and run one at a time; each gets its own Backup. "
    "A client that disconnects does not cancel the backup.",
    response_model=Backup,
    responses=errors(*ENGINE, 409, 400, 413, 415, 422),
    openapi_extra=request_body_doc(SeededBackup),
)
async def create_backup(service: Service, seeded: SeededBody) -> Response:
    job, subscription = service.create()
    final = await final_event(service.jobs, job, subscription)
    return job_outcome_response(job, final)


@router.post(
    "/backups/create/streamed",
    operation_id="backups_create_new_backup_streamed",
    summary="/backups/create/streamed [POST]",
    description="Start a backup and follow it. With `Accept: application/json` (what the SDKs "
    "send) the answer is the final BackupStreamedProgress (COMPLETED with percentage 100 and "
    "the Backup, FAILED with `reason`, or CANCELED). With `Accept: application/x-ndjson` or "
    "`text/event-stream` every update is sent as it happens: INITIALIZED (the backup carries "
    "the job id, usable with the creation status/cancel endpoints), IN-PROGRESS with a "
    "percentage that never decreases, then the final event.",
    response_model=BackupStreamedProgress,
    responses={
        200: {"content": streamed_content("BackupStreamedProgress")},
        **errors(*COMMON, 400, 413, 415, 422),
    },
    openapi_extra=request_body_doc(SeededBackup),
)
async def create_backup_streamed(
    request: Request, service: Service, seeded: SeededBody
) -> Response:
    job, subscription = service.create()
    return await streamed_response(service.jobs, job, subscription, stream_mode(request))


@router.post(
    "/backups/{backup}/delete",
    operation_id="backups_delete_specific_backup",
    summary="/backups/{backup}/delete [POST]",
    description="Delete one backup (data still used by other backups is kept).",
    status_code=204,
    response_class=Response,
    responses=errors(*ENGINE, 404, 409, 400, 413, 415, 422),
    openapi_extra=request_body_doc(Backup),
)
async def delete_backup(backup: BackupId, service: Service, body: BackupBody) -> Response:
    if body is not None and body.id != backup:
        raise ApiError(
            400,
            f"The body names backup {body.id!r} but the path {backup!r}; "
            "send the same id or no body.",
        )
    await service.delete(backup)
    return Response(status_code=204)


@router.get(
    "/backups",
    operation_id="backups_snapshot",
    summary="/backups [GET]",
    description="Every backup in the store, from all devices, newest first. An empty or "
    'not yet initialized store answers `{"iterable": []}`. Served from a cache kept up to '
    "date by this server's own changes and refreshed in the background.",
    response_model=Backups,
    responses=errors(*ENGINE),
)
async def list_backups(service: Service) -> Response:
    return Response(await service.list_body(), media_type="application/json")


@router.get(
    "/backups/create/streamed/websocket",
    operation_id="backups_create_new_backup_streamed_websocket",
    summary="/backups/create/streamed/websocket [WS]",
    description="WebSocket: connecting starts a backup; each BackupStreamedProgress is sent "
    "as a JSON text message and the socket closes (1000) after the final one. Messages "
    "from the client (an optional SeededBackup) are ignored. " + _WEBSOCKET_ONLY,
    response_model=BackupStreamedProgress,
    responses=errors(*COMMON, 426),
)
async def create_backup_websocket_http() -> Response:
    return text_response(
        426,
        "Connect with a WebSocket client (ws://…/backups/create/streamed/"
        "websocket) or use POST /backups/create/streamed.",
    )


@router.websocket("/backups/create/streamed/websocket")
async def create_backup_websocket(
    websocket: WebSocket, service: Annotated[BackupService, Depends(get_service)]
) -> None:
    try:
        service.jobs.check_room()
    except TooManyJobs as exc:
        await websocket.send_denial_response(error_response(exc))
        return
    await websocket.accept()
    try:
        job, subscription = service.create()
    except TooManyJobs as exc:  # filled up while the socket was being accepted
        await websocket.close(code=1013, reason=error_text(exc)[:120])
        return
    await pump_websocket(websocket, job_events(service.jobs, job, subscription))


@router.get(
    "/backups/streamed/progress",
    operation_id="backups_streamed_progress",
    summary="/backups/streamed/progress [WS]",
    description="WebSocket: a BackupsStreamedProgress (every creation and restoration not "
    "finished, plus the one whose change triggered the message) first on connect, then on "
    "every change. A plain HTTP GET answers the current BackupsStreamedProgress once.",
    response_model=BackupsStreamedProgress,
    responses=errors(*COMMON),
)
async def streamed_progress_http(service: Service) -> Response:
    return json_response(service.jobs.progress_all())


@router.websocket("/backups/streamed/progress")
async def streamed_progress_websocket(
    websocket: WebSocket, service: Annotated[BackupService, Depends(get_service)]
) -> None:
    await websocket.accept()
    subscription = Subscription(asyncio.get_running_loop())
    service.jobs.watch(subscription.push)

    async def changes() -> AsyncIterator[BackupsStreamedProgress]:
        try:
            while True:
                yield await subscription.get()
        finally:
            service.jobs.unwatch(subscription.push)

    await pump_websocket(websocket, changes())
