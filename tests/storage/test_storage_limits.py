"""ConcurrencyLimitedStorage: never more than ``limit`` calls in flight."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from cloudkeep.errors import ConfigurationError
from cloudkeep.settings import Settings
from cloudkeep.storage.base import Storage
from cloudkeep.storage.limits import (
    DEFAULT_CONNECTIONS,
    ConcurrencyLimitedStorage,
    limit_concurrency,
    store_connections,
)
from cloudkeep.storage.retrying import RetryingStorage, RetryPolicy
from cloudkeep.storage.url import open_store
from cloudkeep.workspace import Workspace
from tests.conftest import PassThroughStorage


class Gauge(PassThroughStorage):
    """A real memory store that records how many calls overlap."""

    def __init__(self, inner: Storage) -> None:
        super().__init__(inner)
        self.lock = threading.Lock()
        self.active = 0
        self.peak = 0

    def _enter(self) -> None:
        with self.lock:
            self.active += 1
            self.peak = max(self.peak, self.active)
        time.sleep(0.01)

    def _leave(self) -> None:
        with self.lock:
            self.active -= 1

    def put(self, name: str, data: bytes, *, create_only: bool = False) -> None:
        self._enter()
        try:
            self.inner.put(name, data, create_only=create_only)
        finally:
            self._leave()

    def get(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        self._enter()
        try:
            return self.inner.get(name, offset, length)
        finally:
            self._leave()


def test_calls_are_capped() -> None:
    gauge = Gauge(open_store("memory://"))
    store = ConcurrencyLimitedStorage(gauge, 3)
    with ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(lambda i: store.put(f"o/{i}", bytes([i])), range(48)))
        values = list(pool.map(lambda i: store.get(f"o/{i}"), range(48)))
    assert values == [bytes([i]) for i in range(48)]
    assert gauge.peak == 3
    assert sorted(info.name for info in store.list("o")) == sorted(f"o/{i}" for i in range(48))
    store.delete("o/0")
    assert store.stat("o/1").size == 1
    assert store.describe() == "memory://"


def test_limit_concurrency_keeps_retries_outside() -> None:
    opened = open_store("memory://", retry=RetryPolicy(attempts=2))
    limited = limit_concurrency(opened, 2)
    assert isinstance(limited, RetryingStorage)
    assert limited.policy.attempts == 2
    assert isinstance(limited.inner, ConcurrencyLimitedStorage)
    limited.put("x", b"1")
    assert limited.get("x") == b"1"
    assert isinstance(limit_concurrency(Gauge(open_store("memory://")), 1), Storage)
    with pytest.raises(ValueError):
        ConcurrencyLimitedStorage(opened, 0)


def test_the_workspace_store_is_capped_by_the_setting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = Settings(data=tmp_path / "data", store=(tmp_path / "store").as_uri())
    monkeypatch.setenv("CLOUDKEEP_STORE_CONNECTIONS", "3")
    storage = Workspace(settings).storage
    assert isinstance(storage, RetryingStorage)
    assert isinstance(storage.inner, ConcurrencyLimitedStorage) and storage.inner.limit == 3
    monkeypatch.delenv("CLOUDKEEP_STORE_CONNECTIONS")
    limited = Workspace(settings).storage
    assert isinstance(limited, RetryingStorage)
    assert isinstance(limited.inner, ConcurrencyLimitedStorage)
    assert limited.inner.limit == DEFAULT_CONNECTIONS


@pytest.mark.parametrize("value", ["0", "many", "-2", "100000"])
def test_a_bad_connection_setting_is_a_clear_error(value: str) -> None:
    with pytest.raises(ConfigurationError, match="CLOUDKEEP_STORE_CONNECTIONS"):
        store_connections({"CLOUDKEEP_STORE_CONNECTIONS": value})
