"""A fault-injecting HTTP/1.1 proxy on loopback, in front of the S3 test server (moto).

Each request from the client is read whole, then a ``Schedule`` decides its fate by
its sequence number: forward it, answer 503, reset the connection before or after
forwarding (so a write may land although its reply is lost), stall, or forward it
slowly. Requests go to the upstream unchanged (Host header included, so signatures
still match). Threads only, bounded: every socket has a timeout and ``stop`` closes all.
"""

from __future__ import annotations

import contextlib
import http.client
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

FORWARD = "forward"
ERROR_503 = "503"
RESET_BEFORE = "reset-before"  # connection reset, request never forwarded
RESET_AFTER = "reset-after"  # request forwarded (it may have landed), reply lost
TRUNCATE = "truncate"  # reply headers and half the body, then a reset
STALL = "stall"  # no reply for ``stall_seconds``, then the connection closes
SLOW = "slow"  # forwarded, the reply trickles at ``slow_bytes_per_second``

Decide = Callable[[int, str, str], str]


@dataclass
class Schedule:
    """Which fault the n-th request (1-based) gets; thread-safe counters for reports."""

    decide: Decide
    stall_seconds: float = 30.0
    slow_bytes_per_second: int = 256 * 1024
    counts: dict[str, int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _number: int = 0

    def next(self, method: str, path: str) -> str:
        with self._lock:
            self._number += 1
            action = self.decide(self._number, method, path)
            self.counts[action] = self.counts.get(action, 0) + 1
            return action

    @property
    def requests(self) -> int:
        return self._number


def every(n: int, action: str, offset: int = 0) -> Decide:
    """``action`` for every n-th request, forward the rest."""
    return lambda number, _m, _p: action if (number + offset) % n == 0 else FORWARD


def mixed(rules: list[tuple[int, str]]) -> Decide:
    """The first rule whose period divides the request number wins."""

    def decide(number: int, _method: str, _path: str) -> str:
        for period, action in rules:
            if number % period == 0:
                return action
        return FORWARD

    return decide


def always(action: str) -> Decide:
    return lambda _n, _m, _p: action


class FaultProxy:
    """``FaultProxy(upstream_port, schedule)``; ``.port`` to connect to; ``stop()``."""

    def __init__(self, upstream_port: int, schedule: Schedule) -> None:
        self.upstream_port = upstream_port
        self.schedule = schedule
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self.port = self._listener.getsockname()[1]
        self._stopping = threading.Event()
        self._connections: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._accept_loop, daemon=True, name="proxy")
        self._thread.start()

    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(timeout=5)
        self._listener.close()
        with self._lock:
            for conn in list(self._connections):
                with contextlib.suppress(OSError):
                    conn.close()

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    # ----------------------------------------------------------------- serving
    def _accept_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(120)
            with self._lock:
                self._connections.add(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        reader = conn.makefile("rb")
        upstream = http.client.HTTPConnection("127.0.0.1", self.upstream_port, timeout=60)
        try:
            while not self._stopping.is_set():
                request = _read_request(reader)
                if request is None:
                    return
                method, target, headers, body = request
                action = self.schedule.next(method, target)
                if not self._handle(conn, upstream, action, method, target, headers, body):
                    return
        except (OSError, http.client.HTTPException, ValueError):
            return
        finally:
            upstream.close()
            with self._lock:
                self._connections.discard(conn)
            with contextlib.suppress(OSError):
                conn.close()

    def _handle(
        self,
        conn: socket.socket,
        upstream: http.client.HTTPConnection,
        action: str,
        method: str,
        target: str,
        headers: list[tuple[str, str]],
        body: bytes,
    ) -> bool:
        """Apply ``action``; False when the client connection is finished."""
        if action == ERROR_503:
            payload = (
                b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code>'
                b"<Message>injected fault</Message></Error>"
            )
            conn.sendall(
                b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/xml\r\n"
                + f"Content-Length: {len(payload)}\r\n\r\n".encode()
                + payload
            )
            return True
        if action == RESET_BEFORE:
            _reset(conn)
            return False
        if action == STALL:
            self._stopping.wait(self.schedule.stall_seconds)
            return False
        status, reason, reply_headers, reply_body = _forward(
            upstream, method, target, headers, body
        )
        if action == RESET_AFTER:
            _reset(conn)
            return False
        length = str(len(reply_body))
        head = f"HTTP/1.1 {status} {reason}\r\n".encode()
        for name, value in reply_headers:
            lowered = name.lower()
            if lowered == "content-length" and method == "HEAD":
                length = value  # a HEAD reply announces the object's length, sends nothing
            elif lowered not in ("transfer-encoding", "content-length", "connection"):
                head += f"{name}: {value}\r\n".encode()
        head += f"Content-Length: {length}\r\n\r\n".encode()
        if action == TRUNCATE and len(reply_body) > 1:
            conn.sendall(head + reply_body[: len(reply_body) // 2])
            _reset(conn)
            return False
        if action == SLOW:
            conn.sendall(head)
            step = max(1, self.schedule.slow_bytes_per_second // 20)
            for start in range(0, len(reply_body), step):
                if self._stopping.is_set():
                    return False
                conn.sendall(reply_body[start : start + step])
                time.sleep(0.05)  # the throttle itself (bytes per 50 ms), not a wait for state
            return True
        conn.sendall(head + reply_body)
        return True


def _read_request(reader) -> tuple[str, str, list[tuple[str, str]], bytes] | None:
    line = reader.readline(65536)
    if not line:
        return None
    method, target, _version = line.decode("latin-1").rstrip("\r\n").split(" ", 2)
    headers: list[tuple[str, str]] = []
    while True:
        raw = reader.readline(65536)
        if raw in (b"\r\n", b"\n", b""):
            break
        name, _, value = raw.decode("latin-1").partition(":")
        headers.append((name.strip(), value.strip()))
    lowered = {k.lower(): v for k, v in headers}
    if "chunked" in lowered.get("transfer-encoding", "").lower():
        body = b""
        while True:
            size = int(reader.readline(65536).split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while reader.readline(65536) not in (b"\r\n", b"\n", b""):
                    pass
                break
            body += reader.read(size)
            reader.readline(65536)
        headers = [(k, v) for k, v in headers if k.lower() != "transfer-encoding"]
        headers.append(("Content-Length", str(len(body))))
    else:
        body = reader.read(int(lowered.get("content-length", "0") or 0))
    return method, target, headers, body


def _forward(
    upstream: http.client.HTTPConnection,
    method: str,
    target: str,
    headers: list[tuple[str, str]],
    body: bytes,
) -> tuple[int, str, list[tuple[str, str]], bytes]:
    for attempt in range(2):  # a kept-alive upstream connection may have been closed
        try:
            upstream.putrequest(method, target, skip_host=True, skip_accept_encoding=True)
            for name, value in headers:
                if name.lower() != "connection":
                    upstream.putheader(name, value)
            upstream.endheaders(body or None)
            response = upstream.getresponse()
            reply = response.read()
            return response.status, response.reason, response.getheaders(), reply
        except (ConnectionError, http.client.RemoteDisconnected, http.client.CannotSendRequest):
            upstream.close()
            if attempt:
                raise
    raise AssertionError("unreachable")


def _reset(conn: socket.socket) -> None:
    """Close with RST (SO_LINGER 0), as a dropped connection looks to the client."""
    with contextlib.suppress(OSError):
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        conn.close()
