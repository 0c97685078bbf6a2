"""Attacks on the HTTP server (issue 11, item 12), each against a real server process.

A local or network client plays the attacker: slow connections by the thousand
(slowloris), a flood of backup requests, JSON nested 100,000 deep, a docs page that
would pull scripts from a CDN, an app key sent in clear, a WebDAV password in the
process list and a key file other users can read.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
import selectors
import socket
import sqlite3
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from tests.hostile.conftest import CliResult, assert_clean_failure

STARTUP_TIMEOUT = 30.0


# ---- a real server process ----------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _make_db(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(folder / "notes.db") as db:
        db.execute("CREATE TABLE IF NOT EXISTS notes(id INTEGER PRIMARY KEY, body TEXT)")
        db.execute("INSERT INTO notes(body) VALUES ('the plans')")


@dataclass
class Server:
    url: str
    port: int
    process: subprocess.Popen[bytes]
    stdout_path: Path
    stderr_path: Path
    verify: ssl.SSLContext | bool = True

    def http(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30.0, verify=self.verify)

    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


StartServer = Callable[..., Server]


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[StartServer]:
    """``start_server(*args, verify=..., preexec=...)``: ``python -m cloudkeep.api``.

    Data folder (a real SQLite db) and folder store under ``tmp_path``; the
    environment is the test's (isolated config and cache, CLOUDKEEP_PASSPHRASE).
    """
    started: list[Server] = []

    def start(
        *args: str,
        verify: ssl.SSLContext | bool = True,
        preexec: Callable[[], None] | None = None,
        host: str = "127.0.0.1",
    ) -> Server:
        root = tmp_path / f"server-{len(started)}"
        _make_db(root / "data")
        port = _free_port()
        scheme = "http" if verify is True else "https"
        out, err = root / "stdout.log", root / "stderr.log"
        command = [
            sys.executable,
            "-m",
            "cloudkeep.api",
            "--data",
            str(root / "data"),
            "--store",
            (root / "store").as_uri(),
            "--host",
            host,
            "--port",
            str(port),
            "--log-level",
            "warning",
            *args,
        ]
        with out.open("wb") as stdout, err.open("wb") as stderr:
            process = subprocess.Popen(
                command,
                stdout=stdout,
                stderr=stderr,
                stdin=subprocess.DEVNULL,
                cwd=root,
                preexec_fn=preexec,  # only sets a resource limit
            )
        server = Server(f"{scheme}://127.0.0.1:{port}", port, process, out, err, verify)
        started.append(server)
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"server exited {process.returncode}:\n{server.stderr()}")
            try:
                with server.http() as http:
                    if http.get("/.well-known/health", timeout=1.0).status_code == 200:
                        return server
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"server did not become healthy:\n{server.stderr()}")
            time.sleep(0.1)

    yield start
    for server in started:
        server.stop()


def _assert_no_bug(server: Server) -> None:
    log = server.stdout() + server.stderr()
    assert "Traceback" not in log, log
    assert "unhandled error" not in log, log


# ---- 1. slow clients ----------------------------------------------------------------

SLOW_CONNECTIONS = 1100
REQUEST_TIMEOUT = 8  # seconds; long enough that none is cut before the real request


def _raise_own_descriptor_limit(needed: int) -> None:
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < needed:
        pytest.skip(f"the hard open-file limit ({hard}) is below {needed}")
    if soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


def _usual_descriptor_limit() -> None:
    """In the server's child before exec: the soft limit most Linux logins have."""
    import resource

    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    soft = 1024 if hard == resource.RLIM_INFINITY else min(1024, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def _soft_descriptor_limit(pid: int) -> int:
    limits = Path(f"/proc/{pid}/limits").read_text()
    match = re.search(r"^Max open files\s+(\d+)", limits, re.MULTILINE)
    assert match, limits
    return int(match.group(1))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_slowloris_connections_are_cut_off_and_do_not_starve_real_clients(
    start_server: StartServer,
) -> None:
    """1,100 connections dribbling a request head: a real GET still answers, and every
    slow connection is closed with a 408 once the request deadline passes.

    The server starts with the usual soft limit of 1024 descriptors (where 1,100
    idle connections once left no descriptor to accept a real client with).
    """
    _raise_own_descriptor_limit(SLOW_CONNECTIONS + 400)
    server = start_server(
        "--request-timeout", str(REQUEST_TIMEOUT), preexec=_usual_descriptor_limit
    )
    assert _soft_descriptor_limit(server.process.pid) > SLOW_CONNECTIONS + 100

    slow: list[socket.socket] = []
    try:
        for _ in range(SLOW_CONNECTIONS):
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
            sock.sendall(b"GET /backups HTTP/1.1\r\nHost: localhost\r\nX-Slow: a")
            slow.append(sock)
        for sock in slow:  # still sending, one byte at a time
            sock.sendall(b"a")

        with server.http() as http:
            answer = http.get("/backups")
        assert answer.status_code == 200
        assert answer.json() == {"iterable": []}
        cut_early = selectors.DefaultSelector()
        for sock in slow:
            cut_early.register(sock, selectors.EVENT_READ)
        assert cut_early.select(timeout=0) == [], "slow connections were cut before the deadline"
        cut_early.close()

        answers = _read_until_closed(slow, bound=REQUEST_TIMEOUT + 30)
        assert len(answers) == SLOW_CONNECTIONS, "a slow connection was never cut off"
        assert all(a.startswith(b"HTTP/1.1 408 ") for a in answers), answers[:3]
        assert b"send the whole request within 8 s" in answers[0]
    finally:
        for sock in slow:
            sock.close()
    with server.http() as http:
        assert http.get("/backups").status_code == 200
    _assert_no_bug(server)


def _read_until_closed(sockets: list[socket.socket], bound: float) -> list[bytes]:
    """What the server sent on each socket until it closed it (within ``bound`` s)."""
    selector = selectors.DefaultSelector()
    received: dict[socket.socket, bytes] = {}
    for sock in sockets:
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ)
        received[sock] = b""
    closed: list[bytes] = []
    deadline = time.monotonic() + bound
    while len(closed) < len(sockets) and time.monotonic() < deadline:
        for key, _ in selector.select(timeout=1.0):
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            try:
                data = sock.recv(65536)
            except ConnectionResetError:
                data = b""
            if data:
                received[sock] += data
            else:
                selector.unregister(sock)
                closed.append(received[sock])
    selector.close()
    return closed


def test_the_deadline_bounds_reading_requests_not_websockets(start_server: StartServer) -> None:
    """A WebSocket and a keep-alive connection outlive the request deadline."""
    server = start_server("--request-timeout", "1")
    url = f"ws://127.0.0.1:{server.port}/backups/streamed/progress"
    with connect(url) as feed, server.http() as http:
        assert '"backups":[]' in str(feed.recv(timeout=10))
        assert http.get("/backups").status_code == 200
        time.sleep(2.5)  # past the deadline, twice over
        assert http.get("/backups").status_code == 200  # same connection, kept alive
        created = http.post("/backups/create")
        assert created.status_code == 200, created.text
        seen = ""
        while created.json()["id"] not in seen:
            seen = str(feed.recv(timeout=30))
    _assert_no_bug(server)


def test_oversized_request_head_is_431(start_server: StartServer) -> None:
    server = start_server()
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(b"GET /backups HTTP/1.1\r\nHost: localhost\r\n")
        try:
            for _ in range(64):  # 1 MiB of one header, never ended
                sock.sendall(b"X-Fill: " + b"f" * 16376 + b"\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # cut off while still sending: what should happen
        answer = sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]
    assert b"the limit is 65536 bytes" in answer
    with server.http() as http:
        assert http.get("/backups").status_code == 200
    _assert_no_bug(server)


# ---- 2. a flood of jobs -------------------------------------------------------------


def _engine_process(server: Server) -> psutil.Process:
    """The server's backup engine (a spawned multiprocessing child)."""
    for child in psutil.Process(server.process.pid).children(recursive=True):
        command = " ".join(child.cmdline())
        if "spawn_main" in command:
            return child
    raise AssertionError("the server has no engine process")


def _queue_creation(http: httpx.Client) -> str:
    """Start a backup, read its first event (INITIALIZED: queued) and leave."""
    headers = {"Accept": "application/x-ndjson"}
    with http.stream("POST", "/backups/create/streamed", headers=headers) as stream:
        assert stream.status_code == 200, stream.read()
        first = next(stream.iter_lines())
    assert '"INITIALIZED"' in first, first
    return first


def test_full_job_queue_answers_429(start_server: StartServer) -> None:
    """With the engine busy, two jobs may wait; the third is refused with 429."""
    server = start_server("--max-queued-jobs", "2")
    with server.http() as http:
        made = http.post("/backups/create")
        assert made.status_code == 200, made.text
        backup_id = made.json()["id"]

        engine = _engine_process(server)
        engine.suspend()  # the engine is busy for as long as the test needs
        try:
            headers = {"Accept": "application/x-ndjson"}
            with http.stream("POST", "/backups/create/streamed", headers=headers) as running:
                lines = running.iter_lines()
                assert '"INITIALIZED"' in next(lines)
                assert '"IN-PROGRESS"' in next(lines)  # taken by the worker: none waits yet
            _queue_creation(http)
            _queue_creation(http)

            for refused in (
                http.post("/backups/create"),
                http.post("/backups/create/streamed"),
                http.post(f"/backup/{backup_id}/restore"),
                http.post(f"/backup/{backup_id}/restore/streamed"),
            ):
                assert refused.status_code == 429, refused.text
                assert refused.headers["retry-after"] == "30"
                assert refused.headers["content-type"].startswith("text/plain")
                assert "2 jobs are already waiting" in refused.text
                assert "--max-queued-jobs" in refused.text
            for path in (
                "/backups/create/streamed/websocket",
                f"/backup/{backup_id}/restore/streamed/websocket",
            ):
                with pytest.raises(InvalidStatus) as socket_refused:
                    connect(f"ws://127.0.0.1:{server.port}{path}")
                assert socket_refused.value.response.status_code == 429

            progress = http.get("/backups/streamed/progress").json()
            assert len(progress["backups"]) == 3  # one running, two waiting: no more
            assert http.get("/backups").status_code == 200  # reads are not queued
        finally:
            engine.resume()
    _assert_no_bug(server)


# ---- 3. deeply nested JSON ----------------------------------------------------------

_DEEP_BODIES = {
    "arrays": b"[" * 100_000,
    "objects": b'{"a":' * 100_000,
    "parsable-but-deep": b"[" * 900 + b"]" * 900,  # within the parser's limit: then 422
}
_BODY_ROUTES = (
    "/backups/create",
    "/backups/create/streamed",
    "/backups/0.1.0_1700000000000000/delete",
    "/backup/0.1.0_1700000000000000/restore",
    "/backup/0.1.0_1700000000000000/restore/streamed",
)


def test_deeply_nested_json_is_400_or_422_on_every_body_route(start_server: StartServer) -> None:
    server = start_server()
    with server.http() as http:
        for route in _BODY_ROUTES:
            for name, body in _DEEP_BODIES.items():
                answer = http.post(
                    route, content=body, headers={"Content-Type": "application/json"}
                )
                assert answer.status_code in (400, 422), (route, name, answer.text)
                assert answer.headers["content-type"].startswith("text/plain")
                assert "request body" in answer.text, answer.text
        assert http.get("/backups").json() == {"iterable": []}  # nothing was started
        assert http.get("/backups/streamed/progress").json() == {
            "backups": [],
            "restorations": [],
        }
    _assert_no_bug(server)


# ---- 4. the docs pages load nothing from another origin -----------------------------

_REFERENCE = re.compile(r"""(?:src|href)\s*=\s*["']([^"']+)["']|url:\s*["']([^"']+)["']""")


def test_docs_pages_use_only_assets_served_by_the_server(start_server: StartServer) -> None:
    server = start_server("--require-app-key")  # the docs stay reachable without a key
    with server.http() as http:
        for page in ("/docs", "/redoc", "/docs/oauth2-redirect"):
            answer = http.get(page)
            assert answer.status_code == 200, page
            html = answer.text
            assert not re.search(r"https?://", html), f"{page} names another origin"
            assert "cdn" not in html.lower()
            policy = answer.headers["content-security-policy"]
            assert "default-src 'self'" in policy
            assert "connect-src 'self'" in policy
            references = [a or b for a, b in _REFERENCE.findall(html)]
            if page != "/docs/oauth2-redirect":
                assert references, html
            for reference in references:
                assert reference.startswith("/") and not reference.startswith("//"), reference
                asset = http.get(reference)
                assert asset.status_code == 200, reference
                assert asset.content, reference
        script = http.get("/docs/assets/swagger-ui-bundle.js")
        assert "javascript" in script.headers["content-type"]
        assert b"SwaggerUIBundle" in script.content
        assert b"Redoc" in http.get("/docs/assets/redoc.standalone.js").content
        assert http.get("/backups").status_code == 401  # the key is still required elsewhere
    for path in (b"/docs/assets/../../backups", b"/docs/assets/%2e%2e/%2e%2e/backups"):
        answer = _raw_get(server.port, path)
        assert answer.split(b" ", 2)[1] in (b"401", b"404"), answer[:200]
        assert b"iterable" not in answer
    _assert_no_bug(server)


def _raw_get(port: int, path: bytes) -> bytes:
    """A GET of ``path`` exactly as given (clients would resolve the dot segments)."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(b"GET " + path + b" HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


# ---- 5. TLS, and the app key in clear -----------------------------------------------


def _self_signed(folder: Path) -> tuple[Path, Path, ssl.SSLContext]:
    """A certificate for localhost/127.0.0.1, its key (0600) and a context trusting it."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    folder.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    context = ssl.create_default_context(cafile=str(cert_path))
    return cert_path, key_path, context


def test_tls_serves_https(start_server: StartServer, tmp_path: Path) -> None:
    cert, key, trusting = _self_signed(tmp_path / "tls")
    server = start_server("--tls-cert", str(cert), "--tls-key", str(key), verify=trusting)
    assert "listening on https://localhost:" in server.stdout()
    with server.http() as http:
        answer = http.get("/backups")
        assert answer.status_code == 200
        assert answer.json() == {"iterable": []}
        assert http.get("/docs").status_code == 200
        same_origin = f"https://127.0.0.1:{server.port}"
        assert http.get("/backups", headers={"Origin": same_origin}).status_code == 200
    with pytest.raises(httpx.HTTPError):  # a client that does not trust it gets nothing
        httpx.get(f"{server.url}/backups", timeout=10)
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as plain:
        plain.sendall(b"GET /backups HTTP/1.1\r\nHost: localhost\r\n\r\n")
        assert b"iterable" not in plain.recv(65536)  # nothing is answered in clear
    _assert_no_bug(server)


def test_off_loopback_without_tls_warns_that_the_key_travels_in_clear(
    start_server: StartServer, tmp_path: Path
) -> None:
    plain = start_server("--require-app-key", host="0.0.0.0")
    warnings = [line for line in plain.stderr().splitlines() if "in clear" in line]
    assert len(warnings) == 1, plain.stderr()
    assert "X-Application-ID" in warnings[0] and "--tls-cert" in warnings[0]
    plain.stop()

    cert, key, trusting = _self_signed(tmp_path / "tls")
    secured = start_server(
        "--require-app-key", "--tls-cert", str(cert), "--tls-key", str(key),
        host="0.0.0.0", verify=trusting,
    )  # fmt: skip
    assert "in clear" not in secured.stderr()
    with secured.http() as http:
        assert http.get("/backups").status_code == 401  # HTTPS, and the key still required


def _serve_and_fail(*args: str) -> CliResult:
    done = subprocess.run(
        [sys.executable, "-m", "cloudkeep", "serve", "--port", str(_free_port()), *args],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    return CliResult(done.returncode, done.stdout, done.stderr)


def test_unusable_tls_options_are_refused_clearly(tmp_path: Path) -> None:
    not_a_cert = tmp_path / "cert.pem"
    not_a_cert.write_text("not a certificate\n")
    for args, expected in (
        (("--tls-key", str(not_a_cert)), "--tls-key needs --tls-cert"),
        (("--tls-cert", str(not_a_cert)), "cannot use the TLS certificate"),
        (("--tls-cert", str(tmp_path / "missing.pem")), "not found"),
    ):
        result = _serve_and_fail(*args)
        assert_clean_failure(result)
        assert expected in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr


# ---- 6. WebDAV passwords from the environment only ----------------------------------


def test_webdav_password_in_the_store_url_is_refused(cli: Callable[..., CliResult]) -> None:
    password = "hunter2-in-ps-output"
    result = cli("--store", f"webdav://keeper:{password}@127.0.0.1:9/backups", "list")
    assert_clean_failure(result)
    assert "CLOUDKEEP_WEBDAV_PASSWORD" in result.stderr
    assert password not in result.stderr + result.stdout
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


# ---- 7. key files other users can read ----------------------------------------------


def _key_warnings(text: str) -> list[str]:
    return [line for line in text.splitlines() if "chmod 600" in line]


def test_readable_passphrase_file_is_warned_about(
    cli: Callable[..., CliResult], tmp_path: Path, start_server: StartServer
) -> None:
    secret = tmp_path / "passphrase.txt"
    secret.write_text("a passphrase other users should not see\n")
    store = (tmp_path / "store").as_uri()
    _make_db(tmp_path / "data")
    base = ("--data", str(tmp_path / "data"), "--store", store, "--passphrase-file", str(secret))

    secret.chmod(0o600)
    quiet = cli(*base, "backup")
    assert quiet.code == 0, quiet.stderr
    assert _key_warnings(quiet.stderr) == []

    secret.chmod(0o644)
    warned = cli(*base, "list")
    assert warned.code == 0, warned.stderr
    lines = _key_warnings(warned.stderr)
    assert len(lines) == 1, warned.stderr
    assert str(secret) in lines[0] and "644" in lines[0]
    assert "a passphrase other users" not in warned.stderr + warned.stdout

    server = start_server("--passphrase-file", str(secret))
    assert len(_key_warnings(server.stderr())) == 1, server.stderr()


def test_readable_generated_key_file_is_warned_about(
    cli: Callable[..., CliResult], tmp_path: Path, isolated_dirs: Path
) -> None:
    _make_db(tmp_path / "data")
    base = ("--data", str(tmp_path / "data"), "--store", (tmp_path / "store").as_uri())
    env = {k: v for k, v in os.environ.items() if k != "CLOUDKEEP_PASSPHRASE"}
    first = subprocess.run(
        [sys.executable, "-m", "cloudkeep", *base, "backup"],
        capture_output=True, text=True, env=env, timeout=120, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert first.returncode == 0, first.stderr
    key_file = isolated_dirs / "config" / "repository.key"
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert _key_warnings(first.stderr) == []

    key_file.chmod(0o640)
    later = subprocess.run(
        [sys.executable, "-m", "cloudkeep", *base, "list"],
        capture_output=True, text=True, env=env, timeout=120, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert later.returncode == 0, later.stderr
    lines = _key_warnings(later.stderr)
    assert len(lines) == 1 and str(key_file) in lines[0], later.stderr
