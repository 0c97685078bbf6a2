"""What every implementation of the platform layer shares: types, flags, folders."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import io
import ntpath
import os
import posixpath
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

#: Flags that only add safety or correctness where they exist (0 elsewhere).
O_CLOEXEC: int = getattr(os, "O_CLOEXEC", 0)
O_NONBLOCK: int = getattr(os, "O_NONBLOCK", 0)
O_BINARY: int = getattr(os, "O_BINARY", 0)  # Windows opens in text mode without it
O_NOFOLLOW: int = getattr(os, "O_NOFOLLOW", 0)
O_DIRECTORY: int = getattr(os, "O_DIRECTORY", 0)
#: Errors that mean the disk (or quota) is full: never worth a fallback.
NO_ROOM = frozenset({errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)})
#: How much ``lower_priority`` lowers it where ``nice`` exists.
NICENESS = 10
#: ``link`` refused because this filesystem (FAT, exFAT, SMB...) or mount makes no hard
#: link here: EOPNOTSUPP and ENOTSUP (distinct on macOS), EPERM (Linux on FAT), EMLINK,
#: EXDEV, ENOSYS; on Windows ERROR_INVALID_FUNCTION, ERROR_NOT_SAME_DEVICE,
#: ERROR_NOT_SUPPORTED and ERROR_TOO_MANY_LINKS.
LINK_UNSUPPORTED_ERRNOS = frozenset(
    {errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EMLINK, errno.EXDEV, errno.ENOSYS}
)
LINK_UNSUPPORTED_WINERRORS = frozenset({1, 17, 50, 1142})


def link_unsupported(exc: OSError) -> bool:
    """Whether ``exc`` from ``os.link`` means no hard link can be made there."""
    winerror = getattr(exc, "winerror", None)
    if winerror is not None:
        return winerror in LINK_UNSUPPORTED_WINERRORS
    return exc.errno in LINK_UNSUPPORTED_ERRNOS


def link_or_unsupported(source: str | os.PathLike[str], target: str | os.PathLike[str]) -> bool:
    """``os.link``; False where the filesystem makes no hard link there (other errors,
    ``FileExistsError`` among them, raise)."""
    try:
        os.link(source, target)
    except FileExistsError:
        raise
    except OSError as exc:
        if link_unsupported(exc):
            return False
        raise
    return True


class DirectIOUnsupported(Exception):
    """The filesystem refused direct I/O: use ordinary reads and writes."""


@contextlib.contextmanager
def refusal_is_unsupported() -> Iterator[None]:
    """``EINVAL`` from an open, read or write with direct I/O: the filesystem refuses it."""
    try:
        yield
    except OSError as exc:
        if exc.errno == errno.EINVAL:
            raise DirectIOUnsupported(str(exc)) from exc
        raise


@dataclass(frozen=True)
class Folders:
    """Where the app keeps its configuration, cache and data by default."""

    config: Path
    cache: Path
    data: Path


def default_folders(system: str, environ: Mapping[str, str], home: str, app: str) -> Folders:
    """The user folders of ``app`` on ``system`` ("linux", "darwin" or "win32").

    Linux and other Unixes follow the XDG base directories (relative values are
    ignored, as the specification says); macOS uses ``~/Library``; Windows
    keeps configuration in the roaming ``%APPDATA%`` and the rest in
    ``%LOCALAPPDATA%``. Linux and macOS give what ``platformdirs`` gave before.
    """
    if system == "win32":
        roaming = environ.get("APPDATA") or ntpath.join(home, "AppData", "Roaming")
        local = environ.get("LOCALAPPDATA") or ntpath.join(home, "AppData", "Local")
        return Folders(
            config=Path(ntpath.join(roaming, app)),
            cache=Path(ntpath.join(local, app, "Cache")),
            data=Path(ntpath.join(local, app)),
        )
    if system == "darwin":
        support = posixpath.join(home, "Library", "Application Support", app)
        return Folders(
            config=Path(support),
            cache=Path(posixpath.join(home, "Library", "Caches", app)),
            data=Path(support),
        )

    def xdg(variable: str, *fallback: str) -> str:
        value = environ.get(variable, "")
        base = value if posixpath.isabs(value) else posixpath.join(home, *fallback)
        return posixpath.join(base, app)

    return Folders(
        config=Path(xdg("XDG_CONFIG_HOME", ".config")),
        cache=Path(xdg("XDG_CACHE_HOME", ".cache")),
        data=Path(xdg("XDG_DATA_HOME", ".local", "share")),
    )


@dataclass(frozen=True)
class DataCandidate:
    """A place the Pieces OS data folder may be, and which one (``where``, for messages)."""

    path: Path
    where: str


#: The last two names of every Pieces OS data folder, whatever the system.
PIECES_FOLDER_TAIL = ("com.pieces.os", "production")


def pieces_data_candidates(
    system: str, environ: Mapping[str, str], home: str
) -> tuple[DataCandidate, ...]:
    """Where Pieces OS keeps its data folder on ``system`` ("linux", "darwin", "win32"),
    most likely first: pure path logic from ``home`` and ``environ``.

    macOS ``~/Library``; Windows ``~/Documents``, then the installer's folder under
    ``%LOCALAPPDATA%``; Linux and other Unixes ``$XDG_DATA_HOME`` when it is set (and
    absolute, as the XDG specification says), then ``~/.local/share``.
    """
    tail = PIECES_FOLDER_TAIL
    if system == "win32":
        local = environ.get("LOCALAPPDATA") or ntpath.join(home, "AppData", "Local")
        installed = ntpath.join(local, "Mesh Intelligent Technologies, Inc", "Pieces OS", *tail)
        return (
            DataCandidate(Path(ntpath.join(home, "Documents", *tail)), "the Windows location"),
            DataCandidate(Path(installed), "the Windows %LOCALAPPDATA% location"),
        )
    if system == "darwin":
        path = posixpath.join(home, "Library", *tail)
        return (DataCandidate(Path(path), "the macOS location"),)
    default = posixpath.join(home, ".local", "share", *tail)
    xdg = environ.get("XDG_DATA_HOME", "")
    found: list[DataCandidate] = []
    if posixpath.isabs(xdg) and posixpath.normpath(posixpath.join(xdg, *tail)) != default:
        found.append(DataCandidate(Path(xdg, *tail), "the Linux location in $XDG_DATA_HOME"))
    found.append(DataCandidate(Path(default), "the Linux location"))
    return tuple(found)


def is_pieces_data_path(text: str) -> bool:
    """Whether ``text`` (a path recorded on any system, ``/`` or ``\\`` separated) names
    a Pieces OS data folder: it ends in ``com.pieces.os/production`` (any case)."""
    names = [name for name in text.replace("\\", "/").split("/") if name]
    return tuple(name.casefold() for name in names[-2:]) == PIECES_FOLDER_TAIL


def os_label(system: str) -> str:
    """The operating system as a backup records it: LINUX, MACOS, WINDOWS or UNKNOWN."""
    if system.startswith("linux"):
        return "LINUX"
    if system == "darwin":
        return "MACOS"
    if system in ("win32", "cygwin"):
        return "WINDOWS"
    return "UNKNOWN"


# -- positional I/O from seek + read/write ----------------------------------------

_guard = threading.Lock()
_fd_locks: dict[int, threading.Lock] = {}


def _lock_for(fd: int) -> threading.Lock:
    """One lock per descriptor number: a seek and the read or write after it are one step.

    Every positional call of the fallback on a descriptor takes its lock, so
    threads sharing a descriptor never move its offset under each other. (A
    number reused after a close shares the old lock, which is harmless.)
    """
    with _guard:
        lock = _fd_locks.get(fd)
        if lock is None:
            lock = _fd_locks[fd] = threading.Lock()
        return lock


def seek_pread(fd: int, length: int, offset: int) -> bytes:
    with _lock_for(fd):
        os.lseek(fd, offset, os.SEEK_SET)
        return os.read(fd, length)


def seek_preadv(fd: int, buffers: Sequence[memoryview], offset: int) -> int:
    with _lock_for(fd):
        os.lseek(fd, offset, os.SEEK_SET)
        reader = io.FileIO(fd, "r", closefd=False)
        total = 0
        for buffer in buffers:
            got = reader.readinto(buffer) or 0
            total += got
            if got < len(buffer):
                break
        return total


def seek_pwritev(fd: int, buffers: Sequence[bytes | memoryview], offset: int) -> int:
    with _lock_for(fd):
        os.lseek(fd, offset, os.SEEK_SET)
        return sequential_writev(fd, buffers)


def sequential_writev(fd: int, buffers: Sequence[bytes | memoryview]) -> int:
    """``writev`` as one ``write`` per buffer; stops at the first short write."""
    total = 0
    for buffer in buffers:
        done = os.write(fd, buffer)
        total += done
        if done < len(buffer):
            break
    return total


def buffer_address(view: memoryview) -> int:
    """The address of a writable buffer's first byte (to tell views of one buffer apart)."""
    return ctypes.addressof(ctypes.c_char.from_buffer(view))
