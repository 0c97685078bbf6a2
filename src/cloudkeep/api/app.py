"""The FastAPI application: routers, guards, error handlers, lifespan, OpenAPI.

``create_app`` builds everything from explicit arguments (no globals), so tests and
the ``serve`` command can run differently configured apps side by side.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Literal

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from starlette.middleware.cors import CORSMiddleware

from cloudkeep import __version__
from cloudkeep.api.appkeys import AppKeyVerifier
from cloudkeep.api.docs import install_docs
from cloudkeep.api.errors import CatchAllMiddleware, install_error_handlers
from cloudkeep.api.jobs import DEFAULT_MAX_QUEUED
from cloudkeep.api.routers import (
    backup_router,
    backups_router,
    cloudkeep_router,
    well_known_router,
)
from cloudkeep.api.routers.dashboard import router as dashboard_router
from cloudkeep.api.routers.stats import router as stats_router
from cloudkeep.api.scheduler import scheduler_for
from cloudkeep.api.security import DEFAULT_MAX_BODY, GuardMiddleware, GuardPolicy
from cloudkeep.api.service import BackupService
from cloudkeep.config import Schedule
from cloudkeep.settings import Settings
from cloudkeep.wire import Backup, SeededBackup, WireModel

__all__ = ["create_app"]

_DESCRIPTION = """\
cloudkeep's implementation of the Pieces OS **Backups API**: the official generated
SDKs (`pieces-os-client`) work against it unchanged. Backups are consistent,
deduplicated and encrypted copies of the local database in a store you own.

Errors are `text/plain`. Streamed POSTs answer one final JSON object by default
(`Accept: application/json`) and every update with `Accept: application/x-ndjson`
or `text/event-stream`. WebSocket paths are listed with the HTTP GET they also answer.
"""


def create_app(
    settings: Settings,
    *,
    require_app_key: bool = False,
    allowed_origins: Iterable[str] = (),
    extra_hosts: Iterable[str] = (),
    any_host: bool = False,
    app_key_dir: Path | None = None,
    max_body: int = DEFAULT_MAX_BODY,
    list_ttl: float = 30.0,
    jobs_in_subprocess: bool = True,
    max_queued_jobs: int = DEFAULT_MAX_QUEUED,
    tls: bool = False,
    schedule: Schedule | Literal["config"] | None = "config",
) -> FastAPI:
    """Build the app.

    ``extra_hosts`` are Host names accepted besides the loopback ones (the address a
    non-loopback bind listens on); ``any_host`` drops the Host check and is only for a
    wildcard bind, where the mandatory application key is what keeps browsers out.
    ``jobs_in_subprocess=False`` runs backups in a thread of the server instead of a
    child process (simpler to debug; the event loop then shares the GIL with the job).
    ``max_queued_jobs`` bounds the backups and restores waiting to run (429 beyond);
    ``tls`` says the server speaks HTTPS (the Origin check then expects https).
    ``schedule`` replaces the configuration's schedule of backups (None: none).
    """
    service = BackupService(
        settings,
        list_ttl=list_ttl,
        jobs_in_subprocess=jobs_in_subprocess,
        max_queued_jobs=max_queued_jobs,
    )

    scheduler = scheduler_for(
        service, settings, settings.config.schedule if schedule == "config" else schedule
    )

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        service.start()
        scheduler.start()
        try:
            yield
        finally:
            scheduler.stop()
            service.stop()

    app = FastAPI(
        title="cloudkeep — Pieces OS Backups API",
        version=__version__,
        description=_DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,  # served by install_docs, without CDNs
        redoc_url=None,
    )
    app.state.service = service
    app.state.scheduler = scheduler
    app.state.settings = settings
    install_error_handlers(app)
    app.include_router(backups_router)
    app.include_router(backup_router)
    app.include_router(well_known_router)
    app.include_router(cloudkeep_router)
    app.include_router(stats_router)
    app.include_router(dashboard_router)
    install_docs(app)

    origins = list(allowed_origins)
    verifier = AppKeyVerifier(app_key_dir or settings.config_dir) if require_app_key else None
    policy = GuardPolicy(
        allowed_origins=GuardPolicy.normalize_origins(origins),
        extra_hosts=frozenset(h.lower().strip("[]") for h in extra_hosts),
        any_host=any_host,
        verifier=verifier,
        max_body=max_body,
        tls=tls,
    )
    # Added innermost first: Guard → CORS → CatchAll → routes.
    app.add_middleware(CatchAllMiddleware)
    if origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=origins,
            allow_methods=["GET", "HEAD", "POST", "PUT"],
            allow_headers=["Content-Type", "Accept", "X-Application-ID"],
        )
    app.add_middleware(GuardMiddleware, policy=policy)
    app.state.guard_policy = policy
    _install_openapi(app, require_app_key)
    return app


def _install_openapi(app: FastAPI, require_app_key: bool) -> None:
    """Add what FastAPI cannot infer: the hand-parsed request bodies and the key scheme."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(
            title=app.title,
            version=app.version,
            description=app.description,
            routes=app.routes,
        )
        components = schema.setdefault("components", {})
        schemas = components.setdefault("schemas", {})
        model: type[WireModel]
        for model in (SeededBackup, Backup):
            generated = model.model_json_schema(
                by_alias=True, ref_template="#/components/schemas/{model}"
            )
            for name, definition in generated.pop("$defs", {}).items():
                schemas.setdefault(name, definition)
            schemas.setdefault(model.__name__, generated)
        # Validation errors are text/plain here, not FastAPI's JSON HTTPValidationError.
        schemas.pop("HTTPValidationError", None)
        schemas.pop("ValidationError", None)
        for operations in schema.get("paths", {}).values():
            for operation in operations.values():
                invalid = operation.get("responses", {}).get("422")
                if invalid is not None:
                    invalid["content"] = {"text/plain": {"schema": {"type": "string"}}}
        components["securitySchemes"] = {
            "application": {"type": "apiKey", "in": "header", "name": "X-Application-ID"}
        }
        if require_app_key:
            schema["security"] = [{"application": []}]
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
