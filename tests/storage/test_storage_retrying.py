"""RetryingStorage: bounded give-up against real dead endpoints, recovery from flakiness."""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cloudkeep.cli.errors import exit_code_for
from cloudkeep.errors import StoreUnreachable
from cloudkeep.storage.base import (
    ObjectExists,
    ObjectInfo,
    ObjectNotFound,
    Storage,
    StorageError,
    StorageUnavailable,
    StoreRejected,
)
from cloudkeep.storage.retrying import RetryingStorage, RetryPolicy
from cloudkeep.storage.url import drop_memory_store, open_store

QUICK = RetryPolicy(attempts=5, base_delay=0.01, max_delay=0.05, deadline_seconds=5.0)


class Flaky:
    """A real store whose first ``failures`` calls of ``methods`` raise ``error``.

    With ``after=True`` the call is performed before raising: the reply was lost.
    """

    def __init__(
        self,
        inner: Storage,
        failures: int,
        *,
        methods: tuple[str, ...] = ("put", "get", "stat", "delete", "list"),
        error: Exception | None = None,
        after: bool = False,
    ) -> None:
        self.inner = inner
        self.failures = failures
        self.methods = methods
        self.error = error or StorageUnavailable("connection reset by peer")
        self.after = after
        self.calls: dict[str, int] = {}

    def _maybe_fail(self, method: str, *, counted: bool = False) -> None:
        if not counted:
            self.calls[method] = self.calls.get(method, 0) + 1
        if method in self.methods and self.failures > 0:
            self.failures -= 1
            raise self.error

    def put(self, name: str, data: bytes, *, create_only: bool = False) -> None:
        if self.after:
            self.calls["put"] = self.calls.get("put", 0) + 1
            self.inner.put(name, data, create_only=create_only)
            self._maybe_fail("put", counted=True)
            return
        self._maybe_fail("put")
        self.inner.put(name, data, create_only=create_only)

    def get(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        self._maybe_fail("get")
        return self.inner.get(name, offset, length)

    def stat(self, name: str) -> ObjectInfo:
        self._maybe_fail("stat")
        return self.inner.stat(name)

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        self._maybe_fail("list")
        return self.inner.list(prefix)

    def delete(self, name: str) -> None:
        self._maybe_fail("delete")
        self.inner.delete(name)

    def describe(self) -> str:
        return "flaky " + self.inner.describe()


@pytest.fixture
def memory() -> Iterator[Storage]:
    url = "memory://retry-tests"
    yield open_store(url)
    drop_memory_store(url)


def test_closed_port_gives_up_in_bounded_time(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAFAKE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "fake-secret-for-closed-port")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    deadline = 1.5
    policy = RetryPolicy(attempts=50, base_delay=0.05, max_delay=0.2, deadline_seconds=deadline)
    store = open_store(f"s3://bucket/p?endpoint=http://127.0.0.1:{port}", retry=policy, timeout=2)
    operations = (lambda: store.stat("x"), lambda: store.put("x", b"1"), lambda: store.get("x"))
    for operation in operations:
        started = time.monotonic()
        with pytest.raises(StorageUnavailable) as info:
            operation()
        elapsed = time.monotonic() - started
        assert elapsed < deadline + 0.5
        assert isinstance(info.value, StoreUnreachable)
        assert exit_code_for(info.value) == 3
        message = str(info.value)
        assert message.startswith("store unreachable after ")
        assert "Connection refused" in message
        assert "fake-secret-for-closed-port" not in message
        assert "\n" not in message


def test_silent_server_times_out_instead_of_hanging(monkeypatch: pytest.MonkeyPatch) -> None:
    """A peer that accepts TCP but never answers is cut off by OpenDAL's TimeoutLayer."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAFAKE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "fake")
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(64)
        port = silent.getsockname()[1]
        policy = RetryPolicy(attempts=3, base_delay=0.01, max_delay=0.02, deadline_seconds=0.8)
        store = open_store(
            f"s3://bucket/p?endpoint=http://127.0.0.1:{port}", retry=policy, timeout=0.3
        )
        started = time.monotonic()
        with pytest.raises(StorageUnavailable, match="timeout"):
            store.stat("x")
        # deadline + one control timeout + slack
        assert time.monotonic() - started < 0.8 + 0.3 + 0.7


def test_flaky_store_recovers(memory: Storage, caplog: pytest.LogCaptureFixture) -> None:
    flaky = Flaky(memory, failures=3)
    store = RetryingStorage.with_policy(flaky, QUICK)
    with caplog.at_level(logging.INFO, logger="cloudkeep.storage.retrying"):
        store.put("a/b", b"payload")
    assert flaky.calls["put"] == 4
    assert [r.getMessage()[:37] for r in caplog.records] == [
        "store call failed (attempt 1 of 5), r",
        "store call failed (attempt 2 of 5), r",
        "store call failed (attempt 3 of 5), r",
    ]
    flaky.failures = 2
    assert store.get("a/b") == b"payload"
    flaky.failures = 2
    assert store.stat("a/b").size == 7
    flaky.failures = 2
    assert [i.name for i in store.list("a")] == ["a/b"]
    flaky.failures = 2
    store.delete("a/b")
    assert list(memory.list("")) == []


def test_python_network_errors_are_retried(memory: Storage) -> None:
    for error in (TimeoutError("timed out"), ConnectionResetError("reset")):
        flaky = Flaky(memory, failures=2, error=error)
        RetryingStorage.with_policy(flaky, QUICK).put("x", b"1")
        assert flaky.calls["put"] == 3


def test_gives_up_after_the_configured_attempts(memory: Storage) -> None:
    flaky = Flaky(memory, failures=100)
    store = RetryingStorage.with_policy(flaky, QUICK)
    with pytest.raises(StorageUnavailable, match=r"after 5 attempts over .* s: connection reset"):
        store.get("x")
    assert flaky.calls["get"] == 5


def test_deadline_cuts_attempts_short(memory: Storage) -> None:
    flaky = Flaky(memory, failures=100)
    store = RetryingStorage(
        flaky, attempts=100, base_delay=0.2, max_delay=0.4, deadline_seconds=0.6
    )
    started = time.monotonic()
    with pytest.raises(StorageUnavailable):
        store.stat("x")
    assert time.monotonic() - started < 0.6 + 0.2
    assert flaky.calls["stat"] < 10


@pytest.mark.parametrize(
    "error",
    [ObjectNotFound("gone"), ObjectExists("taken"), StoreRejected("403"), StorageError("bad")],
)
def test_permanent_errors_are_not_retried(memory: Storage, error: Exception) -> None:
    flaky = Flaky(memory, failures=5, error=error)
    with pytest.raises(type(error)):
        RetryingStorage.with_policy(flaky, QUICK).stat("x")
    assert flaky.calls["stat"] == 1


def test_missing_object_is_not_retried(memory: Storage) -> None:
    flaky = Flaky(memory, failures=0)
    with pytest.raises(ObjectNotFound):
        RetryingStorage.with_policy(flaky, QUICK).get("missing")
    assert flaky.calls["get"] == 1


def test_create_only_after_lost_reply_is_success(memory: Storage) -> None:
    """The first put landed but its reply was lost: the retry finds our own bytes."""
    flaky = Flaky(memory, failures=1, methods=("put",), after=True)
    RetryingStorage.with_policy(flaky, QUICK).put("locks/l1", b"my lock", create_only=True)
    assert flaky.calls["put"] == 2
    assert memory.get("locks/l1") == b"my lock"


def test_create_only_after_lost_reply_detects_other_writer(memory: Storage) -> None:
    """Unknown outcome, but the name holds someone else's bytes: that is ObjectExists."""

    class OtherWriterWins(Flaky):
        def put(self, name: str, data: bytes, *, create_only: bool = False) -> None:
            if self.calls.get("put", 0) == 0:
                self.inner.put(name, b"their lock", create_only=True)
            super().put(name, data, create_only=create_only)

    flaky = OtherWriterWins(memory, failures=1, methods=("put",))
    with pytest.raises(ObjectExists):
        RetryingStorage.with_policy(flaky, QUICK).put("locks/l2", b"my lock", create_only=True)
    assert memory.get("locks/l2") == b"their lock"


def test_create_only_without_uncertainty_reports_exists(memory: Storage) -> None:
    memory.put("keys/k", b"same", create_only=True)
    flaky = Flaky(memory, failures=0)
    with pytest.raises(ObjectExists):
        RetryingStorage.with_policy(flaky, QUICK).put("keys/k", b"same", create_only=True)
    assert flaky.calls.get("get", 0) == 0


def test_listing_that_breaks_off_restarts_without_duplicates(memory: Storage) -> None:
    for i in range(6):
        memory.put(f"d/{i}", b"x" * i)

    class BreaksMidway(Flaky):
        def list(self, prefix: str) -> Iterator[ObjectInfo]:
            self.calls["list"] = self.calls.get("list", 0) + 1
            for count, info in enumerate(sorted(self.inner.list(prefix), key=lambda i: i.name)):
                if self.failures > 0 and count == 3:
                    self.failures -= 1
                    raise StorageUnavailable("connection dropped mid-listing")
                yield info

    flaky = BreaksMidway(memory, failures=2)
    listed = [info.name for info in RetryingStorage.with_policy(flaky, QUICK).list("d")]
    assert listed[:3] == ["d/0", "d/1", "d/2"]
    assert sorted(listed) == [f"d/{i}" for i in range(6)]
    assert len(listed) == len(set(listed))
    assert flaky.calls["list"] == 3


def test_wrapper_passes_description_through(memory: Storage) -> None:
    wrapped: Any = RetryingStorage.with_policy(Flaky(memory, failures=0), QUICK)
    assert wrapped.describe() == "flaky memory://retry-tests"
    assert isinstance(wrapped, Storage)


def test_local_errors_that_cannot_heal_are_not_retried(tmp_path: Path) -> None:
    """OpenDAL marks local I/O errors temporary; ENOTDIR / EACCES must fail at once."""
    store = open_store((tmp_path / "s").as_uri())
    store.put("config", b"c")
    started = time.monotonic()
    with pytest.raises(StorageError, match="parent folder") as info:
        store.put("config/x", b"below an object")
    assert not isinstance(info.value, StorageUnavailable)
    with pytest.raises(ObjectNotFound):
        store.get("config/x")
    locked = tmp_path / "s" / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.access(locked, os.W_OK):  # running as root: permissions are not enforced
            return
        with pytest.raises(StoreRejected, match="Permission denied"):
            store.put("locked/x", b"1")
    finally:
        locked.chmod(0o700)
        assert time.monotonic() - started < 1.0


def test_a_folder_vanishing_mid_listing_never_truncates_it(tmp_path: Path) -> None:
    """A service answering "not found" once a listing is under way (a WebDAV subfolder
    removed meanwhile) must not end the listing early: a lock or pack listed after that
    point would go unseen. The store reports it as a failed listing, and the retrying
    wrapper lists again, skipping what it already gave."""
    import opendal.exceptions

    from cloudkeep.storage.local import LocalStorage

    class VanishesOnce(LocalStorage):
        failures = 1

        def _entries(self, folder: str) -> Iterator[Any]:
            for count, entry in enumerate(super()._entries(folder)):
                if count == 2 and VanishesOnce.failures:
                    VanishesOnce.failures -= 1
                    raise opendal.exceptions.NotFound("NotFound (persistent) at list")
                yield entry

    root = tmp_path / "s"
    names = [f"locks/{i:02x}" for i in range(8)]
    plain = open_store(root.as_uri())
    for name in names:
        plain.put(name, b"lock")
    inner = plain._inner  # type: ignore[attr-defined]
    vanishing = VanishesOnce(inner._op, "vanishing", root)
    with pytest.raises(StorageUnavailable, match="changed while it was listed"):
        list(vanishing.list("locks"))
    VanishesOnce.failures = 1
    listed = [info.name for info in RetryingStorage.with_policy(vanishing, QUICK).list("locks")]
    assert sorted(listed) == names
    assert len(listed) == len(set(listed))
    assert list(vanishing.list("nothing")) == []  # a folder absent from the start is empty
