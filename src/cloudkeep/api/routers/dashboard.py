"""The dashboard: its page at ``/``, its script and styles under ``/dashboard/``, and
``GET /cloudkeep/backups``, the rich backup list its timeline and charts draw.

The page is three static files of the package (``cloudkeep/api/dashboard/``): no build
step, no CDN, nothing fetched from elsewhere, so it works offline. They hold no secret
and are served without the application key; every API call the page makes sends it.
A strict Content-Security-Policy allows scripts, styles and connections from this
origin only, and no inline script or style: text from the store can never run.
"""

from __future__ import annotations

import functools
import hashlib
from datetime import datetime
from importlib.resources import files

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field
from starlette.responses import Response

from cloudkeep.api.deps import Service
from cloudkeep.api.errors import text_response
from cloudkeep.api.routers._responses import ENGINE, errors
from cloudkeep.api.security import split_host

__all__ = ["router"]

router = APIRouter()

#: The files of the page, by name, with their media types.
ASSETS = {
    "index.html": "text/html; charset=utf-8",
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}


class TimelineBackup(BaseModel):
    """One backup as the dashboard's timeline shows it."""

    id: str
    device_name: str
    created: datetime
    bytes: int = Field(description="Logical size: what a restore writes.")
    added_bytes: int = Field(description="What this backup uploaded (new data) when made.")
    platform: str
    source: str = Field(description="The data path on the device that made it (store text).")
    files: int = Field(description="Entries (files, folders, links) in the backup.")
    warnings: int = Field(description="Files left out or read while they changed.")


class Timeline(BaseModel):
    """Every backup in the store, from all devices, newest first."""

    backups: list[TimelineBackup]


def _text(value: str) -> str:
    """Store text as JSON-safe text (lone surrogates escaped)."""
    return value.encode("utf-8", "backslashreplace").decode("utf-8")


@router.get(
    "/cloudkeep/backups",
    operation_id="cloudkeep_backups",
    summary="/cloudkeep/backups [GET]",
    description="Every backup in the store, from all devices, newest first, with its size, "
    "the bytes it added, its entries and warnings (the dashboard's timeline and charts). "
    "Served from the same cache as GET /backups; an empty or not yet initialized store "
    'answers `{"backups": []}`.',
    tags=["cloudkeep"],
    responses=errors(*ENGINE),
)
async def timeline(service: Service) -> Timeline:
    return Timeline(
        backups=[
            TimelineBackup(
                id=info.id,
                device_name=_text(info.device_name),
                created=info.created,
                bytes=info.bytes,
                added_bytes=info.added_bytes,
                platform=_text(info.platform),
                source=_text(info.source),
                files=info.files,
                warnings=len(info.warnings),
            )
            for info in await service.details()
        ]
    )


@functools.cache
def _asset(name: str) -> tuple[bytes, str]:
    """The file's bytes and a strong ETag (read once: the package does not change)."""
    data = (files("cloudkeep.api") / "dashboard" / name).read_bytes()
    return data, '"' + hashlib.sha256(data).hexdigest()[:32] + '"'


def _csp(request: Request) -> str:
    """Only this origin. The page's own WebSocket URL is named too: older Chrome does not
    count ws:// as 'self'."""
    sockets = ""
    host = request.headers.get("host")
    parsed = split_host(host) if host else None
    if parsed is not None:  # rebuilt from the parsed name: nothing of the header verbatim
        name, port = parsed
        netloc = (f"[{name}]" if ":" in name else name) + (f":{port}" if port else "")
        scheme = "wss" if request.url.scheme == "https" else "ws"
        sockets = f" {scheme}://{netloc}"
    return (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
        f"connect-src 'self'{sockets}; object-src 'none'; base-uri 'none'; "
        "form-action 'self'; frame-ancestors 'none'"
    )


def _serve(request: Request, name: str) -> Response:
    data, etag = _asset(name)
    headers = {
        "ETag": etag,
        "Cache-Control": "no-cache",  # revalidated each time: a new version shows at once
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Content-Security-Policy": _csp(request),
        "X-Frame-Options": "DENY",
    }
    if request.headers.get("if-none-match") == etag:
        return Response(status_code=304, headers=headers)
    return Response(data, media_type=ASSETS[name], headers=headers)


@router.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
async def page(request: Request) -> Response:
    return _serve(request, "index.html")


@router.api_route("/dashboard/{name}", methods=["GET", "HEAD"], include_in_schema=False)
async def asset(request: Request, name: str) -> Response:
    if name not in ASSETS or name == "index.html":
        return text_response(404, f"No dashboard file {name[:80]!r}.")
    return _serve(request, name)
