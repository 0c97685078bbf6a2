"""Repository locks: backups share, space reclaim is exclusive.

Backups only add objects, so any number may run at once (from any device).
Reclaiming space deletes packs, which must never happen while a backup may be
deduplicating against them; so reclaim takes an exclusive lock and backups a
shared one. A lock is an object ``locks/<id>`` refreshed every minute; one not
refreshed for ``STALE_AFTER`` seconds, or held by a dead process on this host,
is stale and ignored (then removed), so a crashed client never blocks others.
Acquire = write own lock, then list: if a conflicting live lock exists, remove
own lock and retry with jitter until the timeout (both sides back off; no one
proceeds while the other might).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import socket
import threading
import time
import uuid
from types import TracebackType

from cloudkeep.errors import Busy
from cloudkeep.repository.repository import Repository
from cloudkeep.storage.base import ObjectNotFound, StorageError

REFRESH_EVERY = 60.0
STALE_AFTER = 300.0


def pid_alive(pid: int) -> bool:
    """Whether a process of this host runs: locks and staging of dead ones are stale."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (killed, not yet reaped) answers kill(0) but never writes again
        with open(f"/proc/{pid}/stat", "rb") as handle:
            return handle.read().rsplit(b") ", 1)[1][:1] != b"Z"
    except (OSError, IndexError):
        return True


class RepositoryLock:
    def __init__(self, repo: Repository, *, exclusive: bool, purpose: str) -> None:
        self._repo = repo
        self.exclusive = exclusive
        self._purpose = purpose
        self._name = uuid.uuid4().hex
        self._stop = threading.Event()
        self._refresher: threading.Thread | None = None

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

    def _write(self) -> None:
        self._repo.save_file("locks", self._name, self._document())

    def _conflicts(self) -> list[str]:
        """Live locks of others that conflict with ours; stale ones are removed."""
        conflicts = []
        for name in self._repo.list_files("locks"):
            if name == self._name:
                continue
            try:
                lock = json.loads(self._repo.load_file("locks", name))
            except (ObjectNotFound, StorageError, ValueError):
                continue
            if self._is_stale(lock):
                with contextlib.suppress(StorageError):
                    self._repo.delete_file("locks", name)
                continue
            if self.exclusive or lock.get("exclusive"):
                conflicts.append(f"{lock.get('purpose')} on {lock.get('hostname')}")
        return conflicts

    @staticmethod
    def _is_stale(lock: dict) -> bool:
        if time.time() - float(lock.get("time", 0)) > STALE_AFTER:
            return True
        same_host = lock.get("hostname") == socket.gethostname()
        return same_host and not pid_alive(int(lock.get("pid", 0)))

    def acquire(self, timeout: float) -> RepositoryLock:
        deadline = time.monotonic() + timeout
        while True:
            self._write()
            conflicts = self._conflicts()
            if not conflicts:
                break
            self._repo.delete_file("locks", self._name)
            if time.monotonic() >= deadline:
                raise Busy(
                    f"the repository is locked by {', '.join(sorted(set(conflicts)))}; "
                    "try again when it has finished"
                )
            time.sleep(min(1.0 + random.random(), max(0.0, deadline - time.monotonic())))
        self._refresher = threading.Thread(target=self._refresh_loop, daemon=True, name="lock")
        self._refresher.start()
        return self

    def _refresh_loop(self) -> None:
        while not self._stop.wait(REFRESH_EVERY):
            # A miss is retried next minute; staleness needs five misses in a row.
            with contextlib.suppress(StorageError):
                self._write()

    def release(self) -> None:
        self._stop.set()
        if self._refresher:
            self._refresher.join()
        with contextlib.suppress(StorageError):  # left behind, it goes stale on its own
            self._repo.delete_file("locks", self._name)

    def __enter__(self) -> RepositoryLock:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()
