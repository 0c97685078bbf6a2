"""``Storage`` over an OpenDAL operator (sync API).

OpenDAL gives one client for every object store; this adapter only adds what
the contract needs on top of it: exceptions mapped to our error classes with a
one-line, secret-free message; reads that never return silently short data;
recursive listings that contain files only; and writes that readers see all or
nothing.

Atomicity: object stores (S3, GCS, Azure, memory) publish a PUT only once it is
complete. OpenDAL's ``fs`` service writes straight into the target file and
WebDAV servers such as rclone do the same, so for those (``atomic_rename``)
``put`` writes a temporary object under ``.cloudkeep-tmp/`` and renames it into
place. A crash therefore never leaves a truncated object under its real name,
which matters doubly because create-only puts treat an existing name as done.
The price is that create-only on WebDAV is "stat, then rename", which is atomic
only against readers, not against a concurrent writer of the same name. S3 and
the others use the service's if-not-exists where OpenDAL reports it. Local
folders are ``cloudkeep.storage.local.LocalStorage``, built on this class.
"""

from __future__ import annotations

import asyncio
import errno
import os
import re
import threading
import uuid
from collections.abc import Iterable, Iterator
from typing import Any

import opendal
import opendal.exceptions as oe
import opendal.types

from cloudkeep.storage.base import (
    ObjectExists,
    ObjectInfo,
    ObjectNotFound,
    Payload,
    StorageError,
    StorageUnavailable,
    StoreRejected,
    joined,
)

#: Folder (under the store root) holding in-flight writes; never listed.
TEMP_PREFIX = ".cloudkeep-tmp/"

_HEAD = re.compile(r"^(?P<kind>\w+) \((?P<status>[\w ]+)\) at (?P<op>[^=]*?)\s*=> (?P<msg>.*)$")
_S3_ERROR = re.compile(r'code: "(?P<code>[^"]*)", message: "(?P<message>[^"]*)"')
_GCS_ERROR = re.compile(r'GcsError \{ code: (?P<code>\d+), message: "(?P<message>[^"]*)"')
_URL_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)[^/@\s]+@")
_SECRET_PARAM = re.compile(
    r"(?i)(?P<key>[\w-]*(?:signature|token|password|secret|credential|sig|key)[\w-]*=)[^&\s\"']+"
)
_STATUS = re.compile(r"\bstatus: (\d{3})\b")
_MAX_MESSAGE = 300
_CUT_SHORT = "reader got too little data"
_BARE_HEAD = re.compile(r"^\w+ \([\w ]+\) at \w+$")
_NO_CREDENTIAL = "failed to load signing credential"
#: How S3, Azure and GCS name a bucket or container that is not there.
_NO_BUCKET = ("NoSuchBucket", "ContainerNotFound", "The specified bucket does not exist")
#: How S3 and Azure refuse a bucket or container name (the URL's checks catch most first).
_BAD_BUCKET_NAME = ("InvalidBucketName", "InvalidResourceName")
_OS_ERROR = re.compile(r"\(os error (\d+)\)")
_OS_REJECTED = frozenset({errno.EACCES, errno.EPERM, errno.EROFS})
_OS_PERMANENT = frozenset(
    {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.ENAMETOOLONG, errno.EISDIR, errno.EEXIST}
)


def is_opendal_error(exc: BaseException) -> bool:
    """OpenDAL's exception classes share no base class; recognise them by module."""
    return type(exc).__module__ == oe.__name__


def summarize_error(exc: BaseException, secrets: Iterable[str] = ()) -> str:
    """One line out of OpenDAL's multi-line report: the message plus its root cause.

    The Rust error carries a context block and often a backtrace; users need
    the first line and the innermost source (e.g. "Connection refused"), and
    must never see credentials that ended up in a URL or header dump.
    """
    text = str(exc).strip()
    lines = text.splitlines()
    first = lines[0].strip() if lines else type(exc).__name__
    head = _HEAD.match(first)
    message = head.group("msg").strip() if head else first
    source = ""
    if "Source:" in lines:
        following = [line.strip() for line in lines[lines.index("Source:") + 1 :]]
        source = next((line for line in following if line), "")
    s3 = _S3_ERROR.search(message)
    if s3:
        message = f"{s3.group('code')}: {s3.group('message')}".rstrip(": ")
    gcs = _GCS_ERROR.search(message)
    if gcs:
        message = f"HTTP {gcs.group('code')}: {gcs.group('message')}"
    if source and source not in message:
        message = f"{message} ({source})"
    return redact(message, secrets)[:_MAX_MESSAGE]


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """Remove URL userinfo, secret-looking query values and known secret strings."""
    # Longest first, so a secret containing another is removed whole. Even very
    # short secrets are removed: a garbled message beats a leaked password.
    for secret in sorted((s for s in secrets if s), key=len, reverse=True):
        text = text.replace(secret, "***")
    text = _URL_USERINFO.sub(r"\g<scheme>***@", text)
    return _SECRET_PARAM.sub(r"\g<key>***", text)


def _is_temporary(exc: BaseException) -> bool:
    head = _HEAD.match(str(exc).strip().splitlines()[0] if str(exc).strip() else "")
    return bool(head and head.group("status") == "temporary")


def _os_errno(exc: BaseException) -> int | None:
    """The OS error number in OpenDAL's source chain, if the failure came from a syscall."""
    found = _OS_ERROR.search(str(exc))
    return int(found.group(1)) if found else None


def _http_status(exc: BaseException) -> int | None:
    """The HTTP status OpenDAL put in the error context, if any."""
    found = _STATUS.search(str(exc))
    return int(found.group(1)) if found else None


def check_name(name: str) -> None:
    """Reject names that could escape the store root or alias another object."""
    if not isinstance(name, str) or not name:
        raise ValueError("object name must be a non-empty string")
    if name.startswith("/") or name.endswith("/") or "\\" in name:
        raise ValueError(f"invalid object name {name!r}: must be a relative 'a/b' path")
    parts = name.split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise ValueError(f"invalid object name {name!r}: empty, '.' or '..' segment")
    if name.startswith(TEMP_PREFIX):
        raise ValueError(f"invalid object name {name!r}: {TEMP_PREFIX} is reserved")


def folder_of(prefix: str) -> str:
    """Normalise a list prefix to a folder path ('' for everything, else 'a/b/')."""
    prefix = prefix.strip("/")
    if not prefix:
        return ""
    if any(part in ("", ".", "..") for part in prefix.split("/")):
        raise ValueError(f"invalid list prefix {prefix!r}")
    return prefix + "/"


def _store_failure(exc: Exception, os_error: int | None, message: str) -> StorageError:
    """A failure of the store itself (not of one object's name): rejected, passing or
    permanent."""
    if os_error in _OS_REJECTED:
        return StoreRejected(message)
    if os_error in _OS_PERMANENT:
        # OpenDAL marks most local I/O errors temporary; a full or broken
        # disk does not heal within a retry budget.
        return StorageError(message)
    status = _http_status(exc)
    if isinstance(exc, oe.PermissionDenied | oe.ConfigInvalid) or status in (401, 403):
        return StoreRejected(message)
    if isinstance(exc, oe.RateLimited) or _is_temporary(exc):
        return StorageUnavailable(message)
    if _CUT_SHORT in str(exc):
        # A body that ends early (once ranges are ruled out) is a dropped transfer.
        return StorageUnavailable(message)
    if status is not None and (status in (408, 429) or status >= 500):
        return StorageUnavailable(message)
    return StorageError(message)


class _ListingLoop:
    """An event loop on a daemon thread of its own, running OpenDAL's async listers.

    A lister lives and is dropped on this thread only; callers wait for batches of
    entries without holding the GIL, so listings overlap each other and other work.
    """

    BATCH = 1000

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pid = 0

    def _running(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None or self._pid != os.getpid():  # none yet, or forked
                loop = asyncio.new_event_loop()
                thread = threading.Thread(target=loop.run_forever, name="listing", daemon=True)
                thread.start()
                self._loop, self._pid = loop, os.getpid()
            return self._loop

    def list(self, operator: opendal.AsyncOperator, folder: str) -> Iterator[opendal.types.Entry]:
        loop = self._running()
        listers: list[Any] = []

        async def start() -> None:
            listers.append(await operator.list(folder, recursive=True))

        async def take() -> list[opendal.types.Entry]:
            batch = []
            async for entry in listers[0]:
                batch.append(entry)
                if len(batch) >= self.BATCH:
                    break
            return batch

        try:
            asyncio.run_coroutine_threadsafe(start(), loop).result()
            while batch := asyncio.run_coroutine_threadsafe(take(), loop).result():
                yield from batch
        finally:
            loop.call_soon_threadsafe(listers.clear)


_LISTING_LOOP = _ListingLoop()


class OpenDALStorage:
    """The ``Storage`` protocol over one ``opendal.Operator``."""

    #: List through the async operator (see ``_entries``); local folders list fast.
    LIST_ASYNC = True

    def __init__(
        self,
        operator: opendal.Operator,
        description: str,
        *,
        atomic_rename: bool = False,
        secrets: Iterable[str] = (),
        credentials_hint: str = "",
    ) -> None:
        """``description`` must already be secret-free; ``secrets`` are scrubbed from errors.

        ``atomic_rename`` selects write-to-temp-then-rename for services whose
        plain writes are visible while in progress (fs, WebDAV). ``credentials_hint``
        says where the service's credentials come from, for missing or refused ones.
        """
        capability = operator.capability()
        if atomic_rename and not capability.rename:
            raise ValueError(f"{description}: atomic_rename needs a service that can rename")
        self._op = operator
        self._description = description
        self._atomic_rename = atomic_rename
        self._native_create_only = bool(capability.write_with_if_not_exists)
        self._secrets = tuple(s for s in secrets if s)
        self._credentials_hint = credentials_hint
        self._async_op: opendal.AsyncOperator | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._description!r})"

    def describe(self) -> str:
        """Where the store is, as given by ``open_store`` (never with credentials)."""
        return self._description

    # -- errors ------------------------------------------------------------

    def _translate(
        self, exc: Exception, action: str, name: str, *, create_only: bool = False
    ) -> StorageError:
        """Map one OpenDAL exception onto the contract's error classes."""
        reason = summarize_error(exc, self._secrets)
        where = (
            f"{action} {name!r} on {self._description}"
            if name
            else (f"{action} on {self._description}")
        )
        message = f"{where}: {reason}"
        rejected = self._rejected(exc, action, where, reason)
        if rejected is not None:
            return rejected
        if isinstance(exc, oe.NotFound):
            return ObjectNotFound(f"{where}: no such object")
        if isinstance(exc, oe.IsADirectory):
            return ObjectNotFound(f"{where}: no such object (it is a folder)")
        if isinstance(exc, oe.ConditionNotMatch | oe.AlreadyExists) and create_only:
            return ObjectExists(f"{where}: the object already exists")
        os_error = _os_errno(exc)
        if action == "put" and os_error in (errno.ENOTDIR, errno.EEXIST):
            # fs: creating the parent folders hit an object of that name.
            return StorageError(f"{where}: a parent folder of the name is an object")
        if isinstance(exc, oe.NotADirectory) or os_error == errno.ENOTDIR:
            # fs: a parent of the name is an object, so the name cannot exist.
            return ObjectNotFound(f"{where}: no such object")
        return _store_failure(exc, os_error, message)

    def _rejected(
        self, exc: Exception, action: str, where: str, reason: str
    ) -> StoreRejected | None:
        """One line naming what to fix when the store itself refuses us, else None."""
        text = str(exc)
        hint = f": {self._credentials_hint}" if self._credentials_hint else ""
        if any(code in text for code in _NO_BUCKET) or (
            isinstance(exc, oe.NotFound) and action == "put"
        ):
            # An object store answers a write "not found" only for a missing bucket.
            return StoreRejected(
                f"{where}: the bucket/container does not exist: create it, or fix its "
                "name in the store URL"
            )
        if any(code in text for code in _BAD_BUCKET_NAME):
            return StoreRejected(
                f"{where}: the service refuses the bucket/container name ({reason}): "
                "fix it in the store URL"
            )
        if _NO_CREDENTIAL in text:
            return StoreRejected(f"{where}: no credentials found{hint}")
        status = _http_status(exc)
        if isinstance(exc, oe.PermissionDenied) or status in (401, 403):
            if _BARE_HEAD.match(reason):  # a HEAD's refusal has no body to quote
                reason = f"HTTP {status}" if status else "refused"
            return StoreRejected(f"{where}: access denied ({reason}){hint}")
        return None

    # -- protocol ----------------------------------------------------------

    def put(self, name: str, data: Payload, *, create_only: bool = False) -> None:
        """Store ``data`` under ``name``; see the module docstring for atomicity."""
        check_name(name)
        payload = joined(data)
        if self._atomic_rename:
            self._put_via_rename(name, payload, create_only=create_only)
        elif create_only and self._native_create_only:
            self._write(name, payload, name=name, create_only=True, if_not_exists=True)
        else:
            if create_only and self._exists(name):
                raise self._exists_error(name)
            self._write(name, payload, name=name, create_only=create_only)

    def _write(
        self,
        path: str,
        payload: bytes,
        *,
        name: str,
        create_only: bool,
        if_not_exists: bool = False,
    ) -> None:
        """Write ``payload`` at ``path``, reporting failures as a put of ``name``."""
        try:
            if if_not_exists:
                self._op.write(path, payload, if_not_exists=True)
            else:
                self._op.write(path, payload)
        except Exception as exc:
            if not is_opendal_error(exc):
                raise
            raise self._translate(exc, "put", name, create_only=create_only) from exc

    def _put_via_rename(self, name: str, payload: bytes, *, create_only: bool) -> None:
        temp = f"{TEMP_PREFIX}{uuid.uuid4().hex}"
        self._write(temp, payload, name=name, create_only=False)
        try:
            if create_only and self._exists(name):
                raise self._exists_error(name)
            try:
                self._op.rename(temp, name)
            except Exception as exc:
                if not is_opendal_error(exc):
                    raise
                # rename replaces the target, so a conflict here is never "name taken".
                raise self._translate(exc, "put", name) from exc
        except BaseException:
            self._discard(temp)
            raise

    def _exists_error(self, name: str) -> ObjectExists:
        return ObjectExists(f"put {name!r} on {self._description}: the object already exists")

    def _discard(self, temp: str) -> None:
        """Best-effort removal of a temporary object after a failed put."""
        try:
            self._op.delete(temp)
        except Exception as exc:
            if not is_opendal_error(exc):
                raise

    def _exists(self, name: str) -> bool:
        try:
            self.stat(name)
        except ObjectNotFound:
            return False
        return True

    def get(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        """Exactly ``length`` bytes from ``offset`` or a ``StorageError`` saying why not."""
        check_name(name)
        if offset < 0 or (length is not None and length < 0):
            raise ValueError(f"invalid range offset={offset} length={length}")
        self._refuse_special(name, "get")
        if length == 0:
            self._check_range(name, offset, 0, self.stat(name).size)
            return b""
        ranged = bool(offset) or length is not None
        data = self._read_locally(name, offset, length)
        try:
            if data is None:
                data = self._op.read(name, offset=offset, size=length)
        except Exception as exc:
            if not is_opendal_error(exc):
                raise
            error = self._translate(exc, "get", name)
            if ranged and not isinstance(error, ObjectNotFound | StoreRejected):
                # Services report an unsatisfiable range in different ways
                # (RangeNotSatisfied, "reader got too little data"): say it plainly.
                size = self.stat(name).size
                self._check_range(name, offset, length, size)
                if offset == size:
                    return b""  # S3 refuses "bytes=SIZE-" although it is just empty
            raise error from exc
        if not isinstance(data, bytes):
            data = bytes(data)
        if length is not None and len(data) != length:
            size = self.stat(name).size
            self._check_range(name, offset, length, size)
            raise StorageUnavailable(
                f"get {name!r} on {self._description}: transfer cut short "
                f"({len(data)} of {length} bytes)"
            )
        if length is None and offset and not data:
            self._check_range(name, offset, None, self.stat(name).size)
        return data

    def _check_range(self, name: str, offset: int, length: int | None, size: int) -> None:
        end = offset + (length or 0)
        if offset > size or end > size:
            wanted = f"bytes {offset}..{end}" if length is not None else f"offset {offset}"
            raise StorageError(
                f"get {name!r} on {self._description}: {wanted} is beyond the end "
                f"of the object ({size} bytes)"
            )

    def stat(self, name: str) -> ObjectInfo:
        """Size of one object; folders count as absent."""
        check_name(name)
        return self._stat(name)

    # -- hooks of the local folder store (``storage.local``) ----------------

    def _read_locally(self, name: str, offset: int, length: int | None) -> bytes | None:
        """A range read without the service, or None to ask the service."""
        return None

    def _confine(self, name: str, action: str) -> None:
        """Refuse a name the store must not reach (nothing here)."""

    def _refuse_special(self, name: str, action: str) -> None:
        """Refuse an entry that is not an object (nothing here)."""

    def _listed(self, path: str) -> bool:
        """Whether a listed name is an object of the store (all are here)."""
        return True

    def _stat(self, name: str) -> ObjectInfo:
        """``stat`` without the name check, for names the service itself listed."""
        self._refuse_special(name, "stat")
        try:
            meta = self._op.stat(name)
        except Exception as exc:
            if not is_opendal_error(exc):
                raise
            raise self._translate(exc, "stat", name) from exc
        if meta.is_dir:
            raise ObjectNotFound(f"stat {name!r} on {self._description}: no such object")
        return ObjectInfo(name, int(meta.content_length), _modified(meta))

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        """Files under the folder ``prefix`` ('' = all), recursively, in service order.

        ``prefix`` is a folder: "data" and "data/" both mean everything under
        ``data/``. Entries without a size in the listing are stat-ed.
        """
        folder = folder_of(prefix)
        if folder.startswith(TEMP_PREFIX):
            raise ValueError(f"invalid list prefix {prefix!r}: {TEMP_PREFIX} is reserved")
        if folder:
            self._confine(folder, "list")
        return self._iter_folder(folder)

    def _list_failed(self, exc: Exception, folder: str) -> StorageError | None:
        """The error to raise for a failed listing, or None for "folder absent"."""
        if not is_opendal_error(exc):
            raise exc
        error = self._translate(exc, "list", folder)
        return None if isinstance(error, ObjectNotFound) else error

    def _entries(self, folder: str) -> Iterator[opendal.types.Entry]:
        """The service's recursive listing of ``folder``, OpenDAL's errors unchanged.

        OpenDAL's blocking lister holds the GIL while it waits for the service, so a
        listing would stall every other thread (and listings could not overlap) for a
        round trip per page: remote services are listed through the async operator,
        on the loop thread of ``_LISTING_LOOP``, in batches.
        """
        if not self.LIST_ASYNC:
            entries = iter(self._op.list(folder, recursive=True))
            try:
                yield from entries
            finally:
                # The lister may only be dropped on this thread: a traceback keeps this
                # frame's locals alive wherever the error is handled (or collected).
                del entries
            return
        if self._async_op is None:
            self._async_op = self._op.to_async_operator()
        yield from _LISTING_LOOP.list(self._async_op, folder)

    def _iter_folder(self, folder: str) -> Iterator[ObjectInfo]:
        entries = self._entries(folder)
        started = False
        while True:
            try:
                entry = next(entries)
            except StopIteration:
                return
            except Exception as exc:
                error = self._list_failed(exc, folder)
                if error is None and not started:
                    return  # no such folder: nothing stored there yet
                if error is None:
                    # Part of the folder vanished while it was listed: ending here would
                    # pass a truncated listing off as whole (a lock or pack not seen).
                    error = StorageUnavailable(
                        f"list {folder!r} on {self._description}: "
                        "the folder changed while it was listed"
                    )
                raise error from exc
            started = True
            path = entry.path.lstrip("/")
            meta = entry.metadata
            if not path or path.endswith("/") or meta.is_dir or path.startswith(TEMP_PREFIX):
                continue
            if not path.startswith(folder):
                continue  # WebDAV answers a listing of "name/" with the file "name"
            if not self._listed(path):
                continue  # a symlink, FIFO or device planted in a folder store
            info = ObjectInfo(path, int(meta.content_length), _modified(meta))
            if info.size == 0:
                # Some listings omit sizes (reported as 0): confirm with a stat.
                try:
                    info = self._stat(path)
                except ObjectNotFound:
                    continue
            yield info

    def delete(self, name: str) -> None:
        """Remove ``name``; an absent object is fine."""
        check_name(name)
        self._confine(name, "delete")
        try:
            self._op.delete(name)
        except Exception as exc:
            if not is_opendal_error(exc):
                raise
            error = self._translate(exc, "delete", name)
            if isinstance(error, ObjectNotFound):
                return
            raise error from exc


def _modified(meta: opendal.types.Metadata) -> float | None:
    """The store's last-modified time of an object, if the service reports one."""
    stamp = meta.last_modified
    return stamp.timestamp() if stamp is not None else None
