"""WellKnownApi: health (probed with HEAD by the SDK wrapper's port scan) and version."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from starlette.responses import PlainTextResponse

from cloudkeep import __version__

router = APIRouter(tags=["WellKnown"])

_TEXT: dict[int | str, dict[str, Any]] = {
    200: {"content": {"text/plain": {"schema": {"type": "string"}}}}
}


@router.get(
    "/.well-known/health",
    operation_id="get_well_known_health",
    summary="/.well-known/health [GET]",
    description="`ok` while the server runs. Never touches the store, so it stays fast "
    "during a backup; reachable without an application key.",
    response_class=PlainTextResponse,
    responses=_TEXT,
)
async def health() -> PlainTextResponse:
    return PlainTextResponse("ok")


@router.head(
    "/.well-known/health",
    operation_id="head_well_known_health",
    summary="/.well-known/health [HEAD]",
    description="What the SDK wrapper's port scan sends: 200 with no body.",
    response_class=PlainTextResponse,
    responses=_TEXT,
)
async def health_head() -> PlainTextResponse:
    return PlainTextResponse("ok")


@router.get(
    "/.well-known/version",
    operation_id="get_well_known_version",
    summary="/.well-known/version [GET]",
    description="The cloudkeep version (also the first part of every backup id it makes).",
    response_class=PlainTextResponse,
    responses=_TEXT,
)
async def version() -> PlainTextResponse:
    return PlainTextResponse(__version__)
