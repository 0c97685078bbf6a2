"""Errors as text/plain responses with the status codes the SDKs document.

Every expected failure is a ``CloudkeepError``; ``HTTP_STATUSES`` maps its class to a
status and ``_HINTS`` adds a line saying what to do. Anything else is a bug: 500,
logged with a trace id that the client also receives, so a report can be matched to
the traceback.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import PlainTextResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cloudkeep.api.jobs import new_trace_id
from cloudkeep.api.security import BodyTooLarge
from cloudkeep.errors import (
    BackupNotFound,
    Busy,
    Canceled,
    CloudkeepError,
    ConfigurationError,
    DataInUse,
    DataNotFound,
    EntryNotFound,
    FormatTooNew,
    KeyMissing,
    RepositoryChanged,
    RepositoryDamaged,
    RepositoryExists,
    RepositoryNotFound,
    StoreUnreachable,
    TooManyJobs,
    WrongPassphrase,
)

__all__ = [
    "HTTP_STATUSES",
    "RETRY_AFTER",
    "ApiError",
    "CatchAllMiddleware",
    "error_response",
    "error_text",
    "install_error_handlers",
    "status_for",
    "text_response",
]

log = logging.getLogger("cloudkeep.api")

# Seconds a client refused for a full job queue is told to wait (Retry-After).
RETRY_AFTER = 30

#: Looked up along the error's MRO: a subclass answers its nearest listed base's status.
#: A server whose store or passphrase is unusable cannot be fixed by the client's
#: request: that is 511 ("connect to your cloud"), not a 400.
HTTP_STATUSES: dict[type, int] = {
    CloudkeepError: 400,
    ConfigurationError: 511,
    # Nothing to back up here (yet): the server's state, not the request, is at fault,
    # and it ends without a restart once Pieces OS makes its folder (looked for each time).
    DataNotFound: 503,
    RepositoryNotFound: 511,
    WrongPassphrase: 511,
    KeyMissing: 511,
    RepositoryExists: 409,
    RepositoryChanged: 409,
    DataInUse: 409,
    Busy: 409,
    Canceled: 409,
    TooManyJobs: 429,
    BackupNotFound: 404,
    EntryNotFound: 404,
    FormatTooNew: 505,
    RepositoryDamaged: 500,
    StoreUnreachable: 503,
}

_HINTS: tuple[tuple[type[CloudkeepError], str], ...] = (
    (
        RepositoryNotFound,
        "Create a backup first (POST /backups/create) or check the store "
        "URL the server was started with (CLOUDKEEP_STORE / --store).",
    ),
    (
        WrongPassphrase,
        "Start the server with the repository's passphrase "
        "(CLOUDKEEP_PASSPHRASE names the file holding it).",
    ),
    (
        KeyMissing,
        "Start the server with the repository's passphrase "
        "(CLOUDKEEP_PASSPHRASE names the file holding it).",
    ),
    (
        DataNotFound,
        "Install and start Pieces OS (it makes its data folder), or start the server "
        "with --data PATH (CLOUDKEEP_DATA) or after 'cloudkeep setup'.",
    ),
    (
        ConfigurationError,
        "Fix the server's configuration (--data, --store, CLOUDKEEP_PASSPHRASE) and restart it.",
    ),
    (FormatTooNew, "Update cloudkeep to a version that reads this repository."),
    (StoreUnreachable, "Check the network and the store's credentials, then retry."),
    (
        TooManyJobs,
        "Retry later (the Retry-After header says when); the server's --max-queued-jobs "
        "sets the limit.",
    ),
    (Busy, "Wait for the other operation to finish, then retry."),
)


class ApiError(Exception):
    """A refusal decided by the HTTP layer itself (bad id, bad body, conflicting ids)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def status_for(exc: CloudkeepError) -> int:
    """The HTTP status of an engine error: that of the first class of its MRO listed."""
    for cls in type(exc).__mro__:
        status = HTTP_STATUSES.get(cls)
        if status is not None:
            return status
    return HTTP_STATUSES[CloudkeepError]


def error_text(exc: CloudkeepError) -> str:
    """One line of what happened, one of what to do."""
    message = str(exc).strip() or (type(exc).__doc__ or type(exc).__name__).strip()
    for kind, hint in _HINTS:
        if isinstance(exc, kind):
            return f"{message}\n{hint}\n"
    return f"{message}\n"


def text_response(status: int, text: str) -> PlainTextResponse:
    if not text.endswith("\n"):
        text += "\n"
    return PlainTextResponse(text, status_code=status)


def error_response(exc: CloudkeepError) -> PlainTextResponse:
    """An engine error as its status and text; a full queue also says when to retry."""
    response = text_response(status_for(exc), error_text(exc))
    if isinstance(exc, TooManyJobs):
        response.headers["Retry-After"] = str(RETRY_AFTER)
    return response


def install_error_handlers(app: FastAPI) -> None:
    """Route every expected error to a text/plain body (the SDKs read errors as ``str``)."""

    @app.exception_handler(CloudkeepError)
    async def _cloudkeep_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, CloudkeepError)
        return error_response(exc)

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        return text_response(exc.status, exc.message)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        lines = []
        for error in exc.errors()[:10]:
            where = ".".join(str(part) for part in error.get("loc", ()))
            lines.append(f"{where}: {error.get('msg', 'invalid')}")
        return text_response(422, "Invalid request:\n" + "\n".join(lines))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        response = text_response(exc.status_code, str(exc.detail))
        if exc.headers:
            response.headers.update(exc.headers)
        return response


class CatchAllMiddleware:
    """Turns an unexpected exception into a 500 text body with a trace id, logged once.

    Sits inside Starlette's ServerErrorMiddleware so the exception is not re-raised
    (and printed a second time) by the server.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except BodyTooLarge:
            raise  # not a bug: the guard outside answers 413
        except ClientDisconnect:
            return  # the client left (or was cut off) before its body arrived: nobody to answer
        except Exception:
            trace_id = new_trace_id()
            log.exception(
                "unhandled error in %s %s [trace %s]",
                scope.get("method"),
                scope.get("path"),
                trace_id,
            )
            if started:
                return  # a stream already under way: closing it is all that is left
            response = text_response(
                500,
                f"Internal server error (a bug in cloudkeep). Trace id: {trace_id}. "
                "The server log holds the details under that id.",
            )
            await response(scope, receive, send)
