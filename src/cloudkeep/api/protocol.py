"""uvicorn's httptools protocol with a deadline and a size cap on reading each request.

uvicorn bounds only the idle time between two requests (``timeout_keep_alive``) and
cancels that timer on the first byte received, so a client that sends a request head
one byte at a time (slowloris) holds its connection forever; nothing bounds the time
to the first byte of a new connection either, and httptools puts no limit on the size
of a head (``h11_max_incomplete_event_size`` exists for h11 only). ``limit_concurrency``
does not help: it answers 503 to everyone once the slow connections fill it.

Here every request must arrive whole (head and body) within ``request_timeout``
seconds, counted from the connection's opening for the first request and from its
first byte for the next ones; a late one gets a 408 (or, if a response has begun,
just the close), and a route still waiting for its body sees the client disconnect.
A head larger than ``max_head`` bytes gets a 431. With these, a slow connection costs
a file descriptor for a bounded time; ``serve`` raises the descriptor limit so that
a thousand of them do not keep real clients out.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

__all__ = ["DEFAULT_MAX_HEAD", "DEFAULT_REQUEST_TIMEOUT", "GuardedHttpProtocol", "protocol_for"]

log = logging.getLogger("cloudkeep.api")

DEFAULT_REQUEST_TIMEOUT = 10.0
DEFAULT_MAX_HEAD = 64 * 1024


def _refusal(status: bytes, text: str) -> bytes:
    body = text.encode("ascii")
    return (
        b"HTTP/1.1 " + status + b"\r\n"
        b"content-type: text/plain; charset=utf-8\r\n"
        b"content-length: " + str(len(body)).encode("ascii") + b"\r\n"
        b"connection: close\r\n\r\n" + body
    )


class GuardedHttpProtocol(HttpToolsProtocol):
    """One connection; ``request_timeout`` and ``max_head`` are set by ``protocol_for``."""

    request_timeout = DEFAULT_REQUEST_TIMEOUT
    max_head = DEFAULT_MAX_HEAD

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self._deadline: asyncio.TimerHandle | None = None
        self._reading_head = True
        self._head_bytes = 0

    # -- the deadline ------------------------------------------------------------
    def _arm(self) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(self.request_timeout, self._too_slow)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _too_slow(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        log.debug("closing %s: no complete request within %ss", self.client, self.request_timeout)
        text = f"Request timeout: send the whole request within {self.request_timeout:g} s.\n"
        self._refuse(b"408 Request Timeout", text)

    def _refuse(self, status: bytes, text: str) -> None:
        """Answer and close; only the close if a response is already under way."""
        cycle = self.cycle
        if cycle is None or cycle.response_complete:
            self.transport.write(_refusal(status, text))
        elif not cycle.response_started:  # the app waits for the body: it gets a disconnect
            cycle.disconnected = True
            cycle.message_event.set()
            self.transport.write(_refusal(status, text))
        self.transport.close()

    # -- hooks into uvicorn's protocol ----------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._reading_head:
            self._head_bytes += len(data)
        super().data_received(data)
        too_large = self._reading_head and self._head_bytes > self.max_head
        if too_large and not self.transport.is_closing():
            text = f"Request head too large: the limit is {self.max_head} bytes.\n"
            self._refuse(b"431 Request Header Fields Too Large", text)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._deadline is None:  # the first request's deadline runs from the connection
            self._arm()

    def on_headers_complete(self) -> None:
        self._reading_head = False
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        # Also called for a WebSocket handshake, before uvicorn hands the transport over.
        self._disarm()
        self._reading_head = True  # what follows is the next request's head
        self._head_bytes = 0
        super().on_message_complete()


def protocol_for(
    request_timeout: float = DEFAULT_REQUEST_TIMEOUT, max_head: int = DEFAULT_MAX_HEAD
) -> type[GuardedHttpProtocol]:
    """A protocol class with these limits, to pass as uvicorn's ``http``."""
    return type(
        "GuardedHttpProtocol",
        (GuardedHttpProtocol,),
        {"request_timeout": request_timeout, "max_head": max_head},
    )
