"""Dependencies shared by the routers: the service, validated ids, optional JSON bodies."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar

from fastapi import Depends, Path
from pydantic import ValidationError
from starlette.requests import HTTPConnection, Request

from cloudkeep.api.errors import ApiError
from cloudkeep.api.service import BackupService, validate_id
from cloudkeep.wire import WireModel

__all__ = ["BackupId", "Service", "get_service", "optional_body", "request_body_doc"]

M = TypeVar("M", bound=WireModel)

_JSON_TYPES = ("application/json", "+json")


def get_service(connection: HTTPConnection) -> BackupService:
    """The app's single BackupService (HTTP and WebSocket routes alike)."""
    service: BackupService = connection.app.state.service
    return service


Service = Annotated[BackupService, Depends(get_service)]


def _backup_id(
    backup: Annotated[
        str,
        Path(
            description="A backup's id (version_timestamp) or, for creation status and "
            "cancel, the id of a creation job (job-…) as announced in INITIALIZED.",
        ),
    ],
) -> str:
    return validate_id(backup)


BackupId = Annotated[str, Depends(_backup_id)]


def optional_body(model: type[M]) -> Callable[[Request], Awaitable[M | None]]:
    """Parse an optional JSON body by hand.

    The TypeScript SDK sends ``Content-Type: application/json`` with no body at all and
    the Python SDK may send ``null`` or ``{}``: all mean "no body". Malformed JSON is a
    400 (so is JSON nested deeper than the parser's recursion limit, which Python's
    ``json`` reports as a RecursionError) and a wrong shape a 422, both with a
    plain-text explanation.
    """

    async def parse(request: Request) -> M | None:
        raw = await request.body()
        if not raw.strip():
            return None
        content_type = request.headers.get("content-type", "application/json").lower()
        media = content_type.split(";", 1)[0].strip()
        if not (media == "application/json" or media.endswith("+json")):
            raise ApiError(
                415, f"Unsupported Content-Type {media!r}: send application/json (or no body)."
            )
        try:
            data: Any = json.loads(raw)
        except RecursionError:
            raise ApiError(400, "Malformed JSON in the request body: nested too deeply.") from None
        except (ValueError, UnicodeDecodeError) as exc:
            raise ApiError(400, f"Malformed JSON in the request body: {exc}.") from exc
        if data is None or data == {}:
            return None
        if not isinstance(data, dict):
            raise ApiError(
                422,
                f"The request body must be a JSON object ({model.__name__}), "
                f"not {type(data).__name__}.",
            )
        try:
            return model.model_validate(data)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}"
                for e in exc.errors()[:10]
            )
            raise ApiError(
                422, f"Invalid {model.__name__} in the request body: {problems}."
            ) from exc

    parse.__name__ = f"optional_{model.__name__.lower()}_body"
    return parse


def request_body_doc(model: type[WireModel]) -> dict[str, Any]:
    """``openapi_extra`` documenting the optional body the hand parser accepts."""
    return {
        "requestBody": {
            "required": False,
            "content": {
                "application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}
            },
        }
    }
