"""Request guards that run before routing, for HTTP and WebSocket alike.

A local HTTP service is reachable from every web page the user opens. Two browser
attacks matter: DNS rebinding (an attacker's name resolving to 127.0.0.1; caught by the
``Host`` check) and cross-site requests (caught by the ``Origin`` check). Non-browser
clients (SDKs, curl) send no ``Origin`` and a loopback ``Host``, so they pass.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cloudkeep.api.appkeys import AppKeyVerifier
from cloudkeep.errors import ConfigurationError

__all__ = [
    "APP_KEY_HEADER",
    "DEFAULT_MAX_BODY",
    "KEY_SUBPROTOCOL_PREFIX",
    "SUBPROTOCOL",
    "BodyTooLarge",
    "GuardMiddleware",
    "GuardPolicy",
    "is_loopback_name",
    "split_host",
]

APP_KEY_HEADER = "x-application-id"
DEFAULT_MAX_BODY = 1024 * 1024
# Reachable without an app key: discovery (the SDK wrapper probes health), the docs and
# the dashboard's page (it holds no secret; every API call it makes needs the key).
OPEN_PATHS = frozenset(
    {
        "/",
        "/.well-known/health",
        "/.well-known/version",
        "/docs",
        "/docs/oauth2-redirect",
        "/openapi.json",
        "/redoc",
    }
)
# The docs pages' scripts and styles (see docs.py).
OPEN_PREFIX = "/docs/assets/"
# The dashboard's script and styles: one file name, no folders, no dot segments.
OPEN_DASHBOARD_ASSET = re.compile(r"/dashboard/[A-Za-z0-9][A-Za-z0-9_-]*\.[a-z]{1,8}")

# Browsers cannot set headers on a WebSocket: the key may come as a subprotocol
# ``cloudkeep.key.<key>`` (app keys are URL-safe base64, valid protocol tokens). The
# page also offers ``cloudkeep``, which the server answers, so the key is not echoed.
SUBPROTOCOL = "cloudkeep"
KEY_SUBPROTOCOL_PREFIX = "cloudkeep.key."


def split_host(value: str) -> tuple[str, int | None] | None:
    """``Host`` header → (lowercase name, port); None when malformed."""
    value = value.strip()
    if not value:
        return None
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            return None
        name, rest = value[1:end], value[end + 1 :]
        if rest and not rest.startswith(":"):
            return None
        port_text = rest[1:] if rest else ""
    elif value.count(":") == 1:
        name, port_text = value.split(":")
    elif ":" in value:
        return None
    else:
        name, port_text = value, ""
    if port_text:
        if not port_text.isdigit() or int(port_text) > 65535:
            return None
        port: int | None = int(port_text)
    else:
        port = None
    name = name.lower().rstrip(".")
    return (name, port) if name else None


def is_loopback_name(name: str) -> bool:
    """localhost, 127.0.0.0/8 or ::1 (names a DNS-rebinding attacker cannot control)."""
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class GuardPolicy:
    """What the guard accepts; built once by ``create_app``."""

    allowed_origins: frozenset[str] = frozenset()
    extra_hosts: frozenset[str] = frozenset()
    any_host: bool = False
    verifier: AppKeyVerifier | None = None
    max_body: int = DEFAULT_MAX_BODY
    tls: bool = False
    open_paths: frozenset[str] = field(default=OPEN_PATHS)

    def is_open(self, path: str) -> bool:
        """Reachable without an application key (no dot segments under the assets)."""
        return (
            path in self.open_paths
            or (path.startswith(OPEN_PREFIX) and ".." not in path)
            or OPEN_DASHBOARD_ASSET.fullmatch(path) is not None
        )

    @staticmethod
    def normalize_origins(origins: Iterable[str]) -> frozenset[str]:
        return frozenset(o.strip().rstrip("/").lower() for o in origins if o.strip())

    def host_allowed(self, host_header: str | None) -> bool:
        if host_header is None:
            return False
        parsed = split_host(host_header)
        if parsed is None:
            return False
        name, _ = parsed
        return self.any_host or is_loopback_name(name) or name in self.extra_hosts

    def origin_allowed(self, origin: str, host_header: str | None) -> bool:
        """Allow-listed origins, or our own origin (the /docs page served by us)."""
        normalized = origin.strip().rstrip("/").lower()
        if normalized in self.allowed_origins:
            return True
        if normalized == "null" or host_header is None:
            return False
        parts = urlsplit(normalized)
        scheme, default_port = ("https", 443) if self.tls else ("http", 80)
        if parts.scheme != scheme or not parts.netloc:
            return False
        origin_host = split_host(parts.netloc)
        request_host = split_host(host_header.lower())
        if origin_host is None or request_host is None:
            return False
        same = origin_host[0] == request_host[0] and (origin_host[1] or default_port) == (
            request_host[1] or default_port
        )
        return same and self.host_allowed(host_header)


class BodyTooLarge(Exception):
    """Raised from ``receive`` mid-body; the guard turns it into a 413."""


class GuardMiddleware:
    """Host → Origin → app key → body size, for ``http`` and ``websocket`` scopes."""

    def __init__(self, app: ASGIApp, policy: GuardPolicy) -> None:
        self.app = app
        self.policy = policy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        host = headers.get("host")
        policy = self.policy
        if not policy.host_allowed(host):
            await _deny(
                scope,
                send,
                403,
                "Forbidden: the Host header must name this machine's "
                "loopback (localhost, 127.0.0.1 or [::1]); requests for other host names "
                "are refused to prevent DNS rebinding.\n",
            )
            return
        origin = headers.get("origin")
        if origin is not None and not policy.origin_allowed(origin, host):
            await _deny(
                scope,
                send,
                403,
                f"Forbidden: cross-origin request from {origin[:200]} "
                "is not allowed; add the origin to the server's allowed origins "
                "(--allow-origin) if it is trusted.\n",
            )
            return
        is_preflight = (
            scope["type"] == "http"
            and scope["method"] == "OPTIONS"
            and "access-control-request-method" in headers
        )
        presented = headers.get(APP_KEY_HEADER)
        offered: list[str] = []
        if scope["type"] == "websocket":
            offered = _offered_subprotocols(headers)
            if presented is None:
                presented = _key_from_subprotocols(offered)
        try:
            refused = (
                policy.verifier is not None
                and not is_preflight
                and not policy.is_open(scope["path"])
                and not policy.verifier.verify(presented)
            )
        except ConfigurationError as exc:  # a damaged key file: nobody is let in
            await _deny(scope, send, 511, f"{exc}\n")  # ConfigurationError's status
            return
        if refused:
            await _deny(
                scope,
                send,
                401,
                "Unauthorized: this server requires an application key "
                "in the X-Application-ID header; create one with "
                "`cloudkeep app-key create`.\n",
            )
            return
        if scope["type"] == "websocket":
            await self.app(scope, receive, _answering_subprotocol(send, offered))
            return
        length = headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > policy.max_body):
            await _deny(
                scope, send, 413, f"Request body too large: the limit is {policy.max_body} bytes.\n"
            )
            return
        await self._limited(scope, receive, send)

    async def _limited(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Count chunked bodies too: a missing Content-Length must not bypass the limit."""
        received = 0
        started = False
        limit = self.policy.max_body

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except BodyTooLarge:
            if started:
                raise
            await _deny(scope, send, 413, f"Request body too large: the limit is {limit} bytes.\n")


def _offered_subprotocols(headers: Headers) -> list[str]:
    return [
        item.strip()
        for value in headers.getlist("sec-websocket-protocol")
        for item in value.split(",")
        if item.strip()
    ]


def _key_from_subprotocols(offered: list[str]) -> str | None:
    for item in offered:
        if item.startswith(KEY_SUBPROTOCOL_PREFIX):
            return item[len(KEY_SUBPROTOCOL_PREFIX) :]
    return None


def _answering_subprotocol(send: Send, offered: list[str]) -> Send:
    """Accept with ``cloudkeep`` when the client offered our protocols: a browser fails a
    socket whose offered protocols get no answer. The key protocol is answered only
    when it is all the client offered."""
    if SUBPROTOCOL in offered:
        chosen: str | None = SUBPROTOCOL
    else:
        chosen = next((p for p in offered if p.startswith(KEY_SUBPROTOCOL_PREFIX)), None)
    if chosen is None:
        return send

    async def accepting(message: Message) -> None:
        if message["type"] == "websocket.accept" and not message.get("subprotocol"):
            message = {**message, "subprotocol": chosen}
        await send(message)

    return accepting


async def _deny(scope: Scope, send: Send, status: int, text: str) -> None:
    """Plain-text refusal; for WebSockets an HTTP response where the server supports it."""
    body = text.encode("utf-8")
    headers = [
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", str(len(body)).encode()),
    ]
    if scope["type"] == "http":
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        return
    if "websocket.http.response" in scope.get("extensions", {}):
        await send({"type": "websocket.http.response.start", "status": status, "headers": headers})
        await send({"type": "websocket.http.response.body", "body": body})
        return
    await send({"type": "websocket.close", "code": 1008, "reason": text[:120]})
