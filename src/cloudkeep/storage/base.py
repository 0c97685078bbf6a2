"""The whole storage contract: bytes by name, nothing more.

Every backend (OpenDAL services, memory) implements ``Storage``; behaviour such
as retries, timeouts or fault injection is a wrapper implementing the same
protocol around another one, as in restic's ``internal/backend``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from cloudkeep.errors import CloudkeepError, StoreUnreachable

#: What ``put`` stores: bytes (or a view of them), or pieces written one after another.
Payload = bytes | memoryview | Sequence[bytes]


def pieces(data: Payload) -> Sequence[bytes | memoryview]:
    """The payload as pieces (one buffer is one piece; bytearray and memoryview too)."""
    return [data] if isinstance(data, bytes | bytearray | memoryview) else data


def joined(data: Payload) -> bytes:
    """The payload as one ``bytes`` (for backends that take a single buffer)."""
    if isinstance(data, bytes):
        return data
    if isinstance(data, bytearray | memoryview):
        return bytes(data)
    return b"".join(data)


class StorageError(CloudkeepError):
    """A storage operation failed for a reason other than the ones below."""


class ObjectNotFound(StorageError):
    """The named object does not exist."""


class ObjectExists(StorageError):
    """A create-only put found the name already taken."""


class StorageUnavailable(StorageError, StoreUnreachable):
    """The store could not be reached (after retries): network, DNS, auth, timeouts."""


class StoreRejected(StorageUnavailable):
    """The store answered but refuses us (credentials, permissions, missing bucket).

    Separate so retry wrappers give up at once: waiting cannot fix these.
    """


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    name: str
    size: int
    #: When the store last wrote the object, by the store's own clock (POSIX seconds),
    #: where the service reports it: lock expiry is judged on it (see repository/locks.py).
    modified: float | None = field(default=None, compare=False)


@runtime_checkable
class Storage(Protocol):
    """Names are '/'-separated relative paths such as ``data/ab/abcdef…``."""

    def put(self, name: str, data: Payload, *, create_only: bool = False) -> None:
        """Store ``data`` (bytes, or pieces to concatenate) under ``name`` atomically.

        Readers see all or nothing. ``data`` is read only during the call: the
        caller may reuse its memory once ``put`` returns or raises (a pack is
        assembled in a buffer its thread reuses for the next one).

        With ``create_only`` raise ``ObjectExists`` if the name is taken, where the
        backend can tell atomically; otherwise best effort (stat, then write).
        """
        ...

    def get(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        """Read ``length`` bytes from ``offset`` (all the rest if ``length`` is None)."""
        ...

    def stat(self, name: str) -> ObjectInfo:
        """Size (and modification time) of one object; ``ObjectNotFound`` if absent."""
        ...

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        """Every object whose name starts with the folder ``prefix`` (recursive)."""
        ...

    def delete(self, name: str) -> None:
        """Remove an object; deleting an absent object is not an error."""
        ...

    def describe(self) -> str:
        """A human description of where this store is, without secrets."""
        ...


def is_local(store: Storage) -> bool:
    """Whether ``store`` is a folder of this machine under any wrappers (a wrapper
    names the store it wraps ``inner``): a read there costs no network round trip."""
    while getattr(store, "local", False) is not True:
        inner = getattr(store, "inner", None)
        if inner is None:
            return False
        store = inner
    return True
