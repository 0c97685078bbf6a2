"""Windows: ``OpenProcess`` for liveness, ``msvcrt.locking`` probes; the rest is portable."""

from __future__ import annotations

import ctypes
import msvcrt
import os
import sys
import time
from ctypes import wintypes

assert sys.platform == "win32"

from cloudkeep.platform._common import _lock_for
from cloudkeep.platform.portable import (
    MODES_ENFORCED as MODES_ENFORCED,
)
from cloudkeep.platform.portable import (
    exchange_paths as exchange_paths,
)
from cloudkeep.platform.portable import (
    fsync_dir as fsync_dir,
)
from cloudkeep.platform.portable import (
    keep_freed_memory as keep_freed_memory,
)
from cloudkeep.platform.portable import (
    link_new as link_new,
)
from cloudkeep.platform.portable import (
    make_blocking as make_blocking,
)
from cloudkeep.platform.portable import (
    open_direct as open_direct,
)
from cloudkeep.platform.portable import (
    open_file_holders as open_file_holders,
)
from cloudkeep.platform.portable import (
    open_folder as open_folder,
)
from cloudkeep.platform.portable import (
    open_nofollow as open_nofollow,
)
from cloudkeep.platform.portable import (
    owned_by_me as owned_by_me,
)
from cloudkeep.platform.portable import (
    pread as pread,
)
from cloudkeep.platform.portable import (
    preadv as preadv,
)
from cloudkeep.platform.portable import (
    preallocate as preallocate,
)
from cloudkeep.platform.portable import (
    process_umask as process_umask,
)
from cloudkeep.platform.portable import (
    pwrite as pwrite,
)
from cloudkeep.platform.portable import (
    pwritev as pwritev,
)
from cloudkeep.platform.portable import (
    raise_descriptor_limit as raise_descriptor_limit,
)
from cloudkeep.platform.portable import (
    reopen_direct as reopen_direct,
)
from cloudkeep.platform.portable import (
    set_mode as set_mode,
)
from cloudkeep.platform.portable import (
    start_writeback as start_writeback,
)
from cloudkeep.platform.portable import (
    write_private_file as write_private_file,
)
from cloudkeep.platform.portable import (
    writev as writev,
)

IMPLEMENTATION = "win32"
#: SQLite on Windows maps ``-shm`` through its own locks; reading it in place does not hold.
SQLITE_IN_PLACE = False

_PROCESS_QUERY_LIMITED_INFORMATION = 0x1000
_STILL_ACTIVE = 259
_ERROR_ACCESS_DENIED = 5
_kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)
_kernel32.OpenProcess.argtypes = [wintypes.DWORD, wintypes.BOOL, wintypes.DWORD]
_kernel32.OpenProcess.restype = wintypes.HANDLE
_kernel32.GetExitCodeProcess.argtypes = [wintypes.HANDLE, ctypes.POINTER(wintypes.DWORD)]
_kernel32.GetExitCodeProcess.restype = wintypes.BOOL
_kernel32.CloseHandle.argtypes = [wintypes.HANDLE]
_kernel32.CloseHandle.restype = wintypes.BOOL
_kernel32.GetCurrentProcess.argtypes = []
_kernel32.GetCurrentProcess.restype = wintypes.HANDLE
_kernel32.SetPriorityClass.argtypes = [wintypes.HANDLE, wintypes.DWORD]
_kernel32.SetPriorityClass.restype = wintypes.BOOL
_BELOW_NORMAL_PRIORITY_CLASS = 0x4000


def lower_priority() -> None:
    """Let everything else on the machine go first: ``BELOW_NORMAL_PRIORITY_CLASS``
    (best effort: a refusal is ignored)."""
    _kernel32.SetPriorityClass(_kernel32.GetCurrentProcess(), _BELOW_NORMAL_PRIORITY_CLASS)


def process_alive(pid: int) -> bool:
    """Whether a process runs: ``OpenProcess`` + ``GetExitCodeProcess`` (never
    ``os.kill``, which would terminate it)."""
    if pid <= 0:
        return False
    handle = _kernel32.OpenProcess(_PROCESS_QUERY_LIMITED_INFORMATION, False, pid)
    if not handle:
        return ctypes.get_last_error() == _ERROR_ACCESS_DENIED  # exists, not ours
    try:
        code = wintypes.DWORD()
        if not _kernel32.GetExitCodeProcess(handle, ctypes.byref(code)):
            return True
        return code.value == _STILL_ACTIVE
    finally:
        _kernel32.CloseHandle(handle)


def range_locked(fd: int, start: int, length: int) -> bool:
    """Whether another process holds a lock on bytes ``start`` to ``start+length``
    (``LockFile`` through ``msvcrt.locking``, released at once)."""
    with _lock_for(fd):
        os.lseek(fd, start, os.SEEK_SET)
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, length)
        except OSError:
            return True
        os.lseek(fd, start, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, length)
        return False


def boot_clock() -> float:
    """Seconds on ``time.monotonic``, which on Windows counts the time asleep too."""
    return time.monotonic()
