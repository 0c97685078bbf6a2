"""A cap on concurrent store calls, so callers can fan work out to threads safely.

OpenDAL operators are thread-safe, but an unbounded thread pool would open as
many connections (and hold as many multi-MiB buffers) as it has threads, and
providers throttle or reset connections under such bursts. Wrapping the store
once with ``ConcurrencyLimitedStorage`` bounds that no matter how callers
parallelise. Put it outside ``RetryingStorage`` only if backoff sleeps should
hold a slot; ``limit_concurrency`` puts it inside so sleeping retries free their
slot for other work.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping

from cloudkeep.settings import env_number
from cloudkeep.storage.base import ObjectInfo, Payload, Storage
from cloudkeep.storage.retrying import RetryingStorage

ENV_CONNECTIONS = "CLOUDKEEP_STORE_CONNECTIONS"
#: Requests in flight at once: a restore fetches 4 ranges, a backup uploads 2 packs
#: beside its lock refresh, and the API server may run a few operations together.
DEFAULT_CONNECTIONS = 8
MAX_CONNECTIONS = 256


def store_connections(environ: Mapping[str, str] | None = None) -> int:
    """The cap on requests in flight: ``CLOUDKEEP_STORE_CONNECTIONS`` or the default."""
    return env_number(
        environ,
        ENV_CONNECTIONS,
        DEFAULT_CONNECTIONS,
        int,
        lambda n: 1 <= n <= MAX_CONNECTIONS,
        f"from 1 to {MAX_CONNECTIONS}",
    )


class ConcurrencyLimitedStorage:
    """``Storage`` that lets at most ``limit`` calls reach ``inner`` at once."""

    def __init__(self, inner: Storage, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"concurrency limit must be at least 1, not {limit}")
        self._inner = inner
        self._slots = threading.BoundedSemaphore(limit)
        self.limit = limit

    def __repr__(self) -> str:
        return f"ConcurrencyLimitedStorage({self._inner!r}, limit={self.limit})"

    @property
    def inner(self) -> Storage:
        return self._inner

    def put(self, name: str, data: Payload, *, create_only: bool = False) -> None:
        """Put while holding a slot."""
        with self._slots:
            self._inner.put(name, data, create_only=create_only)

    def get(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        """Get while holding a slot."""
        with self._slots:
            return self._inner.get(name, offset, length)

    def stat(self, name: str) -> ObjectInfo:
        """Stat while holding a slot."""
        with self._slots:
            return self._inner.stat(name)

    def delete(self, name: str) -> None:
        """Delete while holding a slot."""
        with self._slots:
            self._inner.delete(name)

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        """List, holding a slot only while fetching each entry (not while the caller works)."""
        return self._list(prefix)

    def _list(self, prefix: str) -> Iterator[ObjectInfo]:
        with self._slots:
            entries = iter(self._inner.list(prefix))
        while True:
            with self._slots:
                info = next(entries, None)
            if info is None:
                return
            yield info

    def describe(self) -> str:
        """The wrapped store's description."""
        return self._inner.describe()


def limit_concurrency(store: Storage, limit: int) -> Storage:
    """Cap concurrent calls of a store from ``open_store``.

    For a ``RetryingStorage`` the cap goes between the retries and the backend,
    so a call sleeping before its next attempt does not hold a slot.
    """
    if isinstance(store, RetryingStorage):
        return RetryingStorage.with_policy(
            ConcurrencyLimitedStorage(store.inner, limit), store.policy
        )
    return ConcurrencyLimitedStorage(store, limit)
