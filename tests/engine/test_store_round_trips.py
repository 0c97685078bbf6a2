"""How many requests a backup to S3 makes, and how many of them wait on each other: over a
slow link every round trip on the critical path costs the link's latency (issue 15).

Each call of the store is delayed a little, so calls that may overlap do; a call's depth
is one more than the deepest call that had ended when it began. No timed assertion: the
delay only makes the concurrency observable.
"""

from __future__ import annotations

import sqlite3
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import cloudkeep.workspace as workspace_module
from cloudkeep.storage.base import ObjectInfo, Payload, Storage
from cloudkeep.storage.url import open_store
from tests.conftest import S3Server
from tests.engine.conftest import workspace

DELAY = 0.03


class RoundTrips:
    """A ``Storage`` recording each call with its depth on the critical path."""

    def __init__(self, inner: Storage) -> None:
        self._inner = inner
        self._lock = threading.Lock()
        self._ended_depth = 0
        self.calls: list[tuple[int, str, str]] = []  # (depth, operation, name)

    def reset(self) -> None:
        with self._lock:
            self._ended_depth = 0
            self.calls = []

    @property
    def depth(self) -> int:
        return max((depth for depth, _op, _name in self.calls), default=0)

    def _begin(self, op: str, name: str) -> int:
        with self._lock:
            depth = self._ended_depth + 1
            self.calls.append((depth, op, name))
        time.sleep(DELAY)
        return depth

    def _end(self, depth: int) -> None:
        with self._lock:
            self._ended_depth = max(self._ended_depth, depth)

    def put(self, name: str, data: Payload, *, create_only: bool = False) -> None:
        depth = self._begin("put", name)
        try:
            self._inner.put(name, data, create_only=create_only)
        finally:
            self._end(depth)

    def get(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        depth = self._begin("get", name)
        try:
            return self._inner.get(name, offset, length)
        finally:
            self._end(depth)

    def stat(self, name: str) -> ObjectInfo:
        depth = self._begin("stat", name)
        try:
            return self._inner.stat(name)
        finally:
            self._end(depth)

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        depth = self._begin("list", prefix)
        try:
            return iter(list(self._inner.list(prefix)))
        finally:
            self._end(depth)

    def delete(self, name: str) -> None:
        depth = self._begin("delete", name)
        try:
            self._inner.delete(name)
        finally:
            self._end(depth)

    def describe(self) -> str:
        return self._inner.describe()


def _kinds(calls: list[tuple[int, str, str]]) -> list[tuple[int, str, str]]:
    """Calls with names cut to their kind (random names differ from run to run)."""
    return sorted((depth, op, name.split("/")[0]) for depth, op, name in calls)


def test_a_daily_backup_to_s3_waits_on_few_round_trips(
    s3_server: S3Server,
    data_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CLOUDKEEP_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("CLOUDKEEP_CONFIG_DIR", str(tmp_path / "config"))
    counted: list[RoundTrips] = []

    def counting_store(url: str, **options: object) -> Storage:
        counted.append(RoundTrips(open_store(url, **options)))  # type: ignore[arg-type]
        return counted[-1]

    monkeypatch.setattr(workspace_module, "open_store", counting_store)
    store = s3_server.url_for("round-trips")
    workspace(data_dir, store).backup()
    db = sqlite3.connect(data_dir / "snippets.db")
    with db:
        db.execute("UPDATE snippets SET body = body || 'changed' WHERE id % 50 = 0")
    db.close()

    daily = workspace(data_dir, store)
    daily.backup()
    (trips,) = counted[-1:]
    calls = _kinds(trips.calls)
    # Open: config, key listing and backups at once; config and key. Lock: write, list.
    # Then the parent, packs and index listed at once; the pack(s) with the lock refresh
    # beside them; the index with the config check (one read); the manifest, the lock's
    # removal.
    assert trips.depth <= 9, calls
    assert len(calls) <= 20, calls
    first = {(op, kind): depth for depth, op, kind in reversed(calls)}
    assert first["stat", "config"] == first["list", "keys"] == 1, calls
    assert first["list", "data"] == first["list", "index"] == first["stat", "snapshots"], calls


@pytest.mark.skipif(sys.platform == "win32", reason="the proxy's half-close needs POSIX")
def test_an_s3_listing_lets_other_threads_run(s3_server: S3Server) -> None:
    """OpenDAL's blocking lister holds the GIL while it waits: through a proxy running on
    a thread of this process, such a listing could never finish."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
    from linkproxy import LinkProxy

    host, port = s3_server.endpoint.removeprefix("http://").split(":")
    with LinkProxy(host, int(port), rate_bits_per_s=1e9, latency_s=0.01) as proxy:
        url = s3_server.url_for("listing").replace(port, str(proxy.port))
        store = open_store(url)
        store.put("data/a", b"1")
        listed: list[str] = []
        thread = threading.Thread(
            target=lambda: listed.extend(i.name for i in store.list("data")), daemon=True
        )
        thread.start()
        thread.join(timeout=60)
    assert listed == ["data/a"]
