"""The implementation that runs everywhere: only calls every OS offers.

Used on Windows for most calls, and everywhere with ``CLOUDKEEP_PORTABLE=1`` so
that the fallbacks run in CI. Positional I/O seeks and reads or writes under a
per-descriptor lock; nothing is exchanged atomically; direct I/O is buffered
I/O behind the same API; the in-place SQLite capture is off.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import stat
import sys
import time
from collections.abc import Collection, Sequence
from pathlib import Path

from cloudkeep.platform._common import (
    NICENESS,
    O_BINARY,
    O_CLOEXEC,
    link_or_unsupported,
    seek_pread,
    seek_preadv,
    seek_pwritev,
    sequential_writev,
)
from cloudkeep.platform._folders import Folder, PathFolder

log = logging.getLogger(__name__)
IMPLEMENTATION = "portable"
#: Whether the in-place SQLite capture (which reads ``-shm``) may be used.
SQLITE_IN_PLACE = False


def exchange_paths(a: Path, b: Path) -> bool:
    """Swap two paths atomically; False where the system cannot (the caller falls back)."""
    return False


def fsync_dir(path: Path) -> None:
    """Flush a folder's entries to disk where folders can be opened (not on Windows)."""
    try:
        fd = os.open(path, os.O_RDONLY | O_CLOEXEC)
    except PermissionError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def preallocate(fd: int, length: int) -> None:
    """Give the file ``length`` bytes; ``OSError`` with ``ENOSPC`` when the disk is full."""
    os.ftruncate(fd, length)


def start_writeback(fd: int, offset: int, length: int) -> None:
    """Hint that a written range may go to disk now; nothing here (the fsync does it)."""


def open_direct(path: str | os.PathLike[str], flags: int) -> int:
    """Open for I/O past the page cache; here an ordinary descriptor with the same API."""
    return os.open(path, flags | O_BINARY | O_CLOEXEC, 0o666)


def reopen_direct(fd: int) -> int | None:
    """A second, direct descriptor of the file open at ``fd``; None where unsupported."""
    return None


def pread(fd: int, length: int, offset: int) -> bytes:
    """Up to ``length`` bytes from ``offset``, the descriptor's offset left alone by others."""
    return seek_pread(fd, length, offset)


def preadv(fd: int, buffers: Sequence[memoryview], offset: int) -> int:
    """Fill ``buffers`` in order from ``offset``; the bytes read."""
    return seek_preadv(fd, buffers, offset)


def pwrite(fd: int, data: bytes | memoryview, offset: int) -> int:
    return seek_pwritev(fd, [data], offset)


def pwritev(fd: int, buffers: Sequence[bytes | memoryview], offset: int) -> int:
    """Write ``buffers`` in order at ``offset``; the bytes written (short writes possible)."""
    return seek_pwritev(fd, buffers, offset)


def writev(fd: int, buffers: Sequence[bytes | memoryview]) -> int:
    """Write ``buffers`` in order at the descriptor's offset; the bytes written."""
    return sequential_writev(fd, buffers)


def process_alive(pid: int) -> bool:
    """Whether a process of this host runs. No portable call tells, so this is the
    native one (``OpenProcess`` on Windows, signal 0 elsewhere)."""
    if sys.platform == "win32":
        from cloudkeep.platform.windows import process_alive as alive
    else:
        from cloudkeep.platform.posix import process_alive as alive
    return alive(pid)


def range_locked(fd: int, start: int, length: int) -> bool:
    """Whether another process holds a lock on bytes ``start`` to ``start+length``. No
    portable call tells, so this is the native probe (``LockFile`` or ``lockf``)."""
    if sys.platform == "win32":
        from cloudkeep.platform.windows import range_locked as locked
    else:
        from cloudkeep.platform.posix import range_locked as locked
    return locked(fd, start, length)


#: Whether file modes (0600 and the like) mean anything here (not on Windows).
MODES_ENFORCED = os.name != "nt"


def owned_by_me(info: os.stat_result) -> bool:
    """Whether a file (as ``lstat`` saw it) belongs to this user; where there are no
    user ids (Windows, whose user folders are private already), always."""
    geteuid = getattr(os, "geteuid", None)
    return geteuid is None or info.st_uid == geteuid()


def make_blocking(fd: int) -> None:
    """Clear ``O_NONBLOCK`` again (set so that opening a FIFO cannot hang), where it exists."""
    if sys.platform != "win32":
        os.set_blocking(fd, True)


def raise_descriptor_limit(wanted: int) -> int:
    """Raise the soft limit of open descriptors towards ``wanted`` (capped by the hard
    limit); return the limit in force. Without such a limit (Windows): ``wanted``."""
    if sys.platform == "win32":
        return wanted
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            log.warning("could not raise the open-file limit from %s: %s", soft, exc)
    return int(soft)


def lower_priority() -> None:
    """Let everything else on the machine go first (best effort): ``nice`` where it exists."""
    nice = getattr(os, "nice", None)
    if nice is not None:
        with contextlib.suppress(OSError):
            nice(NICENESS)


def set_mode(fd: int, path: str | os.PathLike[str], mode: int) -> None:
    """Set the mode of the file open at ``fd`` (at ``path``): through the descriptor where
    ``chmod`` takes one, else by path (Windows before Python 3.13: only the read-only bit)."""
    if os.chmod in os.supports_fd:
        os.chmod(fd, mode)
    else:
        os.chmod(path, mode)


def link_new(source: str | os.PathLike[str], target: str | os.PathLike[str]) -> bool:
    """Hard-link ``source`` as the new name ``target``; False where the filesystem makes
    no hard links there, ``FileExistsError`` when ``target`` exists."""
    return link_or_unsupported(source, target)


def open_nofollow(path: str | os.PathLike[str], flags: int, mode: int = 0o666) -> int:
    """Open ``path`` but never through a symlink at its last component (``ELOOP``).

    Without ``O_NOFOLLOW``: the entry is ``lstat``-ed first and the descriptor's
    device and inode must match it, so a symlink swapped in meanwhile is refused.
    """
    try:
        before: os.stat_result | None = os.lstat(path)
    except FileNotFoundError:
        before = None
    if before is not None and stat.S_ISLNK(before.st_mode):
        raise OSError(errno.ELOOP, "refusing to follow a symlink", os.fspath(path))
    if before is None and flags & os.O_CREAT:
        flags |= os.O_EXCL
    # Truncated only once it is known to be the entry checked, never a swapped-in target.
    fd = os.open(path, (flags & ~os.O_TRUNC) | O_BINARY | O_CLOEXEC, mode)
    try:
        after = os.fstat(fd)
        if before is not None and (after.st_dev, after.st_ino) != (before.st_dev, before.st_ino):
            raise OSError(errno.ELOOP, "the entry changed while it was opened", os.fspath(path))
        if flags & os.O_TRUNC:
            os.ftruncate(fd, 0)
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_file_holders(paths: Collection[str]) -> dict[str, list[str]]:
    """Of ``paths``, those another process has open, and who; unknown here (empty)."""
    return {}


def open_folder(path: Path) -> Folder:
    """The folder ``path`` for writing a tree of untrusted names (see ``_folders``)."""
    return PathFolder.open_root(path)


def process_umask() -> int:
    """The umask, swapped for the strictest one while read (never looser for a moment)."""
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


def keep_freed_memory() -> None:
    """Tune the allocator to keep freed buffers mapped; the defaults stay here."""


def boot_clock() -> float:
    """Seconds on a clock that keeps counting while the process is stopped or the
    machine sleeps; here the wall clock."""
    return time.time()


def write_private_file(path: Path, data: bytes) -> None:
    """Replace ``path`` atomically by a file only this user can read (0600 where modes exist)."""
    temp = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | O_BINARY | O_CLOEXEC, 0o600)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.chmod(temp, 0o600)  # exactly, whatever the umask
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            temp.unlink()
        raise
