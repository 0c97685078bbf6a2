"""How a job's progress reaches the client: one final JSON, NDJSON, SSE or WebSocket.

The generated SDKs send ``Accept: application/json`` and parse exactly one object, so
that mode waits for the end. Clients that want every update ask for NDJSON or SSE.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator
from enum import StrEnum
from typing import Any

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.websockets import WebSocket, WebSocketDisconnect

from cloudkeep.api.errors import error_text, status_for, text_response
from cloudkeep.api.jobs import TERMINAL, Job, JobManager
from cloudkeep.operations import Backup, Restore
from cloudkeep.wire import BackupStreamedProgress, ModelDownloadProgressStatusEnum, WireModel

__all__ = [
    "NDJSON",
    "SSE",
    "StreamMode",
    "Subscription",
    "final_event",
    "job_events",
    "job_outcome_response",
    "json_response",
    "pump_websocket",
    "stream_mode",
    "streamed_response",
]

NDJSON = "application/x-ndjson"
SSE = "text/event-stream"
_STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
# What the wire calls a job that is not one of these: its operation's name.
_WIRE_NAMES: dict[type, str] = {Backup: "creation", Restore: "restoration"}


class Subscription:
    """Events pushed from any thread (a job's listener), read on the event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._loop = loop or asyncio.get_running_loop()
        self._queue: asyncio.Queue[Any] = asyncio.Queue()

    def push(self, item: Any) -> None:
        with contextlib.suppress(RuntimeError):  # loop closed: the listener is gone
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)

    async def get(self) -> Any:
        return await self._queue.get()


async def job_events(
    jobs: JobManager, job: Job, subscription: Subscription
) -> AsyncGenerator[BackupStreamedProgress, None]:
    """``job``'s events from ``subscription`` (a listener of it), ending with the terminal one."""
    try:
        while True:
            event: BackupStreamedProgress = await subscription.get()
            yield event
            if event.status in TERMINAL:
                return
    finally:
        jobs.unlisten(job, subscription.push)


class StreamMode(StrEnum):
    JSON = "json"
    NDJSON = "ndjson"
    SSE = "sse"


def stream_mode(request: Request) -> StreamMode:
    accept = request.headers.get("accept", "").lower()
    if NDJSON in accept or "application/jsonl" in accept:
        return StreamMode.NDJSON
    if SSE in accept:
        return StreamMode.SSE
    return StreamMode.JSON


def json_response(model: WireModel, status_code: int = 200) -> Response:
    """Wire JSON (aliases, no nulls) without a second validation pass."""
    return Response(model.to_json(), status_code=status_code, media_type="application/json")


async def final_event(
    jobs: JobManager, job: Job, subscription: Subscription
) -> BackupStreamedProgress:
    """Wait for the job to end (the client leaving does not stop the job)."""
    last = job.progress()
    async with contextlib.aclosing(job_events(jobs, job, subscription)) as events:
        async for event in events:
            last = event
    return last


def job_outcome_response(job: Job, final: BackupStreamedProgress) -> Response:
    """Non-streamed endpoints: the Backup, or the failure as a text/plain status."""
    if final.status is ModelDownloadProgressStatusEnum.COMPLETED and final.backup is not None:
        return json_response(final.backup)
    if final.status is ModelDownloadProgressStatusEnum.CANCELED:
        name = _WIRE_NAMES.get(type(job.operation), job.name)
        return text_response(409, f"The {name} {job.id} was canceled.")
    if job.error is not None:
        return text_response(status_for(job.error), error_text(job.error))
    return text_response(500, final.reason or f"The {job.name} failed.")


async def streamed_response(
    jobs: JobManager, job: Job, subscription: Subscription, mode: StreamMode
) -> Response:
    """The three HTTP renderings of one job's events."""
    if mode is StreamMode.JSON:
        return json_response(await final_event(jobs, job, subscription))

    async def lines() -> AsyncIterator[bytes]:
        async with contextlib.aclosing(job_events(jobs, job, subscription)) as events:
            async for event in events:
                text = event.to_json()
                if mode is StreamMode.NDJSON:
                    yield (text + "\n").encode()
                else:
                    yield f"event: progress\ndata: {text}\n\n".encode()

    media = NDJSON if mode is StreamMode.NDJSON else SSE
    return StreamingResponse(lines(), media_type=media, headers=_STREAM_HEADERS)


async def _until_disconnect(websocket: WebSocket) -> None:
    """Drain (and ignore) client messages; return when the client goes away."""
    with contextlib.suppress(WebSocketDisconnect, RuntimeError):
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return


async def pump_websocket(websocket: WebSocket, stream: AsyncIterator[WireModel]) -> None:
    """Send each model as JSON text; close normally after the last one.

    A client that disconnects stops the sending only; the job goes on.
    """
    receiver = asyncio.create_task(_until_disconnect(websocket))
    try:
        async with contextlib.aclosing(stream) as events:  # type: ignore[type-var]
            while True:
                following = asyncio.ensure_future(anext(events))
                done, _ = await asyncio.wait(
                    {following, receiver}, return_when=asyncio.FIRST_COMPLETED
                )
                if following not in done:
                    following.cancel()
                    with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                        await following
                    return
                try:
                    event = following.result()
                except StopAsyncIteration:
                    break
                await websocket.send_text(event.to_json())
        await websocket.close(1000)
    except (WebSocketDisconnect, RuntimeError, ConnectionError):
        return
    finally:
        receiver.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await receiver
