"""Helpers of the fault suites: big live databases, exact folder states, CLI and server processes.

Everything runs on loopback with bounded waits. Processes are started in their own
session so a test can SIGKILL exactly what it started (one pid, or the group).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import pickle
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from cloudkeep.settings import Settings
from cloudkeep.workspace import Workspace

PASSPHRASE = "fault-suite passphrase 7f3a"


def scaled(trials: int) -> int:
    """Trial counts of the suite, multiplied by ``CLOUDKEEP_FAULT_SCALE`` (scripts/soak.py)."""
    return trials * max(1, int(os.environ.get("CLOUDKEEP_FAULT_SCALE", "1")))


SQLITE_MAGIC = b"SQLite format 3\x00"


# --------------------------------------------------------------------------- data
def make_live_db(path: Path, megabytes: int, seed: int = 0) -> None:
    """A WAL-mode snippets database of about ``megabytes`` MiB (mostly incompressible)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(
            "CREATE TABLE IF NOT EXISTS snippets(id INTEGER PRIMARY KEY, body TEXT, "
            "tags TEXT, embedding BLOB, updated REAL)"
        )
        rows = megabytes * 1024 * 1024 // 4300
        db.execute(
            "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < ?) "
            "INSERT INTO snippets(body, tags, embedding, updated) "
            "SELECT hex(randomblob(500)), '[\"python\"]', randomblob(1536), x + ? FROM n",
            (rows, seed),
        )
        db.commit()
    finally:
        db.close()


def mutate_db(path: Path, rnd: random.Random, rows: int = 40) -> None:
    """Change a few random rows and add one: the next backup has new pages to store."""
    db = sqlite3.connect(path)
    try:
        (count,) = db.execute("SELECT max(id) FROM snippets").fetchone()
        for _ in range(rows):
            db.execute(
                "UPDATE snippets SET body = ?, embedding = ? WHERE id = ?",
                (rnd.randbytes(300).hex(), rnd.randbytes(1536), rnd.randint(1, count)),
            )
        db.execute(
            "INSERT INTO snippets(body, tags, embedding, updated) VALUES (?, '[]', ?, ?)",
            (rnd.randbytes(200).hex(), rnd.randbytes(64), time.time()),
        )
        db.commit()
    finally:
        db.close()


def make_data_folder(root: Path, template: Path, rnd: random.Random) -> None:
    """A production-like folder: the big database (copied from a template) and small files."""
    root.mkdir(parents=True, exist_ok=True)
    db = root / "snippets.db"
    with template.open("rb") as src, db.open("wb") as dst:
        while block := src.read(1 << 20):
            dst.write(block)
    (root / "config").mkdir(exist_ok=True)
    (root / "config" / "app.json").write_text(f'{{"theme": "dark", "n": {rnd.randint(0, 999)}}}')
    (root / "cache").mkdir(exist_ok=True)
    (root / "cache" / "blob.bin").write_bytes(rnd.randbytes(700_000))
    (root / "empty.txt").write_bytes(b"")


def _sqlite_digest(path: Path, writable: bool = False) -> str:
    """Hash of every row of every table (the logical database, not its file layout).

    ``writable`` opens it as an application would, so a crashed writer's journal or
    WAL is recovered first.
    """
    digest = hashlib.blake2b()
    db = (
        sqlite3.connect(path) if writable else sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)
    )
    try:
        check = db.execute("PRAGMA integrity_check").fetchone()[0]
        digest.update(check.encode())
        tables = [
            row[0]
            for row in db.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name"
            )
        ]
        for table in tables:
            digest.update(table.encode())
            cursor = db.execute(f'SELECT * FROM "{table}" ORDER BY rowid')
            while rows := cursor.fetchmany(2000):
                digest.update(pickle.dumps(rows))
    finally:
        db.close()
    return digest.hexdigest()


def sqlite_state(path: Path) -> str:
    """Content of one live database, opened (and recovered) the way an app opens it."""
    return _sqlite_digest(path, writable=True)


def exact_state(root: Path) -> dict[str, str]:
    """Content of a data folder: raw bytes of plain files, every row of SQLite files.

    SQLite files are compared by content because a backup stores the database's
    consistent image (WAL folded in), not the raw file plus its WAL.
    """
    state: dict[str, str] = {}
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root).as_posix()
        if relative.endswith(("-wal", "-shm")):
            continue
        if path.is_dir():
            state[relative] = "dir"
            continue
        head = path.read_bytes()[:16]
        if head == SQLITE_MAGIC:
            state[relative] = "sqlite:" + _sqlite_digest(path)
        else:
            state[relative] = "bytes:" + hashlib.blake2b(path.read_bytes()).hexdigest()
    return state


# ------------------------------------------------------------------ environment
@dataclass
class Setup:
    """One device: a data folder, a store URL and private config/cache folders."""

    root: Path
    data: Path
    store: str
    device: str = "fault-device"
    extra_env: dict[str, str] = field(default_factory=dict)

    def env(self) -> dict[str, str]:
        """Environment for cloudkeep subprocesses: no user settings leak in."""
        environment = {k: v for k, v in os.environ.items() if not k.startswith("CLOUDKEEP_")}
        environment.update(
            CLOUDKEEP_CONFIG_DIR=str(self.root / "config"),
            CLOUDKEEP_CACHE_DIR=str(self.root / "cache"),
            CLOUDKEEP_PASSPHRASE=PASSPHRASE,
            CLOUDKEEP_DEVICE_NAME=self.device,
            CLOUDKEEP_STORE_RETRY_DEADLINE="10",
            PYTHONUNBUFFERED="1",
        )
        environment.update(self.extra_env)
        return environment

    def argv(self, *args: str) -> list[str]:
        return [
            sys.executable,
            "-m",
            "cloudkeep",
            "--data",
            str(self.data),
            "--store",
            self.store,
            *args,
        ]

    def workspace(self) -> Workspace:
        """An in-process Workspace on the same store (own cache, so it judges the store)."""
        settings = Settings.resolve(
            data=self.data, store=self.store, device_name=self.device, environ={}
        )
        return Workspace(
            Settings(
                **{
                    **settings.__dict__,
                    "passphrase": PASSPHRASE,
                    "config_dir": self.root / "ws-config",
                    "cache_dir": self.root / "ws-cache",
                }
            )
        )

    def run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.argv(*args),
            capture_output=True,
            text=True,
            env=self.env(),
            timeout=timeout,
            cwd=self.root,
        )

    def popen(self, *args: str, log: Path | None = None) -> subprocess.Popen[bytes]:
        out = log.open("wb") if log else subprocess.DEVNULL
        try:
            return subprocess.Popen(
                self.argv(*args),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.env(),
                cwd=self.root,
                start_new_session=True,
            )
        finally:
            if log:
                out.close()  # type: ignore[union-attr]


class KillWindow:
    """When to kill a process so that kills mostly land while it works.

    Starts at (low, high) seconds; every run that finishes before its kill pulls
    the window to the middle of that run's duration (a quarter to three quarters:
    runs of the same operation vary), so the trials keep aiming inside the
    operation as it gets faster.
    """

    def __init__(self, low: float, high: float) -> None:
        self.low, self.high = low, high

    def delay(self, rnd: random.Random) -> float:
        return rnd.uniform(self.low, self.high)

    def finished_in(self, seconds: float) -> None:
        self.low = min(self.low, 0.25 * seconds)
        self.high = max(self.low + 0.02, 0.75 * seconds)


def kill_group(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL the process and everything in its session (e.g. the server's engine)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=30)


def wait_gone(pids: list[int], timeout: float = 30.0) -> list[int]:
    """Poll until none of ``pids`` exists; returns those still alive at the deadline."""
    deadline = time.monotonic() + timeout
    alive = list(pids)
    while alive and time.monotonic() < deadline:
        alive = [pid for pid in alive if _alive(pid)]
        if alive:
            time.sleep(0.05)
    return alive


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split(") ", 1)[1][0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def session_pids(sid: int) -> list[int]:
    """Pids of the live processes in session ``sid`` (children of a server included)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                fields = handle.read().split(") ", 1)[1].split()
        except (FileNotFoundError, IndexError):
            continue
        if fields[0] != "Z" and int(fields[3]) == sid:
            pids.append(int(entry))
    return pids


# ----------------------------------------------------------------------- server
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                kill_group(self.process)
        # reap the engine child if the server left it behind
        wait_gone(session_pids(self.process.pid), timeout=10)


def start_server(setup: Setup, timeout: float = 40.0) -> Server:
    """``cloudkeep serve`` on a free loopback port, healthy before this returns."""
    for _ in range(3):
        port = free_port()
        log = setup.root / f"server-{port}.log"
        process = setup.popen("serve", "--host", "127.0.0.1", "--port", str(port), log=log)
        server = Server(process, port, log)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and process.poll() is None:
            try:
                if httpx.get(f"{server.url}/.well-known/health", timeout=1).status_code == 200:
                    return server
            except httpx.HTTPError:
                time.sleep(0.05)
        kill_group(process)
        if "address already in use" not in server.output().lower():
            raise RuntimeError(f"server did not start:\n{server.output()}")
    raise RuntimeError("no free port for the server")
