"""OpenAPI descriptions of the text/plain error responses, shared by the routers."""

from __future__ import annotations

from typing import Any

from cloudkeep.api.streaming import NDJSON, SSE

_TEXT = {"text/plain": {"schema": {"type": "string"}}}

_DESCRIPTIONS: dict[int, str] = {
    400: "Malformed JSON in the body, or a body naming another backup than the path.",
    401: "An application key is required (X-Application-ID) and was missing or wrong.",
    403: "Refused: the Host is not a loopback name (DNS rebinding) or the Origin is not "
    "allowed (cross-site request).",
    404: "No backup or job with this id (ids that cannot exist are also 404).",
    409: "The job was canceled, or another operation on the repository holds its lock.",
    413: "Request body larger than the server's limit (1 MiB by default).",
    415: "A request body that is not JSON.",
    422: "A request body that is JSON but not the documented model.",
    426: "This path is a WebSocket: connect with a WebSocket client.",
    429: "Too many jobs are waiting to run; retry after the Retry-After header's seconds.",
    500: "Internal error (a bug); the text carries a trace id found in the server log.",
    503: "The store could not be reached (network, credentials); retry later.",
    505: "The repository or the backup was written by a newer cloudkeep: update cloudkeep.",
    511: "The server cannot open its repository: store not configured or unreachable as "
    "configured, or passphrase missing or wrong. The text says what to fix.",
}


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` entries for the given status codes, all text/plain."""
    return {code: {"description": _DESCRIPTIONS[code], "content": _TEXT} for code in codes}


# Every route can answer these (security guard, server errors).
COMMON = (401, 403, 500)
ENGINE = (*COMMON, 503, 505, 511)


def streamed_content(schema_ref: str) -> dict[str, Any]:
    """The three renderings of a streamed POST's 200."""
    ref = {"$ref": f"#/components/schemas/{schema_ref}"}
    return {
        "application/json": {"schema": ref},
        NDJSON: {
            "schema": {"type": "string"},
            "example": '{"status":"INITIALIZED","percentage":0.0,"backup":{...}}\n',
        },
        SSE: {
            "schema": {"type": "string"},
            "example": 'event: progress\ndata: {"status":"IN-PROGRESS","percentage":12.5}\n\n',
        },
    }


def json_safe(document: Any) -> Any:
    """``document`` with every string JSON can carry: a backup's paths keep a name that is
    not UTF-8 as lone surrogates, which a response model's strict encoding refuses (a
    500); they are shown escaped (``\\udcff``), as the timeline shows store text."""
    if isinstance(document, str):
        return document.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(document, dict):
        return {json_safe(key): json_safe(value) for key, value in document.items()}
    if isinstance(document, list):
        return [json_safe(value) for value in document]
    return document
