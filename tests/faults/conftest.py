"""Fixtures of the fault suites: a big live database template, isolated dirs, seeded RNGs."""

from __future__ import annotations

import os
import random
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.faults.fault_helpers import make_live_db

#: Size of the live database the crash suites back up: big enough that a backup takes
#: about a second, so random kill moments land in every phase of it.
LIVE_DB_MEGABYTES = int(os.environ.get("CLOUDKEEP_FAULT_DB_MB", "40"))


@pytest.fixture(autouse=True)
def isolated_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No test reads or writes the real user's key file, cache or settings."""
    home = tmp_path / "home"
    monkeypatch.setenv("CLOUDKEEP_CONFIG_DIR", str(home / "config"))
    monkeypatch.setenv("CLOUDKEEP_CACHE_DIR", str(home / "cache"))
    for name in (
        "CLOUDKEEP_DATA",
        "CLOUDKEEP_STORE",
        "CLOUDKEEP_PASSPHRASE",
        "CLOUDKEEP_PASSPHRASE_FILE",
        "CLOUDKEEP_DEVICE_NAME",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CLOUDKEEP_STORE_RETRY_DEADLINE", "10")
    return home


@pytest.fixture(scope="session")
def live_db_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One ~40 MiB WAL database per session; tests copy it (copying beats regenerating)."""
    path = tmp_path_factory.mktemp("template") / "snippets.db"
    make_live_db(path, LIVE_DB_MEGABYTES)
    return path


@pytest.fixture
def rng(request: pytest.FixtureRequest) -> Iterator[random.Random]:
    """A seeded RNG per test; the seed is printed so a failing run can be replayed.

    ``CLOUDKEEP_FAULT_SEED`` fixes it; otherwise it is derived from the clock.
    """
    seed = int(os.environ.get("CLOUDKEEP_FAULT_SEED", "0")) or int(time.time() * 1000) % 10**9
    print(f"\n{request.node.nodeid}: CLOUDKEEP_FAULT_SEED={seed}")
    yield random.Random(seed)
