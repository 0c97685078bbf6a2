"""Fixtures for engine and CLI tests: isolated config/cache dirs, real SQLite data, the CLI."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from cloudkeep.settings import Settings
from cloudkeep.workspace import Workspace

PASSPHRASE = "correct horse battery staple"


@pytest.fixture(autouse=True)
def isolated_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Keep every test's key file and cache out of the real user's directories."""
    home = tmp_path / "home"
    monkeypatch.setenv("CLOUDKEEP_CONFIG_DIR", str(home / "config"))
    monkeypatch.setenv("CLOUDKEEP_CACHE_DIR", str(home / "cache"))
    # No Pieces OS data folder of the real user is ever found (or restored into).
    monkeypatch.setenv("HOME", str(home))
    for name in (
        "XDG_DATA_HOME",
        "CLOUDKEEP_DATA",
        "CLOUDKEEP_STORE",
        "CLOUDKEEP_PASSPHRASE",
        "CLOUDKEEP_PASSPHRASE_FILE",
        "CLOUDKEEP_DEVICE_NAME",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CLOUDKEEP_STORE_RETRY_DEADLINE", "5")
    return home


def make_snippets_db(path: Path, rows: int, *, wal: bool = True, seed: int = 0) -> None:
    """A small app-like database: text, tags and an embedding blob per row."""
    import random

    rnd = random.Random(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path)
    if wal:
        db.execute("PRAGMA journal_mode=WAL")
    db.execute(
        "CREATE TABLE IF NOT EXISTS snippets(id INTEGER PRIMARY KEY, body TEXT, tags TEXT, "
        "embedding BLOB, updated REAL)"
    )
    db.executemany(
        "INSERT INTO snippets(body, tags, embedding, updated) VALUES (?, ?, ?, ?)",
        [
            (
                " ".join(
                    rnd.choice(["def", "return", "self", "x", "for", "in", "range"])
                    for _ in range(rnd.randint(50, 300))
                ),
                '["python"]',
                rnd.randbytes(1536),
                float(i),
            )
            for i in range(rows)
        ],
    )
    db.commit()
    db.close()


def db_state(path: Path) -> dict[str, object]:
    """A database's content, compared row by row and blob by blob.

    Its integrity, schema, and every row of every table in rowid order with
    all values (text and blobs byte for byte): two databases are equal here
    only if every value is.
    """
    db = sqlite3.connect(path)
    try:
        tables: dict[str, list[tuple[object, ...]]] = {}
        schema = db.execute(
            "SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY type, name"
        ).fetchall()
        for (name,) in db.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name"
        ).fetchall():
            quoted = '"' + name.replace('"', '""') + '"'
            try:
                rows = db.execute(f"SELECT rowid, * FROM {quoted} ORDER BY rowid").fetchall()
            except sqlite3.OperationalError:  # WITHOUT ROWID: its primary key orders it
                rows = db.execute(f"SELECT * FROM {quoted}").fetchall()
            tables[name] = rows
        return {
            "integrity": db.execute("PRAGMA integrity_check").fetchone()[0],
            "schema": schema,
            "tables": tables,
        }
    finally:
        db.close()


def folder_state(root: Path) -> dict[str, object]:
    """Content of a data folder; SQLite files by their rows (images, not raw bytes)."""
    state: dict[str, object] = {}
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root).as_posix()
        if path.is_dir() or relative.endswith(("-wal", "-shm")):
            continue
        if path.read_bytes()[:16] == b"SQLite format 3\x00":
            state[relative] = db_state(path)
        else:
            state[relative] = path.read_bytes()
    return state


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    root = tmp_path / "production"
    make_snippets_db(root / "snippets.db", 300)
    (root / "config").mkdir()
    (root / "config" / "app.json").write_text('{"theme": "dark"}')
    (root / "cache").mkdir()
    (root / "cache" / "blob.bin").write_bytes(os.urandom(300_000))
    (root / "empty.txt").write_bytes(b"")
    return root


def workspace(
    data: Path, store: str, device: str = "laptop", passphrase: str | None = PASSPHRASE
) -> Workspace:
    settings = Settings.resolve(data=data, store=store, device_name=device)
    if passphrase is not None:
        settings = Settings(**{**settings.__dict__, "passphrase": passphrase})
    return Workspace(settings)


@dataclass
class CliResult:
    code: int
    stdout: str
    stderr: str


@pytest.fixture
def cli(tmp_path: Path) -> Iterator:
    """Run the real console entry point in a subprocess."""

    def run(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> CliResult:
        full_env = {**os.environ, **(env or {})}
        done = subprocess.run(
            [sys.executable, "-m", "cloudkeep", *args],
            capture_output=True,
            text=True,
            env=full_env,
            timeout=timeout,
            cwd=tmp_path,
        )
        return CliResult(done.returncode, done.stdout, done.stderr)

    yield run
