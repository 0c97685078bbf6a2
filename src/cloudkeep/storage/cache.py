"""A local copy of a store's small, immutable metadata objects (as restic's backend/cache).

``CachedStorage`` implements ``Storage`` around another one. Whole reads of the
cached kinds (the first folder of a name, e.g. ``index`` and ``snapshots``) are
answered from the local copy when there is one, and kept after a read from the
store; a put keeps its copy; a delete drops it; a complete listing of a cached
kind drops the copies of names no longer listed. Everything else passes through.

No text from the store ever becomes a local path: a copy is named by the SHA-256
of the object's name, inside the folder of its kind (one of ours). Copies are
read without following symlinks, only if they are regular files no larger than
their kind allows; folders are created private (0700). A cache failure never
fails an operation: it only costs requests.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import stat
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path

from cloudkeep.platform import O_BINARY, open_nofollow
from cloudkeep.storage.base import ObjectInfo, Payload, Storage, joined

_COPY_NAME = re.compile(r"[0-9a-f]{64}")


def _open_no_follow(path: str, flags: int) -> int:
    """Never through a symlink, never inherited."""
    return open_nofollow(path, flags | O_BINARY)


class CachedStorage:
    """``Storage`` keeping local copies of whole objects of the ``kinds`` given.

    ``kinds`` maps a kind (first folder of a name) to the largest copy read back.
    Objects of those kinds must never change once written (only be deleted).
    """

    def __init__(self, inner: Storage, folder: Path, kinds: Mapping[str, int]) -> None:
        self._inner = inner
        self._folder = folder
        self._kinds = dict(kinds)
        #: False: reads go to the store (a check judges the store, not our copy);
        #: what they read still refreshes the copies.
        self.serve_copies = True

    def __repr__(self) -> str:
        return f"CachedStorage({self._inner!r}, {str(self._folder)!r})"

    @property
    def inner(self) -> Storage:
        return self._inner

    # ------------------------------------------------------------------ Storage
    def put(self, name: str, data: Payload, *, create_only: bool = False) -> None:
        self._inner.put(name, data, create_only=create_only)
        if self._path(name) is not None:
            self._keep(name, joined(data))

    def get(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        whole = offset == 0 and self._path(name) is not None
        if whole and self.serve_copies:
            copy = self._copy(name)
            if copy is not None and (length is None or len(copy) == length):
                return copy
        data = self._inner.get(name, offset, length)
        if whole:
            self._keep(name, data)
        return data

    def stat(self, name: str) -> ObjectInfo:
        """Always the store's answer: whether an object still exists is never a copy's."""
        return self._inner.stat(name)

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        kind = prefix.rstrip("/")
        if kind not in self._kinds or "/" in kind:
            return iter(self._inner.list(prefix))
        return self._list_and_prune(prefix, kind)

    def delete(self, name: str) -> None:
        self._inner.delete(name)
        self.evict(name)

    def describe(self) -> str:
        return self._inner.describe()

    # -------------------------------------------------------------------- copies
    def evict(self, name: str) -> bool:
        """Drop the copy of ``name`` (one that failed to open, say); whether there was one."""
        path = self._path(name)
        if path is None:
            return False
        try:
            path.unlink()
        except OSError:
            return False
        return True

    def _path(self, name: str) -> Path | None:
        kind = name.split("/", 1)[0]
        if kind not in self._kinds or "/" not in name:
            return None
        return self._folder / kind / hashlib.sha256(name.encode()).hexdigest()

    def _copy(self, name: str) -> bytes | None:
        path = self._path(name)
        if path is None:
            return None
        try:
            with open(path, "rb", opener=_open_no_follow) as handle:
                info = os.fstat(handle.fileno())
                limit = self._kinds[name.split("/", 1)[0]]
                if not stat.S_ISREG(info.st_mode) or info.st_size > limit:
                    return None
                return handle.read()
        except OSError:
            return None

    def _keep(self, name: str, data: bytes) -> None:
        path = self._path(name)
        if path is None:
            return
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}")
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | O_BINARY
            descriptor = open_nofollow(tmp, flags, 0o600)
            with open(descriptor, "wb") as handle:
                handle.write(data)
            os.replace(tmp, path)
        except OSError:
            with contextlib.suppress(OSError):
                tmp.unlink()

    def _list_and_prune(self, prefix: str, kind: str) -> Iterator[ObjectInfo]:
        """The store's listing; once it is complete, copies of names not in it go.

        Only regular files named like ours (64 hex) in our own folder go; a symlink
        is never followed, and anything else there is left alone.
        """
        keep: set[str] = set()
        for info in self._inner.list(prefix):
            keep.add(hashlib.sha256(info.name.encode()).hexdigest())
            yield info
        folder = self._folder / kind
        try:
            if not stat.S_ISDIR(folder.lstat().st_mode):
                return
            entries = list(os.scandir(folder))
        except OSError:
            return
        for entry in entries:
            if (
                _COPY_NAME.fullmatch(entry.name)
                and entry.name not in keep
                and entry.is_file(follow_symlinks=False)
            ):
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)
