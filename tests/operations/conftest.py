"""Fixtures of the operation tests: real Settings over a real SQLite folder and a file store."""

from __future__ import annotations

import os
import sqlite3
from contextlib import closing
from pathlib import Path

import pytest

from cloudkeep.settings import Settings
from cloudkeep.workspace import Workspace

PASSPHRASE = "correct horse battery staple"


def make_data(root: Path, megabytes: int = 0) -> None:
    """A small notes database, plus ``megabytes`` of incompressible rows to make work last."""
    root.mkdir(parents=True, exist_ok=True)
    with closing(sqlite3.connect(root / "notes.db")) as db, db:
        db.execute("CREATE TABLE IF NOT EXISTS notes(id INTEGER PRIMARY KEY, body TEXT)")
        db.executemany("INSERT INTO notes(body) VALUES (?)", [("one",), ("two",)])
        if megabytes:
            db.execute("CREATE TABLE blobs(id INTEGER PRIMARY KEY, data BLOB)")
            db.execute(
                "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < ?) "
                "INSERT INTO blobs(data) SELECT randomblob(65536) FROM n",
                (megabytes * 16,),
            )
    (root / "settings.json").write_bytes(os.urandom(2000))


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    for name in [n for n in os.environ if n.startswith("CLOUDKEEP_")]:
        monkeypatch.delenv(name)
    make_data(tmp_path / "data")
    return Settings(
        data=tmp_path / "data",
        store=(tmp_path / "store").as_uri(),
        passphrase=PASSPHRASE,
        device_name="ops-test",
        config_dir=tmp_path / "config",
        cache_dir=tmp_path / "cache",
    )


@pytest.fixture
def workspace(settings: Settings) -> Workspace:
    return Workspace(settings)
