"""Real storage servers on loopback ports, and the ``store_url`` fixture.

Fixtures (all servers bind 127.0.0.1 on a free port and stop at session end):

``store_url``
    Parametrized over ``file``, ``memory``, ``s3`` (moto server) and ``webdav``
    (rclone). Each test gets the URL of a fresh, empty location; pass it to
    ``cloudkeep.storage.url.open_store``. Opening the same URL twice gives two
    views of the same data (the memory case uses a named ``memory://NAME``
    store), so round-trip tests can write with one store and read with another.
    Test ids end in ``[file]``, ``[memory]``, ``[s3]``, ``[webdav]``; servers are
    only started when a test needs them.
``s3_server``
    A moto S3 server with one bucket. ``.url`` is a store URL of the form
    ``s3://bucket/prefix?endpoint=http://127.0.0.1:PORT&region=us-east-1``;
    ``.url_for(prefix)`` makes more. Fake AWS credentials are put in the
    environment while it runs.
``webdav_server`` / ``webdav_auth_server``
    ``rclone serve webdav`` over a temporary folder, without and with basic auth
    (``.user`` / ``.password``). ``.url`` / ``.url_for(path)`` give
    ``webdav://127.0.0.1:PORT/path`` URLs (credentials not included).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from cloudkeep.storage.base import ObjectInfo, Payload, Storage
from cloudkeep.storage.url import drop_memory_store


class PassThroughStorage:
    """A real store seen through a wrapper: tests override the calls they observe."""

    def __init__(self, inner: Storage) -> None:
        self.inner = inner

    def put(self, name: str, data: Payload, *, create_only: bool = False) -> None:
        self.inner.put(name, data, create_only=create_only)

    def get(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        return self.inner.get(name, offset, length)

    def stat(self, name: str) -> ObjectInfo:
        return self.inner.stat(name)

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        return self.inner.list(prefix)

    def delete(self, name: str) -> None:
        self.inner.delete(name)

    def describe(self) -> str:
        return self.inner.describe()


STARTUP_TIMEOUT = 30.0
S3_BUCKET = "cloudkeep-test"
WEBDAV_USER = "keeper"
WEBDAV_PASSWORD = "dav-Pa55-word"
_AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "AKIACLOUDKEEPTEST",
    "AWS_SECRET_ACCESS_KEY": "cloudkeep-test-secret-key",
    "AWS_REGION": "us-east-1",
}
_AWS_ENV_CLEARED = (
    "AWS_SESSION_TOKEN",
    "AWS_PROFILE",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_DEFAULT_REGION",
)


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerProcess:
    """A child server process whose output goes to a file, for error reports."""

    def __init__(self, name: str, argv: list[str], port: int, log_dir: Path) -> None:
        self.name = name
        self.port = port
        self.log_path = log_dir / f"{name}-{port}.log"
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            argv, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )

    def output(self) -> str:
        """The server's combined stdout/stderr so far (head and tail if long)."""
        self._log.flush()
        text = self.log_path.read_text(errors="replace")
        if len(text) <= 4000:
            return text
        return f"{text[:2000]}\n[...]\n{text[-2000:]}"

    def wait_ready(self, timeout: float = STARTUP_TIMEOUT) -> None:
        """Poll the port until it accepts connections; fail with the server's output."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with code {self.process.returncode} before "
                    f"listening on 127.0.0.1:{self.port}:\n{self.output()}"
                )
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(
            f"{self.name} did not listen on 127.0.0.1:{self.port} within {timeout:.0f} s:\n"
            f"{self.output()}"
        )

    def stop(self) -> None:
        """Terminate, then kill if it does not exit promptly."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        self._log.close()


def start_server(name: str, argv_for: Callable[[int], list[str]], log_dir: Path) -> ServerProcess:
    """Start a server on a free port; retry on a new port if another process grabbed it."""
    failures = []
    for _ in range(3):
        port = free_port()
        server = ServerProcess(name, argv_for(port), port, log_dir)
        try:
            server.wait_ready()
        except RuntimeError as exc:
            server.stop()
            failures.append(str(exc))
            continue
        return server
    raise RuntimeError("\n\n".join(failures))


@dataclass(frozen=True)
class S3Server:
    """A running moto S3 server with one bucket."""

    endpoint: str
    bucket: str

    def url_for(self, prefix: str) -> str:
        """Store URL for ``prefix`` inside the test bucket."""
        return f"s3://{self.bucket}/{prefix}?endpoint={self.endpoint}&region=us-east-1"

    @property
    def url(self) -> str:
        """Store URL of the shared ``prefix`` folder."""
        return self.url_for("prefix")


@dataclass(frozen=True)
class WebDAVServer:
    """A running rclone WebDAV server over ``root``."""

    address: str
    root: Path
    user: str | None = None
    password: str | None = None

    def url_for(self, path: str) -> str:
        """Store URL for ``path`` on the server (no credentials in it)."""
        return f"webdav://{self.address}/{path.strip('/')}"

    @property
    def url(self) -> str:
        """Store URL of the shared ``repo`` folder."""
        return self.url_for("repo")


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """moto's S3 server on a free loopback port, with fake credentials in the env."""
    server = start_server(
        "moto",
        lambda port: [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        tmp_path_factory.mktemp("moto-log"),
    )
    with pytest.MonkeyPatch.context() as mp:
        for key, value in _AWS_ENV.items():
            mp.setenv(key, value)
        for key in _AWS_ENV_CLEARED:
            mp.delenv(key, raising=False)
        try:
            endpoint = f"http://127.0.0.1:{server.port}"
            # moto accepts unsigned requests, so plain HTTP is enough to make the bucket.
            request = urllib.request.Request(f"{endpoint}/{S3_BUCKET}", method="PUT")
            with urllib.request.urlopen(request, timeout=10) as response:
                assert response.status == 200, response.status
            yield S3Server(endpoint, S3_BUCKET)
        finally:
            server.stop()


def _rclone_webdav(
    tmp_path_factory: pytest.TempPathFactory, user: str | None, password: str | None
) -> Iterator[WebDAVServer]:
    rclone = shutil.which("rclone")
    if rclone is None:
        pytest.fail("rclone is not installed (apt-get install rclone)")
    root = tmp_path_factory.mktemp("webdav-root")

    def argv_for(port: int) -> list[str]:
        argv = [rclone, "serve", "webdav", str(root), "--addr", f"127.0.0.1:{port}"]
        argv += ["--config", str(root.parent / "rclone-unused.conf")]
        if user and password:
            argv += ["--user", user, "--pass", password]
        return argv

    server = start_server("rclone-webdav", argv_for, tmp_path_factory.mktemp("dav-log"))
    try:
        yield WebDAVServer(f"127.0.0.1:{server.port}", root, user, password)
    finally:
        server.stop()


@pytest.fixture(scope="session")
def webdav_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebDAVServer]:
    """rclone WebDAV server without authentication."""
    yield from _rclone_webdav(tmp_path_factory, None, None)


@pytest.fixture(scope="session")
def webdav_auth_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebDAVServer]:
    """rclone WebDAV server that requires basic auth (``.user`` / ``.password``)."""
    yield from _rclone_webdav(tmp_path_factory, WEBDAV_USER, WEBDAV_PASSWORD)


@pytest.fixture(params=["file", "memory", "s3", "webdav"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """URL of a fresh, empty store on each backend (see the module docstring)."""
    unique = f"t-{uuid.uuid4().hex[:12]}"
    kind = request.param
    if kind == "file":
        yield (tmp_path / "store").as_uri()
    elif kind == "memory":
        url = f"memory://{unique}"
        yield url
        drop_memory_store(url)
    elif kind == "s3":
        yield request.getfixturevalue("s3_server").url_for(unique)
    elif kind == "webdav":
        yield request.getfixturevalue("webdav_server").url_for(unique)
    else:  # pragma: no cover - params above are exhaustive
        raise AssertionError(kind)
