"""Issue 11, item 12 (review): the request deadline also holds for slow bodies
(chunked or sized), HTTP/1.0 heads and a slow request pipelined behind a fast one."""

from __future__ import annotations

import socket
import time

import pytest

from tests.hostile.test_server import StartServer, _assert_no_bug, start_server

__all__ = ["start_server"]  # the fixture, shared with test_server.py

_JSON = b"Host: localhost\r\nContent-Type: application/json\r\n"
_SLOW = {
    "chunked body": (
        b"POST /backups/create HTTP/1.1\r\n" + _JSON + b"Transfer-Encoding: chunked\r\n\r\n",
        b"1\r\n \r\n",
    ),
    "sized body": (
        b"POST /backups/create HTTP/1.1\r\n" + _JSON + b"Content-Length: 100000\r\n\r\n",
        b" ",
    ),
    "HTTP/1.0 head": (b"GET /backups HTTP/1.0\r\n", b"X-Slow: 1\r\n"),
    "pipelined behind a fast request": (
        b"GET /backups HTTP/1.1\r\nHost: localhost\r\n\r\nGET /backups HTTP/1.1\r\nX-Slow: ",
        b"a",
    ),
}


@pytest.mark.parametrize("kind", list(_SLOW))
def test_a_request_dripped_byte_by_byte_is_cut_off(start_server: StartServer, kind: str) -> None:
    server = start_server("--request-timeout", "1")
    head, drip = _SLOW[kind]
    received = b""
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(head)
        sock.settimeout(0.2)
        for _ in range(150):  # 30 s of drip at most: far past the 1 s deadline
            try:
                sock.sendall(drip)
                chunk = sock.recv(65536)
            except TimeoutError:
                continue
            except (BrokenPipeError, ConnectionResetError):
                break
            finally:
                time.sleep(0.2)
            if not chunk:
                break
            received += chunk
        else:
            pytest.fail(f"{kind}: still connected after 30 s")
    assert b"HTTP/1.1 408 " in received, received[-300:]
    with server.http() as http:
        assert http.get("/backups").status_code == 200
    _assert_no_bug(server)
