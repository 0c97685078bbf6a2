"""The backup list, cached as ready-to-send bytes.

Listing a store means reading and decrypting every manifest: far too slow for
``GET /backups`` while a backup saturates the machine. The server knows about every
change it makes itself (creations, deletions) and applies them to the cache; a TTL
picks up changes made by other processes (the CLI), refreshed in the background while
the stale copy keeps being served.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from cloudkeep.errors import RepositoryNotFound
from cloudkeep.wire import Backup, Backups

__all__ = ["BackupListCache"]

log = logging.getLogger("cloudkeep.api")


@dataclass(frozen=True)
class _Listing:
    entries: tuple[Backup, ...]
    by_id: dict[str, Backup]
    body: bytes
    loaded_at: float


def _listing(entries: Sequence[Backup], loaded_at: float) -> _Listing:
    ordered = tuple(sorted(entries, key=lambda b: b.created.value, reverse=True))
    body = Backups(iterable=list(ordered)).to_json().encode("utf-8")
    return _Listing(ordered, {b.id: b for b in ordered}, body, loaded_at)


class BackupListCache:
    """Thread-safe; ``loader`` is the (slow, blocking) engine listing."""

    def __init__(self, loader: Callable[[], list[Backup]], ttl: float = 30.0) -> None:
        self._loader = loader
        self._ttl = ttl
        self._lock = threading.Lock()
        self._load_lock = threading.Lock()
        self._current: _Listing | None = None
        # Changes applied while a load is in flight, replayed onto its (older) result.
        self._pending: list[tuple[str, Backup | str]] | None = None
        self._refreshing = False

    def peek(self) -> _Listing | None:
        """The cached listing, fresh or stale, without blocking (None when never loaded)."""
        return self._current

    def is_fresh(self) -> bool:
        current = self._current
        return current is not None and time.monotonic() - current.loaded_at < self._ttl

    def load(self) -> _Listing:
        """Blocking (re)load; concurrent callers share one listing of the store."""
        started = time.monotonic()
        with self._load_lock:
            current = self._current
            if current is not None and current.loaded_at >= started:
                return current  # another caller loaded while we waited
            with self._lock:
                self._pending = []
            try:
                try:
                    entries = self._loader()
                except RepositoryNotFound:
                    entries = []  # nothing backed up yet: an empty list, not an error
            except BaseException:
                with self._lock:
                    self._pending = None
                raise
            with self._lock:
                merged = {b.id: b for b in entries}
                for action, item in self._pending or []:
                    if action == "add" and isinstance(item, Backup):
                        merged[item.id] = item
                    elif action == "remove" and isinstance(item, str):
                        merged.pop(item, None)
                self._pending = None
                self._current = _listing(list(merged.values()), time.monotonic())
                return self._current

    def refresh_in_background(self) -> None:
        """Reload in a daemon thread unless one is already running."""
        with self._lock:
            if self._refreshing:
                return
            self._refreshing = True

        def run() -> None:
            try:
                self.load()
            except Exception as exc:  # kept serving the stale copy; next request retries
                log.warning("background refresh of the backup list failed: %s", exc)
            finally:
                with self._lock:
                    self._refreshing = False

        threading.Thread(target=run, name="cloudkeep-list-refresh", daemon=True).start()

    def add(self, backup: Backup) -> None:
        self._mutate("add", backup)

    def remove(self, backup_id: str) -> None:
        self._mutate("remove", backup_id)

    def _mutate(self, action: str, item: Backup | str) -> None:
        with self._lock:
            if self._pending is not None:
                self._pending.append((action, item))
            current = self._current
            if current is None:
                return
            entries = {b.id: b for b in current.entries}
            if isinstance(item, Backup):
                entries[item.id] = item
            else:
                entries.pop(item, None)
            self._current = _listing(list(entries.values()), current.loaded_at)
