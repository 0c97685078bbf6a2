"""Storage layer: bytes by name in any object store, behind one small protocol.

Callers need only ``open_store(url)`` and the ``Storage`` protocol with its
errors; everything else (OpenDAL, timeouts, retries) is wiring behind them.
"""

from cloudkeep.storage.base import (
    ObjectExists,
    ObjectInfo,
    ObjectNotFound,
    Storage,
    StorageError,
    StorageUnavailable,
    StoreRejected,
)
from cloudkeep.storage.limits import ConcurrencyLimitedStorage, limit_concurrency
from cloudkeep.storage.retrying import RetryingStorage, RetryPolicy
from cloudkeep.storage.url import describe_store_url, open_store

__all__ = [
    "SUPPORTED_SCHEMES",
    "ConcurrencyLimitedStorage",
    "ObjectExists",
    "ObjectInfo",
    "ObjectNotFound",
    "RetryPolicy",
    "RetryingStorage",
    "Storage",
    "StorageError",
    "StorageUnavailable",
    "StoreRejected",
    "describe_store_url",
    "limit_concurrency",
    "open_store",
]


def __getattr__(name: str) -> tuple[str, ...]:
    # Re-exported lazily: see cloudkeep.storage.url.
    if name == "SUPPORTED_SCHEMES":
        from cloudkeep.storage.url import supported_schemes

        return supported_schemes()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
