"""Repository locks: backups share, prune is exclusive.

Backups only add objects, so any number may run at once (from any device).
Reclaiming space deletes packs, which must never happen while a backup may be
deduplicating against them; so prune takes an exclusive lock and backups a
shared one. A lock is a sealed object ``locks/<id>`` rewritten every
``refresh_every`` seconds. Acquire = write own lock, then list: if a conflicting
live lock exists, remove own lock and retry with jitter until the timeout (both
sides back off; no one proceeds while the other might).

Expiry is judged by the store's clock, never by the devices' clocks: a lock is
stale once the store's last-modified time of it is more than ``stale_after``
seconds older than that of our own lock, written just before the listing (the
same store stamped both). A lock more than ``stale_after`` in the store's future
is stale too (a store clock that jumped back), so no lock blocks for good. A
lock of this host whose process is gone is stale at once. Stores that report no
modification times (the in-memory test store) fall back to the writers' clocks;
on a store that does, a listing without our own lock (removed by another client
meanwhile) judges no lock by age, never by the devices' clocks.

The holder knows when its lock may have lapsed: every successful write is timed
on a clock that keeps counting while the process is stopped or the machine
sleeps (``platform.boot_clock``: CLOCK_BOOTTIME on Linux), and the lock counts as held
only while the last write began less than ``trusted_for`` ago (two thirds of
the expiry: the rest absorbs clock-rate differences and the request in flight).
A lapse, or finding our lock removed by someone who judged it stale, is sticky
until ``reacquire``: callers check ``held()`` before an act that relies on the
lock (a backup before publishing its manifest, prune before each deletion).

Objects under ``locks/`` that are oversized, undecryptable or malformed are
reported once and skipped (never deleted: they cannot be proven stale), so one
bad object never blocks every backup and restore.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import re
import socket
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from types import TracebackType

from cloudkeep.errors import Busy, ConfigurationError, RepositoryDamaged
from cloudkeep.platform import boot_clock as lock_clock
from cloudkeep.platform import process_alive as pid_alive
from cloudkeep.repository.repository import Repository
from cloudkeep.repository.untrusted import parse_json
from cloudkeep.storage.base import ObjectInfo, ObjectNotFound, StorageError, StorageUnavailable

log = logging.getLogger(__name__)

ENV_STALE_AFTER = "CLOUDKEEP_LOCK_STALE_AFTER"
DEFAULT_STALE_AFTER = 300.0
MIN_STALE_AFTER = 2.0  # S3 stamps objects to the second
#: Far above a lock document (~200 bytes sealed); larger objects are never downloaded.
MAX_LOCK_BYTES = 64 * 1024
_LOCK_NAME = re.compile(r"[0-9a-f]{32}")
_reported: set[str] = set()  # bad lock objects already warned about in this process


@dataclass(frozen=True)
class LockTiming:
    """How long a lock lives without a refresh; the rest is derived from it."""

    stale_after: float = DEFAULT_STALE_AFTER

    def __post_init__(self) -> None:
        if not self.stale_after >= MIN_STALE_AFTER:
            raise ConfigurationError(
                f"{ENV_STALE_AFTER} must be at least {MIN_STALE_AFTER:g} seconds"
            )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> LockTiming:
        env = os.environ if environ is None else environ
        raw = env.get(ENV_STALE_AFTER, "").strip()
        if not raw:
            return cls()
        try:
            return cls(float(raw))
        except ValueError:
            raise ConfigurationError(f"{ENV_STALE_AFTER}={raw!r} is not a number") from None

    @property
    def refresh_every(self) -> float:
        return self.stale_after / 6

    @property
    def trusted_for(self) -> float:
        """How long after the start of its last write a holder still relies on its lock."""
        return self.stale_after * 2 / 3

    @property
    def prune_wait(self) -> float:
        """How long prune waits for conflicting locks: a dead client's lock is stale by then."""
        return min(30.0, self.stale_after * 1.5)


def _warn_once(name: str, reason: str) -> None:
    if name not in _reported:
        _reported.add(name)
        log.warning("ignoring the lock object %s: %s", name, reason)


def _label(value: object) -> str:
    """A lock's text as shown in a message: printable and short (it comes from the store)."""
    text = "".join(c for c in str(value) if c.isprintable())
    return text[:60] or "?"


def _document_fields(raw: bytes) -> dict | None:
    """The fields of a lock document, or None if it is not one."""
    try:
        lock = parse_json(raw)
    except ValueError:
        return None
    if not isinstance(lock, dict):
        return None
    checks = (
        ("exclusive", bool),
        ("hostname", str),
        ("pid", int),
        ("time", int | float),
    )
    if any(not isinstance(lock.get(key), kind) for key, kind in checks):
        return None
    return lock


class RepositoryLock:
    def __init__(
        self,
        repo: Repository,
        *,
        exclusive: bool,
        purpose: str,
        timing: LockTiming | None = None,
    ) -> None:
        self._repo = repo
        self.exclusive = exclusive
        self._purpose = purpose
        self.timing = timing or LockTiming.from_env()
        self._name = uuid.uuid4().hex
        self._stop = threading.Event()
        self._refresher: threading.Thread | None = None
        self._mutex = threading.Lock()  # one write of our lock at a time
        self._good_since: float | None = None  # lock_clock() when the last good write began
        self._lapsed = False

    @property
    def name(self) -> str:
        return self._name

    def _document(self) -> bytes:
        return json.dumps(
            {
                "exclusive": self.exclusive,
                "purpose": self._purpose,
                "hostname": socket.gethostname(),
                "pid": os.getpid(),
                "time": time.time(),
            }
        ).encode()

    def _write(self) -> float:
        """Write our lock; the lock clock from before the write began."""
        started = lock_clock()
        self._repo.save_file("locks", self._name, self._document())
        return started

    def conflicts(self) -> list[str]:
        """Live locks of others that conflict with ours; stale ones are removed."""
        infos = [
            info
            for info in self._repo.storage.list("locks/")
            if _LOCK_NAME.fullmatch(info.name.removeprefix("locks/"))
        ]
        own = next((i for i in infos if i.name == f"locks/{self._name}"), None)
        store_now = own.modified if own is not None else None
        found = []
        for info in infos:
            name = info.name.removeprefix("locks/")
            if name == self._name:
                continue
            lock = self._read(info)
            if lock is None:
                continue
            if self._is_stale(lock, info.modified, store_now):
                with contextlib.suppress(StorageError):
                    self._repo.delete_file("locks", name)
                continue
            if self.exclusive or lock["exclusive"]:
                found.append(f"{_label(lock.get('purpose'))} on {_label(lock['hostname'])}")
        return found

    def _read(self, info: ObjectInfo) -> dict | None:
        """Another client's lock document, or None if it is gone or not a lock of ours."""
        if info.size > MAX_LOCK_BYTES:
            _warn_once(info.name, f"{info.size:,} bytes is far too large for a lock")
            return None
        try:
            raw = self._repo.load_file("locks", info.name.removeprefix("locks/"))
        except ObjectNotFound:
            return None  # released meanwhile
        except StorageUnavailable:
            raise
        except (RepositoryDamaged, StorageError) as exc:
            _warn_once(info.name, f"it does not open ({exc})")
            return None
        lock = _document_fields(raw)
        if lock is None:
            _warn_once(info.name, "it is not a lock document")
        return lock

    def _is_stale(self, lock: dict, modified: float | None, store_now: float | None) -> bool:
        if modified is not None and store_now is not None:
            age = store_now - modified  # both stamped by the store's clock
        elif modified is None:  # a store that stamps no times: the writers' clocks
            age = time.time() - float(lock["time"])
        else:  # our own lock is not listed (removed meanwhile): no store time to judge by
            age = 0.0
        if abs(age) > self.timing.stale_after:
            return True
        same_host = lock["hostname"] == socket.gethostname()
        return same_host and not pid_alive(lock["pid"])

    def acquire(self, timeout: float) -> RepositoryLock:
        deadline = time.monotonic() + timeout
        while True:
            started = self._write()
            conflicts = self.conflicts()
            if not conflicts:
                break
            self._remove()
            self._wait_or_give_up(deadline, conflicts)
        with self._mutex:
            self._good_since, self._lapsed = started, False
        self._refresher = threading.Thread(target=self._refresh_loop, daemon=True, name="lock")
        self._refresher.start()
        return self

    def reacquire(self, timeout: float) -> None:
        """Hold the lock again after a lapse: the acquire protocol, keeping our lock meanwhile.

        Our lock stays while we wait, so a prune that is deleting sees it at its
        next check and stops; once no conflicting live lock is listed after our
        write, nothing conflicting runs until our lock lapses again.
        """
        deadline = time.monotonic() + timeout
        while True:
            with self._mutex:
                started = self._write()
                conflicts = self.conflicts()
                if not conflicts:
                    self._good_since, self._lapsed = started, False
                    return
            self._wait_or_give_up(deadline, conflicts)

    @staticmethod
    def _wait_or_give_up(deadline: float, conflicts: list[str]) -> None:
        if time.monotonic() >= deadline:
            raise Busy(
                f"the repository is locked by {', '.join(sorted(set(conflicts)))}; "
                "try again when it has finished"
            )
        time.sleep(min(1.0 + random.random(), max(0.0, deadline - time.monotonic())))

    def held(self) -> bool:
        """Whether our lock has been live without a gap since it was (re)acquired."""
        good_since = self._good_since
        return (
            good_since is not None
            and not self._lapsed
            and lock_clock() - good_since <= self.timing.trusted_for
        )

    def refresh(self) -> None:
        """Rewrite our lock now; notes a lapse (too long since the last write, or removed)."""
        with self._mutex:
            if self._good_since is None:
                return
            try:
                self._repo.storage.stat(f"locks/{self._name}")
            except ObjectNotFound:
                if not self._lapsed:
                    log.warning("this client's repository lock was removed by another client")
                self._lapsed = True
            started = self._write()
            if lock_clock() - self._good_since > self.timing.trusted_for:
                self._lapsed = True
            self._good_since = started

    def store_now(self) -> float | None:
        """The store's clock: the last-modified time of our lock, rewritten now (None if untold)."""
        self.refresh()
        return self._repo.storage.stat(f"locks/{self._name}").modified

    def _refresh_loop(self) -> None:
        while not self._stop.wait(self.timing.refresh_every):
            try:
                self.refresh()
            except StorageError as exc:  # retried next round; a long gap counts as a lapse
                log.warning("could not refresh the repository lock: %s", exc)

    def _remove(self) -> None:
        with contextlib.suppress(StorageError):  # left behind, it goes stale on its own
            self._repo.delete_file("locks", self._name)

    def release(self) -> None:
        self._stop.set()
        if self._refresher:
            self._refresher.join()
        with self._mutex:
            self._good_since = None
        self._remove()

    def __enter__(self) -> RepositoryLock:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()
