"""Linux: ``renameat2`` exchange, ``posix_fallocate``, ``sync_file_range``, ``O_DIRECT``."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import sys
import time
from collections.abc import Callable, Collection, Sequence
from pathlib import Path

assert sys.platform == "linux"

from cloudkeep.platform._common import NO_ROOM, DirectIOUnsupported, refusal_is_unsupported
from cloudkeep.platform.portable import write_private_file as write_private_file
from cloudkeep.platform.posix import (
    MODES_ENFORCED as MODES_ENFORCED,
)
from cloudkeep.platform.posix import (
    fsync_dir as fsync_dir,
)
from cloudkeep.platform.posix import (
    link_new as link_new,
)
from cloudkeep.platform.posix import (
    lower_priority as lower_priority,
)
from cloudkeep.platform.posix import (
    make_blocking as make_blocking,
)
from cloudkeep.platform.posix import (
    open_folder as open_folder,
)
from cloudkeep.platform.posix import (
    open_nofollow as open_nofollow,
)
from cloudkeep.platform.posix import (
    owned_by_me as owned_by_me,
)
from cloudkeep.platform.posix import (
    pread as pread,
)
from cloudkeep.platform.posix import (
    process_alive as process_alive,
)
from cloudkeep.platform.posix import (
    pwrite as pwrite,
)
from cloudkeep.platform.posix import (
    raise_descriptor_limit as raise_descriptor_limit,
)
from cloudkeep.platform.posix import (
    range_locked as range_locked,
)
from cloudkeep.platform.posix import (
    set_mode as set_mode,
)
from cloudkeep.platform.posix import (
    writev as writev,
)

IMPLEMENTATION = "linux"
SQLITE_IN_PLACE = True

_libc = ctypes.CDLL(None, use_errno=True)  # the C library the interpreter runs on
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100
_SYNC_FILE_RANGE_WRITE = 2
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8
_MMAP_THRESHOLD_BYTES = 32 * 1024 * 1024  # glibc's ceiling; packs (4 MiB) stay below it
_TRIM_THRESHOLD_BYTES = 32 * 1024 * 1024  # per arena
# One arena for every thread: the engine's threads allocate under the GIL anyway, and
# each arena of its own kept up to the trim threshold of freed memory.
_ARENA_MAX = 1


def _function(name: str, argtypes: list[type], restype: type) -> Callable[..., int] | None:
    """A function of the C library, or None where it has none (musl lacks some)."""
    function = getattr(_libc, name, None)
    if function is None:
        return None
    function.argtypes = argtypes
    function.restype = restype
    return function  # type: ignore[no-any-return]


_renameat2 = _function(
    "renameat2",
    [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint],
    ctypes.c_int,
)
_sync_file_range = _function(
    "sync_file_range", [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint], ctypes.c_int
)
_mallopt = _function("mallopt", [ctypes.c_int, ctypes.c_int], ctypes.c_int)


def exchange_paths(a: Path, b: Path) -> bool:
    """Swap two paths in one step (``renameat2(RENAME_EXCHANGE)``); False where the
    filesystem cannot."""
    if _renameat2 is None:
        return False
    if _renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(b))


def preallocate(fd: int, length: int) -> None:
    """Allocate the file's blocks up front; ``OSError`` (``ENOSPC``) when the disk is full.

    A filesystem without ``fallocate`` gets a sparse file of that size.
    """
    if length <= 0:
        return
    try:
        os.posix_fallocate(fd, 0, length)
    except OSError as exc:
        if exc.errno in NO_ROOM:
            raise
        os.ftruncate(fd, length)


def start_writeback(fd: int, offset: int, length: int) -> None:
    """Start writing a written range to disk now (asynchronously, GIL released)."""
    if _sync_file_range is not None:
        _sync_file_range(fd, offset, length, _SYNC_FILE_RANGE_WRITE)


def open_direct(path: str | os.PathLike[str], flags: int) -> int:
    """Open with ``O_DIRECT`` (past the page cache); ``DirectIOUnsupported`` if refused."""
    with refusal_is_unsupported():
        return os.open(path, flags | os.O_CLOEXEC | os.O_DIRECT, 0o666)


def reopen_direct(fd: int) -> int | None:
    """A second, direct descriptor for writing the very file open at ``fd``, whatever its
    path has become; None where unsupported."""
    try:
        return open_direct(f"/proc/self/fd/{fd}", os.O_WRONLY)
    except (DirectIOUnsupported, OSError):
        return None


def preadv(fd: int, buffers: Sequence[memoryview], offset: int) -> int:
    return os.preadv(fd, buffers, offset)


def pwritev(fd: int, buffers: Sequence[bytes | memoryview], offset: int) -> int:
    return os.pwritev(fd, buffers, offset)


def open_file_holders(paths: Collection[str]) -> dict[str, list[str]]:
    """Of ``paths`` (real paths), those another process has open → ``pid N command``
    of each (from ``/proc/<pid>/fd``: this user's processes, or all as root)."""
    holders: dict[str, list[str]] = {}
    if not paths:
        return holders
    try:
        pids = [name for name in os.listdir("/proc") if name.isdigit()]
    except OSError:
        return holders
    me = str(os.getpid())
    for pid in pids:
        if pid == me:
            continue
        try:
            descriptors = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue  # another user's process, or gone
        for fd in descriptors:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target not in paths:
                continue
            command = ""
            with contextlib.suppress(OSError):
                command = Path(f"/proc/{pid}/comm").read_text().strip()
            who = f"pid {pid} {command}".strip()
            if who not in holders.setdefault(target, []):
                holders[target].append(who)
    return holders


def process_umask() -> int:
    """The umask, read from /proc without changing it even for a moment."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


def keep_freed_memory() -> None:
    """glibc: keep freed buffers mapped for reuse (page faults, not copies, were the
    kernel time), in one arena shared by all threads (called before any thread starts);
    musl and others have no ``mallopt`` and keep their defaults."""
    if _mallopt is not None:
        _mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_BYTES)
        _mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD_BYTES)
        _mallopt(_M_ARENA_MAX, _ARENA_MAX)


def boot_clock() -> float:
    """Seconds on ``CLOCK_BOOTTIME``: it counts while stopped (SIGSTOP) or suspended."""
    return time.clock_gettime(time.CLOCK_BOOTTIME)
