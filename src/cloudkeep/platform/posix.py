"""What Linux and macOS share: positional I/O, ``O_NOFOLLOW``, ``dir_fd``, ``kill(pid, 0)``."""

from __future__ import annotations

import errno
import fcntl
import os
import sys
from collections.abc import Sequence
from pathlib import Path

assert sys.platform != "win32"

from cloudkeep.platform._folders import DescriptorFolder, Folder
from cloudkeep.platform.portable import link_new as link_new
from cloudkeep.platform.portable import lower_priority as lower_priority
from cloudkeep.platform.portable import process_umask as process_umask
from cloudkeep.platform.portable import raise_descriptor_limit as raise_descriptor_limit

O_CLOEXEC = os.O_CLOEXEC
O_NOFOLLOW = os.O_NOFOLLOW
#: File modes (0600 and the like) are enforced.
MODES_ENFORCED = True


def owned_by_me(info: os.stat_result) -> bool:
    """Whether a file (as ``lstat`` saw it) belongs to this user."""
    return info.st_uid == os.geteuid()


def make_blocking(fd: int) -> None:
    """Clear ``O_NONBLOCK`` again (set so that opening a FIFO cannot hang)."""
    os.set_blocking(fd, True)


def set_mode(fd: int, path: str | os.PathLike[str], mode: int) -> None:
    """Set the mode of the file open at ``fd`` (``fchmod``; ``path`` is not used)."""
    os.fchmod(fd, mode)


def fsync_dir(path: Path) -> None:
    """Flush a folder's entries (a rename or a new file in it) to disk."""
    fd = os.open(path, os.O_RDONLY | O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def pread(fd: int, length: int, offset: int) -> bytes:
    return os.pread(fd, length, offset)


def pwrite(fd: int, data: bytes | memoryview, offset: int) -> int:
    return os.pwrite(fd, data, offset)


def writev(fd: int, buffers: Sequence[bytes | memoryview]) -> int:
    return os.writev(fd, buffers)


def pread_into(fd: int, buffers: Sequence[memoryview], offset: int) -> int:
    """``preadv`` from ``pread`` (macOS builds without ``preadv``): one copy per buffer."""
    total = 0
    for buffer in buffers:
        data = os.pread(fd, len(buffer), offset + total)
        buffer[: len(data)] = data
        total += len(data)
        if len(data) < len(buffer):
            break
    return total


def pwrite_each(fd: int, buffers: Sequence[bytes | memoryview], offset: int) -> int:
    """``pwritev`` from ``pwrite`` (macOS builds without ``pwritev``); stops at a short write."""
    total = 0
    for buffer in buffers:
        done = os.pwrite(fd, buffer, offset + total)
        total += done
        if done < len(buffer):
            break
    return total


def process_alive(pid: int) -> bool:
    """Whether a process of this host runs: signal 0 checks without sending anything.

    A zombie (killed, not yet reaped) answers signal 0 but never writes again:
    where ``/proc`` tells (Linux), it counts as dead.
    """
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            return handle.read().rsplit(b") ", 1)[1][:1] != b"Z"
    except (OSError, IndexError):
        return True


def range_locked(fd: int, start: int, length: int) -> bool:
    """Whether another process holds a POSIX lock on bytes ``start`` to ``start+length``."""
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, length, start)
    except OSError as exc:
        return exc.errno in (errno.EACCES, errno.EAGAIN)
    fcntl.lockf(fd, fcntl.LOCK_UN, length, start)
    return False


def open_nofollow(path: str | os.PathLike[str], flags: int, mode: int = 0o666) -> int:
    """Open ``path`` but never through a symlink at its last component (``ELOOP``)."""
    return os.open(path, flags | O_NOFOLLOW | O_CLOEXEC, mode)


def open_folder(path: Path) -> Folder:
    """The folder ``path`` for writing a tree of untrusted names (see ``_folders``)."""
    return DescriptorFolder.open_root(path)
