"""macOS: ``renamex_np(RENAME_SWAP)``, ``F_PREALLOCATE``, ``F_NOCACHE``."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import struct
import sys
import time
from collections.abc import Sequence
from pathlib import Path

assert sys.platform == "darwin"

from cloudkeep.platform._common import NO_ROOM
from cloudkeep.platform.portable import (
    keep_freed_memory as keep_freed_memory,
)
from cloudkeep.platform.portable import (
    open_file_holders as open_file_holders,
)
from cloudkeep.platform.portable import (
    reopen_direct as reopen_direct,
)
from cloudkeep.platform.portable import (
    start_writeback as start_writeback,
)
from cloudkeep.platform.portable import (
    write_private_file as write_private_file,
)
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
    pread_into,
    pwrite_each,
)
from cloudkeep.platform.posix import (
    process_alive as process_alive,
)
from cloudkeep.platform.posix import (
    process_umask as process_umask,
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

IMPLEMENTATION = "darwin"
SQLITE_IN_PLACE = True

_libc = ctypes.CDLL(None, use_errno=True)
_renamex_np = getattr(_libc, "renamex_np", None)  # macOS 10.12 and later
if _renamex_np is not None:
    _renamex_np.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_uint]
    _renamex_np.restype = ctypes.c_int
_RENAME_SWAP = 0x2
_F_PREALLOCATE = 42
_F_ALLOCATEALL = 0x4
_F_PEOFPOSMODE = 3
_FSTORE = struct.Struct("=Iiqqq")  # fst_flags, fst_posmode, fst_offset, fst_length, fst_bytesalloc
_HAS_PREADV = hasattr(os, "preadv")  # builds for macOS 11 and later


def exchange_paths(a: Path, b: Path) -> bool:
    """Swap two paths in one step (``renamex_np(RENAME_SWAP)``); False where the
    filesystem cannot."""
    if _renamex_np is None:
        return False
    if _renamex_np(os.fsencode(a), os.fsencode(b), _RENAME_SWAP) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOTSUP, errno.ENOSYS):
        return False
    raise OSError(code, os.strerror(code), str(b))


def preallocate(fd: int, length: int) -> None:
    """Allocate the file's blocks up front (``F_PREALLOCATE``) and give it its size;
    ``OSError`` (``ENOSPC``) when the disk is full."""
    if length <= 0:
        return
    request = _FSTORE.pack(_F_ALLOCATEALL, _F_PEOFPOSMODE, 0, length, 0)
    try:
        fcntl.fcntl(fd, _F_PREALLOCATE, request)
    except OSError as exc:
        if exc.errno in NO_ROOM:
            raise
    os.ftruncate(fd, length)


def open_direct(path: str | os.PathLike[str], flags: int) -> int:
    """Open with ``F_NOCACHE`` set: reads and writes bypass the unified buffer cache."""
    fd = os.open(path, flags | os.O_CLOEXEC, 0o666)
    with contextlib.suppress(OSError):  # only a hint
        fcntl.fcntl(fd, fcntl.F_NOCACHE, 1)
    return fd


def preadv(fd: int, buffers: Sequence[memoryview], offset: int) -> int:
    if _HAS_PREADV:
        return os.preadv(fd, buffers, offset)
    return pread_into(fd, buffers, offset)


def pwritev(fd: int, buffers: Sequence[bytes | memoryview], offset: int) -> int:
    if _HAS_PREADV:
        return os.pwritev(fd, buffers, offset)
    return pwrite_each(fd, buffers, offset)


def boot_clock() -> float:
    """Seconds on macOS's ``CLOCK_MONOTONIC``, which keeps counting while the Mac sleeps."""
    return time.clock_gettime(time.CLOCK_MONOTONIC)
