"""Helpers of the API tests: a real cloudkeep API server process, databases, SDK clients.

``start_server(...)`` launches ``python -m cloudkeep.api`` (or ``python -m cloudkeep
serve``) on a free 127.0.0.1 port with its own data folder (a real SQLite database),
``file://`` store, config and cache folders under ``tmp_path``, waits for
``/.well-known/health`` and stops the process at teardown.
"""

from __future__ import annotations

import os
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from pieces_os_client.api.backup_api import BackupApi
from pieces_os_client.api.backups_api import BackupsApi
from pieces_os_client.api.well_known_api import WellKnownApi
from pieces_os_client.api_client import ApiClient
from pieces_os_client.configuration import Configuration

STARTUP_TIMEOUT = 30.0
PASSPHRASE = "correct horse battery staple"


def free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def make_notes_db(path: Path, notes: list[str]) -> None:
    """A small application database: one table of notes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # Closed explicitly: a connection left to the garbage collector keeps the database
    # open, and a restore in place rightly refuses a database another process holds.
    with closing(sqlite3.connect(path)) as db, db:
        db.execute("CREATE TABLE IF NOT EXISTS notes(id INTEGER PRIMARY KEY, body TEXT)")
        db.execute("DELETE FROM notes")
        db.executemany("INSERT INTO notes(body) VALUES (?)", [(n,) for n in notes])


def read_notes(path: Path) -> list[str]:
    with closing(sqlite3.connect(path)) as db:
        return [row[0] for row in db.execute("SELECT body FROM notes ORDER BY id")]


def make_big_db(path: Path, megabytes: int) -> None:
    """Incompressible rows (random blobs) so the backup takes long enough to cancel."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with closing(sqlite3.connect(path)) as db, db:
        db.execute("CREATE TABLE IF NOT EXISTS blobs(id INTEGER PRIMARY KEY, data BLOB)")
        db.execute(
            "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < ?) "
            "INSERT INTO blobs(data) SELECT randomblob(65536) FROM n",
            (megabytes * 16,),
        )


@dataclass
class ApiServer:
    url: str
    port: int
    root: Path
    data_dir: Path
    store_dir: Path
    config_dir: Path
    log_path: Path
    process: subprocess.Popen[bytes]
    clients: list[ApiClient] = field(default_factory=list)

    @property
    def db_path(self) -> Path:
        return self.data_dir / "notes.db"

    def sdk(self, api_key: str | None = None) -> ApiClient:
        """An official SDK client pointed at this server."""
        configuration = Configuration(host=self.url)
        if api_key is not None:
            configuration.api_key["application"] = api_key
        client = ApiClient(configuration)
        self.clients.append(client)
        return client

    def backups_api(self) -> BackupsApi:
        return BackupsApi(self.sdk())

    def backup_api(self) -> BackupApi:
        return BackupApi(self.sdk())

    def well_known_api(self) -> WellKnownApi:
        return WellKnownApi(self.sdk())

    def http(self, **kwargs: object) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=60.0, **kwargs)  # type: ignore[arg-type]

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        try:
            for client in self.clients:
                client.rest_client.pool_manager.clear()
        finally:
            self._terminate()

    def _terminate(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def _wait_healthy(server: ApiServer) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"server exited {server.process.returncode}:\n{server.log()}")
        try:
            if httpx.get(f"{server.url}/.well-known/health", timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"server did not become healthy:\n{server.log()}")


StartServer = Callable[..., ApiServer]


def launch(
    root: Path,
    *,
    notes: list[str] | None = None,
    store_url: str | None = None,
    passphrase: str | None = PASSPHRASE,
    args: tuple[str, ...] = (),
    via_cli: bool = False,
    env: dict[str, str] | None = None,
    with_data: bool = True,
) -> ApiServer:
    """Start a server process rooted at ``root`` and wait until it is healthy
    (``with_data`` False: without ``--data``, HOME set to an empty ``root/home``)."""
    data_dir = root / "data"
    store_dir = root / "store"
    config_dir = root / "config"
    data_dir.mkdir(parents=True, exist_ok=True)
    if notes is not None:
        make_notes_db(data_dir / "notes.db", notes)
    port = free_loopback_port()
    store = store_url or store_dir.as_uri()
    environment = {k: v for k, v in os.environ.items() if not k.startswith("CLOUDKEEP_")}
    environment.update(
        CLOUDKEEP_CONFIG_DIR=str(config_dir),
        CLOUDKEEP_CACHE_DIR=str(root / "cache"),
        CLOUDKEEP_DEVICE_NAME="api-test-device",
        PYTHONUNBUFFERED="1",
    )
    if passphrase is not None:
        environment["CLOUDKEEP_PASSPHRASE"] = passphrase
    if not with_data:
        environment["HOME"] = str(root / "home")
        environment.pop("XDG_DATA_HOME", None)
    environment.update(env or {})
    common = ["--data", str(data_dir)] if with_data else []
    common += ["--store", store]
    if via_cli:
        command = [sys.executable, "-m", "cloudkeep", *common, "serve", "--port", str(port), *args]
    else:
        command = [
            sys.executable,
            "-m",
            "cloudkeep.api",
            *common,
            "--port",
            str(port),
            "--log-level",
            "warning",
            *args,
        ]
    log_path = root / f"server-{port}.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            command, stdout=log_file, stderr=subprocess.STDOUT, env=environment, cwd=root
        )
    server = ApiServer(
        url=f"http://127.0.0.1:{port}",
        port=port,
        root=root,
        data_dir=data_dir,
        store_dir=store_dir,
        config_dir=config_dir,
        log_path=log_path,
        process=process,
    )
    try:
        _wait_healthy(server)
    except BaseException:
        server.stop()
        raise
    return server


def cli_env(server: ApiServer) -> dict[str, str]:
    """Environment for a ``python -m cloudkeep`` run sharing the server's store and keys."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("CLOUDKEEP_")}
    environment.update(
        CLOUDKEEP_CONFIG_DIR=str(server.config_dir),
        CLOUDKEEP_CACHE_DIR=str(server.root / "cli-cache"),
        CLOUDKEEP_PASSPHRASE=PASSPHRASE,
    )
    return environment
