"""Folders reached without following symlinks, for writing a tree of untrusted names.

``DescriptorFolder`` holds a descriptor of the folder and makes every entry
relative to it (``dir_fd``, ``O_NOFOLLOW``): a symlink where a folder is
expected cannot redirect anything. ``PathFolder`` is the fallback where
``dir_fd`` is unsupported (Windows, the portable implementation): it works by
path and checks with ``lstat`` that each folder it enters is a real folder and
that each file it opens is the entry it checked (same device and inode before
and after the open), so it refuses symlinks as well.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import sys
from pathlib import Path
from typing import Protocol

_O_CLOEXEC: int = getattr(os, "O_CLOEXEC", 0)
_O_NOFOLLOW: int = getattr(os, "O_NOFOLLOW", 0)
_O_DIRECTORY: int = getattr(os, "O_DIRECTORY", 0)
_O_BINARY: int = getattr(os, "O_BINARY", 0)
_O_TRUNC: int = os.O_TRUNC

#: Whether names are checked against Windows' rules (drives, streams, devices).
WINDOWS_NAMES = sys.platform == "win32"
_DEVICES = frozenset(
    {"CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$"}
    | {f"{kind}{digit}" for kind in ("COM", "LPT") for digit in "0123456789\u00b9\u00b2\u00b3"}
)
_NOT_IN_WINDOWS_NAMES = frozenset('\\:<>"|?*') | {chr(code) for code in range(32)}


class UnsafeName(ValueError):
    """A name that is not one plain entry of a folder on this system."""


def unsafe_name(name: str, windows: bool) -> str | None:
    """Why ``name`` cannot be a single entry of a folder, or None when it can.

    Everywhere: empty, ``.``, ``..``, a ``/`` or NUL. With ``windows``, also a
    drive or stream (``:``), a backslash or another character Windows refuses,
    a device name (``CON``, ``nul.txt``, ``COM1``..., any case, any extension),
    or a trailing dot or space (Windows drops it, so ``x.`` would be ``x``).
    """
    if name in ("", ".", "..") or "/" in name or "\0" in name:
        return "not a single name"
    if not windows:
        return None
    if any(char in _NOT_IN_WINDOWS_NAMES for char in name):
        return "a drive, stream, path or character Windows does not allow in a name"
    if name[-1] in ". ":
        return "a name ending in a dot or space, which Windows drops (another entry's name)"
    if name.split(".", 1)[0].rstrip(" ").upper() in _DEVICES:
        return "a device name on Windows"
    return None


def check_name(name: str, windows: bool) -> None:
    """Raise ``UnsafeName`` (naming the entry) unless ``name`` is a single safe entry."""
    reason = unsafe_name(name, windows)
    if reason is not None:
        raise UnsafeName(f"{name!r}: {reason}")


class Folder(Protocol):
    """A folder of a tree being written; names are single path components."""

    path: Path

    def child(self, name: str) -> Folder:
        """The existing folder ``name`` in this one (``NotADirectoryError`` if it is not one)."""
        ...

    def mkdir(self, name: str, mode: int) -> None:
        """Make the folder ``name`` (``FileExistsError`` if the name is taken)."""
        ...

    def open(self, name: str, flags: int, mode: int = 0o600) -> int:
        """A descriptor of the file ``name``, never through a symlink."""
        ...

    def lstat(self, name: str) -> os.stat_result: ...

    def symlink(self, target: str, name: str, target_is_directory: bool = False) -> None:
        """Make the symlink ``name`` → ``target``; Windows needs ``target_is_directory``
        for a link to a folder (POSIX ignores it)."""
        ...

    def finish(self, mode: int | None, mtime_ns: int | None) -> None:
        """Set this folder's mode and times (where given) and flush it to disk."""
        ...

    def finish_entry(self, name: str, mode: int, mtime_ns: int) -> None:
        """Set the mode and times of the file or folder ``name`` (never through a symlink)."""
        ...

    def close(self) -> None: ...


class DescriptorFolder:
    """A folder held by an ``O_DIRECTORY|O_NOFOLLOW`` descriptor (POSIX ``dir_fd``)."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self.fd = fd

    @classmethod
    def open_root(cls, path: Path) -> DescriptorFolder:
        return cls(path, os.open(path, os.O_RDONLY | _O_DIRECTORY | _O_NOFOLLOW | _O_CLOEXEC))

    def child(self, name: str) -> DescriptorFolder:
        flags = os.O_RDONLY | _O_DIRECTORY | _O_NOFOLLOW | _O_CLOEXEC
        try:
            return DescriptorFolder(self.path / name, os.open(name, flags, dir_fd=self.fd))
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                raise NotADirectoryError(exc.errno, "not a folder", str(self.path / name)) from exc
            raise

    def mkdir(self, name: str, mode: int) -> None:
        os.mkdir(name, mode, dir_fd=self.fd)

    def open(self, name: str, flags: int, mode: int = 0o600) -> int:
        return os.open(name, flags | _O_NOFOLLOW | _O_CLOEXEC, mode, dir_fd=self.fd)

    def lstat(self, name: str) -> os.stat_result:
        return os.stat(name, dir_fd=self.fd, follow_symlinks=False)

    def symlink(self, target: str, name: str, target_is_directory: bool = False) -> None:
        os.symlink(target, name, target_is_directory, dir_fd=self.fd)

    def finish(self, mode: int | None, mtime_ns: int | None) -> None:
        if mode is not None:
            os.chmod(self.fd, mode)
        if mtime_ns is not None:
            os.utime(self.fd, ns=(mtime_ns, mtime_ns))
        os.fsync(self.fd)

    def finish_entry(self, name: str, mode: int, mtime_ns: int) -> None:
        fd = self.open(name, os.O_RDONLY)
        try:
            os.chmod(fd, mode)
            os.utime(fd, ns=(mtime_ns, mtime_ns))
        finally:
            os.close(fd)

    def close(self) -> None:
        os.close(self.fd)


class PathFolder:
    """A folder known by its path, every step checked with ``lstat`` (no ``dir_fd``)."""

    def __init__(self, path: Path, windows: bool = WINDOWS_NAMES) -> None:
        self.path = path
        #: Whether names follow Windows' rules (the running system's, or a test's).
        self.windows = windows

    @classmethod
    def open_root(cls, path: Path, windows: bool = WINDOWS_NAMES) -> PathFolder:
        if not stat.S_ISDIR(os.lstat(path).st_mode):
            raise NotADirectoryError(errno.ENOTDIR, "not a folder", str(path))
        return cls(path, windows)

    def child(self, name: str) -> PathFolder:
        return PathFolder.open_root(self._entry(name), self.windows)

    def _entry(self, name: str) -> Path:
        check_name(name, self.windows)
        if os.sep in name:
            raise UnsafeName(f"{name!r}: not a single name")
        return self.path / name

    def mkdir(self, name: str, mode: int) -> None:
        os.mkdir(self._entry(name), mode)

    def open(self, name: str, flags: int, mode: int = 0o600) -> int:
        path = self._entry(name)
        try:
            before: os.stat_result | None = os.lstat(path)
        except FileNotFoundError:
            before = None
        if before is not None and stat.S_ISLNK(before.st_mode):
            raise OSError(errno.ELOOP, "refusing to follow a symlink", str(path))
        if before is None and flags & os.O_CREAT:
            flags |= os.O_EXCL  # it did not exist: whatever appears meanwhile is refused
        # Truncated only once it is known to be the entry checked, never a swapped-in target.
        fd = os.open(path, (flags & ~_O_TRUNC) | _O_BINARY | _O_CLOEXEC, mode)
        try:
            after = os.fstat(fd)
            if before is not None and (after.st_dev, after.st_ino) != (
                before.st_dev,
                before.st_ino,
            ):
                raise OSError(errno.ELOOP, "the entry changed while it was opened", str(path))
            if flags & _O_TRUNC:
                os.ftruncate(fd, 0)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def lstat(self, name: str) -> os.stat_result:
        return os.lstat(self._entry(name))

    def symlink(self, target: str, name: str, target_is_directory: bool = False) -> None:
        os.symlink(target, self._entry(name), target_is_directory)

    def finish(self, mode: int | None, mtime_ns: int | None) -> None:
        if not stat.S_ISDIR(os.lstat(self.path).st_mode):
            raise NotADirectoryError(errno.ENOTDIR, "not a folder", str(self.path))
        if mode is not None:
            os.chmod(self.path, mode)
        if mtime_ns is not None:
            os.utime(self.path, ns=(mtime_ns, mtime_ns))
        with contextlib.suppress(OSError):  # Windows cannot open a folder
            fd = os.open(self.path, os.O_RDONLY | _O_CLOEXEC)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def finish_entry(self, name: str, mode: int, mtime_ns: int) -> None:
        path = self._entry(name)
        if stat.S_ISLNK(os.lstat(path).st_mode):
            raise OSError(errno.ELOOP, "refusing to follow a symlink", str(path))
        os.chmod(path, mode)
        os.utime(path, ns=(mtime_ns, mtime_ns))

    def close(self) -> None:
        return None
