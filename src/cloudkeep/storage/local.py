"""The local folder store: OpenDAL's ``fs`` service with our own puts and checks.

Reads, stats, listings and deletes go through OpenDAL (see ``opendal_store``);
this class adds what a folder needs beyond that:

- puts written by us: a temporary file under ``.cloudkeep-tmp/``, fsync, then a
  rename (or, create-only, a hard link: atomic, ``EEXIST`` if the name is
  taken), from the pieces with ``writev`` and large ones past the page cache;
- only regular files are objects: a symlink, FIFO or device in the store is
  absent, and a folder of the store that is a symlink is refused, so nothing
  planted in the folder reaches outside it;
- large ranges read past the page cache (``direct_io``).
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path

import opendal

from cloudkeep import platform
from cloudkeep.direct_io import (
    DIRECT_MIN_BYTES,
    DirectIOUnsupported,
    create_direct,
    read_direct,
    write_direct,
)
from cloudkeep.storage.base import (
    ObjectNotFound,
    Payload,
    StorageError,
    StorageUnavailable,
    StoreRejected,
    pieces,
)
from cloudkeep.storage.opendal_store import (
    _OS_PERMANENT,
    _OS_REJECTED,
    TEMP_PREFIX,
    OpenDALStorage,
    check_name,
)

_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | platform.O_BINARY | platform.O_CLOEXEC


class LocalStorage(OpenDALStorage):
    """The ``Storage`` protocol over a folder of this machine."""

    LIST_ASYNC = False  # a folder answers at once: the blocking lister costs nothing
    local = True  # see ``storage.base.is_local``

    def __init__(
        self,
        operator: opendal.Operator,
        description: str,
        root: str | Path,
        *,
        secrets: Iterable[str] = (),
    ) -> None:
        """``operator`` is OpenDAL's ``fs`` service rooted at ``root``."""
        super().__init__(operator, description, atomic_rename=True, secrets=secrets)
        self._local_root = Path(root)
        self._direct_io = True  # until the filesystem refuses it

    def put(self, name: str, data: Payload, *, create_only: bool = False) -> None:
        """Store ``data`` under ``name``, all or nothing (see the module docstring)."""
        check_name(name)
        self._put_local(name, pieces(data), create_only)

    def _put_local(self, name: str, parts: Sequence[bytes | memoryview], create_only: bool) -> None:
        """OpenDAL's fs put (temp file under ``.cloudkeep-tmp/``, fsync, rename), written
        from the pieces with ``writev`` instead of one joined buffer (less copying, see
        docs/performance.md); packs past the page cache where allowed (``direct_io``)."""
        temp = self._local_root / f"{TEMP_PREFIX}{uuid.uuid4().hex}"
        target = self._local_root / name
        self._confine(TEMP_PREFIX, "put")
        self._confine(name, "put")
        try:
            temp.parent.mkdir(parents=True, exist_ok=True)
            if not (
                self._direct_io
                and sum(map(len, parts)) >= DIRECT_MIN_BYTES
                and self._put_file_direct(temp, parts)
            ):
                fd = os.open(temp, _CREATE, 0o666)
                try:
                    platform.writev_all(fd, parts)
                    os.fsync(fd)
                finally:
                    os.close(fd)
            target.parent.mkdir(parents=True, exist_ok=True)
            if create_only:
                self._link_new(temp, target, name)
            else:
                os.replace(temp, target)
        except OSError as exc:
            with contextlib.suppress(OSError):
                temp.unlink()
            raise self._local_error(exc, name) from exc
        except BaseException:
            with contextlib.suppress(OSError):
                temp.unlink()
            raise

    def _link_new(self, temp: Path, target: Path, name: str) -> None:
        """Publish ``temp`` as ``target`` only if ``target`` does not exist, atomically.

        A hard link fails with EEXIST when the name is taken, so two devices
        creating the same object at once (a repository's config) cannot both
        succeed, as an exists-check before a rename could. Filesystems without
        hard links fall back to that check (best effort, as the contract allows).
        """
        try:
            linked = platform.link_new(temp, target)
        except FileExistsError:
            raise self._exists_error(name) from None
        if not linked:
            if target.exists():
                raise self._exists_error(name) from None
            os.replace(temp, target)
            return
        temp.unlink()

    def _put_file_direct(self, temp: Path, parts: Sequence[bytes | memoryview]) -> bool:
        """Write a pack past the page cache (see ``direct_io``); False if unsupported."""
        try:
            fd = create_direct(temp)
        except DirectIOUnsupported:
            self._direct_io = False
            return False
        try:
            write_direct(fd, parts)
            os.fsync(fd)
        except DirectIOUnsupported:
            self._direct_io = False
            temp.unlink()
            return False
        finally:
            os.close(fd)
        return True

    def _read_locally(self, name: str, offset: int, length: int | None) -> bytes | None:
        """A large range of a local object past the page cache; None to read it buffered."""
        if not self._direct_io or length is None or length < DIRECT_MIN_BYTES:
            return None
        try:
            return read_direct(self._local_root / name, offset, length)
        except DirectIOUnsupported:
            self._direct_io = False
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise ObjectNotFound(f"get {name!r} on {self._description}: no such object") from None
        except OSError:
            pass  # OpenDAL's read reports it in the words of every other store
        return None

    def _local_error(self, exc: OSError, name: str) -> StorageError:
        """Classify a local write failure the way ``_translate`` classifies OpenDAL's."""
        where = f"put {name!r} on {self._description}"
        reason = exc.strerror or str(exc)
        if exc.errno in (errno.ENOTDIR, errno.EEXIST):
            return StorageError(f"{where}: a parent folder of the name is an object")
        if exc.errno in _OS_REJECTED:
            return StoreRejected(f"{where}: {reason}")
        if exc.errno in _OS_PERMANENT or exc.errno == errno.EISDIR:
            return StorageError(f"{where}: {reason}")
        return StorageUnavailable(f"{where}: {reason}")

    def _confine(self, name: str, action: str) -> None:
        """Folder store: refuse an object below a folder of the store that is a symlink.

        A folder replaced by a link (``locks`` -> ``~/.ssh``) would have us list,
        write and delete files out of the store. Each folder of the name is
        checked (an lstat each; the store's root itself may be a link).
        """
        path = self._local_root
        for part in os.path.dirname(name).split("/"):
            if not part:
                continue
            path = path / part
            try:
                mode = os.lstat(path).st_mode
            except OSError:
                return  # not there yet: it is made a real folder, or the call fails
            if stat.S_ISLNK(mode):
                raise StorageError(
                    f"{action} {name!r} on {self._description}: the folder {part!r} of "
                    "the store is a symlink; refused (a folder store holds real folders)"
                )

    def _refuse_special(self, name: str, action: str) -> None:
        """In a folder store, only regular files are objects: a symlink (planted to
        reach a file outside the store), a FIFO (which would block a read) or a
        device is absent. Whatever such an entry points at is never touched."""
        self._confine(name, action)
        try:
            mode = os.lstat(self._local_root / name).st_mode
        except OSError:
            return  # absent or unreadable: the service's own call says so
        if not stat.S_ISREG(mode):
            raise ObjectNotFound(
                f"{action} {name!r} on {self._description}: no such object (not a regular file)"
            )

    def _listed(self, name: str) -> bool:
        """Whether a listed name is a regular file inside the store."""
        try:
            self._confine(name, "list")
            return stat.S_ISREG(os.lstat(self._local_root / name).st_mode)
        except (StorageError, OSError):
            return False
