"""Issue item 7: hostile input to the HTTP API gets a clear 4xx, never a 500 or a crash.

``tests/api/test_api_schema.py`` fuzzes every operation with *valid* data; here
schemathesis generates *invalid* data (negative mode) for every operation, and a table
of hand-written attacks (malformed JSON, oversized and chunked bodies, path traversal
ids, very long ids, foreign Host, cross-site Origin, garbage on the socket) is sent as
raw bytes so no client library tidies them up. After all of it the server is healthy,
logged no traceback, and no attack made a backup.
"""

from __future__ import annotations

import random
import socket
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable

from tests.faults.fault_helpers import Server, Setup, start_server

NEGATIVE_EXAMPLES = 15


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """One server for the module (each attack checks it is still healthy afterwards)."""
    tmp_path = tmp_path_factory.mktemp("hostile")
    setup = Setup(tmp_path, tmp_path / "production", (tmp_path / "store").as_uri())
    setup.data.mkdir()
    (setup.data / "notes.txt").write_text("hostile input test")
    api = start_server(setup)
    yield api
    api.stop()


def raw(port: int, request: bytes, timeout: float = 10) -> tuple[int, bytes]:
    """Send bytes as they are; the status code (0 if the server just closed) and body."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(request)
        chunks = []
        while True:
            try:
                data = sock.recv(65536)
            except ConnectionResetError:
                break
            if not data:
                break
            chunks.append(data)
    reply = b"".join(chunks)
    if not reply.startswith(b"HTTP/1."):
        return 0, reply
    return int(reply.split(b" ", 2)[1]), reply


def _request(
    method: str, path: str, *, headers: dict[str, str] | None = None, body: bytes = b""
) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    if body and not any(
        k.lower() in ("content-length", "transfer-encoding") for k in (headers or {})
    ):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def _chunked(payload_size: int) -> bytes:
    chunk = b"x" * 65536
    body = b""
    for _ in range(payload_size // len(chunk)):
        body += f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"
    return body + b"0\r\n\r\n"


LONG_ID = "0.1.0_" + "9" * 5000
ATTACKS: list[tuple[str, bytes, set[int]]] = [
    (
        "malformed JSON",
        _request(
            "POST",
            "/backups/create",
            headers={"Content-Type": "application/json"},
            body=b'{"id": "x",',
        ),
        {400},
    ),
    (
        "JSON of the wrong shape",
        _request(
            "POST",
            "/backups/create",
            headers={"Content-Type": "application/json"},
            body=b"[1, 2, 3]",
        ),
        {400, 422},
    ),
    (
        "not JSON at all",
        _request("POST", "/backups/create", headers={"Content-Type": "text/plain"}, body=b"hello"),
        {415},
    ),
    (
        "oversized body",
        _request(
            "POST",
            "/backups/create",
            headers={"Content-Type": "application/json"},
            body=b"[" + b"0," * (1024 * 1024) + b"0]",
        ),
        {413},
    ),
    (
        "oversized Content-Length only",
        _request(
            "POST",
            "/backups/create",
            headers={"Content-Type": "application/json", "Content-Length": str(10**12)},
        ),
        {413},
    ),
    (
        "oversized chunked body",
        _request(
            "POST",
            "/backup/0.1.0_1/restore",
            headers={"Content-Type": "application/json", "Transfer-Encoding": "chunked"},
            body=_chunked(2 * 1024 * 1024),
        ),
        {413},
    ),
    ("../ in the id", _request("GET", "/backup/../x"), {404}),
    ("../ in a restore id", _request("POST", "/backup/..%2f..%2fetc/restore"), {404}),
    ("%2e%2e id", _request("GET", "/backup/%2e%2e"), {404}),
    ("%2e%2e%2f id", _request("POST", "/backups/%2e%2e%2fconfig/delete"), {404}),
    ("NUL in the id", _request("GET", "/backup/abc%00def"), {404}),
    ("backslashes", _request("GET", "/backup/..%5c..%5cwindows"), {404}),
    ("unicode id", _request("GET", "/backup/%E2%80%AE0.1.0_1"), {404}),
    ("very long id", _request("GET", f"/backup/{LONG_ID}"), {404, 414}),
    ("very long id, restore", _request("POST", f"/backup/{LONG_ID}/restore"), {404, 414}),
    ("job id of the wrong shape", _request("GET", "/backup/job-../creation/status"), {404}),
    (
        "non-loopback Host",
        _request("GET", "/backups").replace(b"Host: 127.0.0.1", b"Host: evil.example"),
        {403},
    ),
    (
        "rebinding Host",
        _request("POST", "/backups/create").replace(
            b"Host: 127.0.0.1", b"Host: 127.0.0.1.evil.example"
        ),
        {403},
    ),
    (
        "cross-origin Origin",
        _request("POST", "/backups/create", headers={"Origin": "https://evil.example"}),
        {403},
    ),
    ("null Origin", _request("POST", "/backups/create", headers={"Origin": "null"}), {403}),
    (
        "cross-origin delete",
        _request(
            "POST", "/backups/0.1.0_1/delete", headers={"Origin": "http://localhost.evil.example"}
        ),
        {403},
    ),
]


@pytest.mark.parametrize(
    ("name", "request_bytes", "statuses"), ATTACKS, ids=[a[0] for a in ATTACKS]
)
def test_hostile_request_gets_a_clear_4xx(
    server: Server, name: str, request_bytes: bytes, statuses: set[int]
) -> None:
    status, reply = raw(server.port, request_bytes)
    assert status in statuses, f"{name}: {reply[:600]!r}"
    assert not list(Path(server.log.parent / "store").glob("snapshots/*")), "a backup was made"
    head, _, body = reply.partition(b"\r\n\r\n")
    if status != 414:  # refused by the HTTP parser itself, before the app
        assert b"content-type: text/plain" in head.lower(), head
        assert body.strip(), "a 4xx must say why"
    _assert_unharmed(server)


def test_garbage_on_the_socket_does_not_hurt_the_server(server: Server) -> None:
    rnd = random.Random(7)
    for garbage in [
        b"\x00\xff" * 300,
        b"GET / HTTP/9.9\r\n\r\n",
        b"POST\r\n\r\n",
        b"GET /backups HTTP/1.1\r\n" + b"X: " + b"a" * 100_000 + b"\r\n\r\n",
        rnd.randbytes(4096),
    ]:
        status, _ = raw(server.port, garbage)
        assert status == 0 or 400 <= status < 500, status
    _assert_unharmed(server)


def _negative_test(operation: Any, base_url: str) -> Callable[[], None]:
    @given(case=operation.as_strategy(schemathesis.GenerationMode.NEGATIVE))
    @settings(
        max_examples=NEGATIVE_EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def check(case: schemathesis.Case) -> None:
        # Invalid input must never be a server error; bodies that do not match the
        # model may be taken as "no body" where the docs say so, hence no rejection check.
        response = case.call(base_url=base_url, timeout=60)
        assert response.status_code < 500, (
            case.method,
            case.path,
            response.status_code,
            response.text[:300],
        )

    return check


def test_invalid_data_for_every_operation_never_breaks_the_server(server: Server) -> None:
    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 17
    failures = {}
    unsatisfiable: list[str] = []
    for operation in operations:
        try:
            _negative_test(operation, server.url)()
        except Unsatisfiable:
            unsatisfiable.append(operation.label)  # nothing about it can be invalid
        except (AssertionError, BaseExceptionGroup) as error:
            failures[operation.label] = str(error)[:2000]
    assert not failures, failures
    # Operations whose only input is a free-form path id have no invalid data in the
    # schema's sense; hostile ids are fuzzed by the next test.
    fuzzed = len(operations) - len(unsatisfiable)
    assert fuzzed >= 4, unsatisfiable
    print(f"negative fuzz: {fuzzed} operations x {NEGATIVE_EXAMPLES} examples")
    _assert_unharmed(server)


ID_ALPHABET = st.sampled_from([*list("./%\\\x00\n ~:;?#@!$&'()*+,=_-aA09"), "..", "%2e", "%2f"])


def test_hostile_ids_are_4xx_on_every_path(server: Server) -> None:
    """Ids built from traversal pieces, separators, escapes and control bytes."""
    paths = [
        "/backup/{}",
        "/backup/{}/restore",
        "/backups/{}/delete",
        "/backup/{}/creation/status",
        "/backup/{}/restoration/cancel",
    ]

    @given(
        pieces=st.lists(ID_ALPHABET, min_size=1, max_size=40),
        path=st.sampled_from(paths),
        repeat=st.integers(1, 300),
    )
    @example(pieces=[".", "%2f"], path="/backup/{}", repeat=1)  # redirect to a decoded path
    @settings(
        max_examples=120, deadline=None, database=None, suppress_health_check=list(HealthCheck)
    )
    def check(pieces: list[str], path: str, repeat: int) -> None:
        backup_id = "".join(pieces) * (repeat if len(pieces) < 3 else 1)
        method = "GET" if path.count("/") == 2 or "status" in path else "POST"
        target = path.format(
            backup_id.replace(" ", "%20")
            .replace("\n", "%0A")
            .replace("#", "%23")
            .replace("?", "%3F")
            .replace("\x00", "%00")
        )
        status, reply = raw(server.port, _request(method, target))
        if status == 307:  # the router's trailing-slash redirect: same path, minus "/"
            # It answers with the decoded path ("%2f" became "/"), always on loopback.
            location = next(
                line.split(b":", 1)[1].strip().decode()
                for line in reply.split(b"\r\n")
                if line.lower().startswith(b"location:")
            )
            assert location.startswith("http://127.0.0.1/"), location
            expected = urllib.parse.unquote(target).rstrip("/")
            assert urllib.parse.unquote(location[len("http://127.0.0.1") :]) == expected
            return
        assert 400 <= status < 500, (method, target[:200], reply[:300])

    check()
    _assert_unharmed(server)


def _assert_unharmed(server: Server) -> None:
    health = httpx.get(f"{server.url}/.well-known/health", timeout=10)
    assert health.status_code == 200
    assert "Traceback" not in server.output()
    assert "Internal server error" not in server.output()
