"""The local side of a restore: the staging tree, restored files and how bytes reach them.

Every OS-specific call a restore makes is here, behind small functions:
descriptor-relative opens (``O_DIRECTORY|O_NOFOLLOW``, ``dir_fd``), ``O_DIRECT``
writers, ``pwritev``, ``posix_fallocate``, ``sync_file_range`` (through
ctypes), ``fchmod``/``utime``/``fsync`` on descriptors, the umask, and the
reads of live files a restore reuses chunks from.
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import NamedTuple

from cloudkeep.direct_io import (
    ALIGNMENT,
    DIRECT_MIN_BYTES,
    DirectIOUnsupported,
    aligned_buffer,
    fill,
    open_direct_writer,
    pwrite_direct,
)
from cloudkeep.errors import RepositoryDamaged, UserError
from cloudkeep.snapshot.manifest import FileEntry
from cloudkeep.snapshot.sqlite_capture import read_into

# Shorter runs are written buffered: each direct write waits for the device and then
# converts its fallocated (unwritten) blocks, splitting the file's extents; runs this
# long or longer gain more than that costs.
DIRECT_MIN_RUN_BYTES = 1024 * 1024
DIRECT_WINDOW_BYTES = 4 * 1024 * 1024  # per fetch thread: runs are written in windows
_IOV_MAX = 1024
_NO_ROOM = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
_OPEN_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_CREATE_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_READ_LIVE = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


class Piece(NamedTuple):
    """Bytes to write into a file of the batch (by number) at an offset."""

    file: int
    offset: int
    data: bytes | memoryview


def out_of_room(exc: OSError) -> bool:
    """Whether a failed write or allocation means the disk (or quota) is full."""
    return exc.errno in _NO_ROOM


class Tree:
    """The staging folder, reached only through folder descriptors, never through a symlink.

    Each folder on an entry's way is opened with ``O_DIRECTORY|O_NOFOLLOW`` from
    its parent's descriptor (created first if missing), and the entry itself is
    made by name in its folder: ``mkdir``/``symlink`` at a descriptor, files with
    ``O_EXCL|O_NOFOLLOW``. A symlink (or file) where a folder is expected stops
    the restore, so even a manifest that got past validation cannot reach outside.
    Only the main thread uses it.
    """

    MAX_OPEN = 256  # folder descriptors kept open; more are reopened from the root

    def __init__(self, root: Path) -> None:
        self.root = os.open(root, _OPEN_DIR)
        self._folders: dict[str, int] = {}
        self.implicit: set[str] = set()  # folders made for entries whose folder is not listed

    def close(self) -> None:
        for fd in self._folders.values():
            os.close(fd)
        self._folders.clear()
        os.close(self.root)

    def folder(self, relative: str) -> int:
        """A descriptor of the staging folder ``relative`` ("" is the root); valid until the
        next call."""
        if not relative:
            return self.root
        fd = self._folders.get(relative)
        if fd is not None:
            return fd
        parent, _, name = relative.rpartition("/")
        parent_fd = self.folder(parent)
        try:
            os.mkdir(name, 0o700, dir_fd=parent_fd)
            self.implicit.add(relative)
        except FileExistsError:
            pass
        try:
            fd = os.open(name, _OPEN_DIR, dir_fd=parent_fd)
        except OSError as exc:
            raise RepositoryDamaged(
                f"cannot restore into {relative!r}: it is not a folder ({exc.strerror})"
            ) from exc
        if len(self._folders) >= self.MAX_OPEN:
            for cached in self._folders.values():
                os.close(cached)
            self._folders.clear()
        self._folders[relative] = fd
        return fd

    def split(self, path: str) -> tuple[int, str]:
        """(descriptor of the folder holding ``path``, its last name)."""
        parent, _, name = path.rpartition("/")
        return self.folder(parent), name

    def mkdir(self, path: str) -> None:
        fd, name = self.split(path)
        try:
            os.mkdir(name, 0o700, dir_fd=fd)
        except FileExistsError:
            if not stat.S_ISDIR(os.stat(name, dir_fd=fd, follow_symlinks=False).st_mode):
                raise RepositoryDamaged(f"cannot restore the folder {path!r}: taken") from None
        self.implicit.discard(path)

    def symlink(self, path: str, target: str) -> None:
        fd, name = self.split(path)
        os.symlink(target, name, dir_fd=fd)

    def open(self, path: str, flags: int) -> int:
        fd, name = self.split(path)
        return os.open(name, flags | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=fd)

    def create_file(self, path: str) -> int:
        """A new file at ``path`` (``O_EXCL``: never an existing one), open for writing."""
        return self.open(path, _CREATE_FILE)

    def finish(self, entries: Iterable[FileEntry], umask: int, root_mode: int | None) -> None:
        """Set modes (less ``umask``) and times of ``entries`` in the order given, then put
        every folder on disk.

        Given deepest first, a folder's time is set after its content changed for good.
        """
        for entry in entries:
            is_dir = entry.type == "dir"
            fd = self.open(entry.path, os.O_RDONLY | (os.O_DIRECTORY if is_dir else 0))
            try:
                os.fchmod(fd, entry.mode & ~umask)
                os.utime(fd, ns=(entry.mtime_ns, entry.mtime_ns))
                if is_dir:
                    os.fsync(fd)
            finally:
                os.close(fd)
        for path in self.implicit:
            fd = self.open(path, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        if root_mode is not None:
            os.fchmod(self.root, root_mode)
        os.fsync(self.root)


class Files:
    """The descriptors of one batch of restored files: buffered, and direct where possible.

    Long runs are written with ``O_DIRECT`` (see ``cloudkeep.direct_io``): a
    restored file is written once and read later by its app, and copying it
    into freshly allocated page-cache pages, then writing those back for the
    fsync, was a large share of a restore's CPU. Bytes at either end of a run
    that do not fill a whole block go through the buffered descriptor; the
    fsync of that descriptor covers both.
    """

    def __init__(self) -> None:
        self.buffered: list[int] = []
        self.direct: list[int | None] = []
        self.direct_ok = True
        self._direct_opened: list[int] = []

    def open(self, tree: Tree, path: str, size: int) -> int:
        """Create the batch's next file (numbered in the order opened); its buffered
        descriptor."""
        fd = tree.create_file(path)
        self.buffered.append(fd)
        self.direct.append(None)
        if self.direct_ok and size >= DIRECT_MIN_BYTES:
            try:  # the very file just created, whatever its path has become
                direct = open_direct_writer(f"/proc/self/fd/{fd}")
            except OSError:  # e.g. out of descriptors: direct writing is only a speed-up
                direct = None
            if direct is None:
                self.direct_ok = False
            else:
                self.direct[-1] = direct
                self._direct_opened.append(direct)
        return fd

    def drop_direct(self, number: int) -> None:
        """Stop writing a file directly (the filesystem refused after all), and any other.

        The descriptor stays open until ``close``: another thread may be using it.
        """
        self.direct[number] = None
        self.direct_ok = False

    def sync(self) -> None:
        """Put every file of the batch on disk."""
        for fd in self.buffered:
            os.fsync(fd)

    def close(self) -> None:
        for fd in [*self.buffered, *self._direct_opened]:
            os.close(fd)


def reserve(fd: int, entry: FileEntry) -> None:
    """Allocate the file's blocks up front, as restic does.

    A full disk is reported before anything is fetched rather than halfway, and
    writes land in allocated blocks instead of growing a sparse file page by page.
    """
    if entry.size <= 0:
        return
    try:
        os.posix_fallocate(fd, 0, entry.size)
    except OSError as exc:
        if exc.errno in _NO_ROOM:
            raise UserError(
                f"not enough space to restore {entry.path} ({entry.size:,} bytes): {exc.strerror}"
            ) from exc
        os.ftruncate(fd, entry.size)  # no fallocate here (EOPNOTSUPP/EINVAL): a sparse file


def set_size(fd: int, size: int) -> None:
    os.ftruncate(fd, size)


def write_pieces(files: Files, pieces: list[Piece]) -> int:
    """Write pieces, merging adjacent ones into one run (one system call) each; the bytes
    written.

    One system call per run instead of per chunk: each call releases and retakes
    the GIL, and thousands of those stall the other threads (convoy effect).
    Fetch threads write concurrently: a lock letting one thread write buffered at
    a time only queued the short runs once the long ones went direct.
    """
    pieces.sort(key=lambda piece: (piece[0], piece[1]))
    total = 0
    run: list[bytes | memoryview] = []
    run_file, run_start, run_end = -1, 0, 0
    dirty: dict[int, list[int]] = {}
    for number, offset, data in pieces:
        if run and (number != run_file or offset != run_end or len(run) >= _IOV_MAX):
            _write_run(files, run_file, run, run_start, run_end, dirty)
            run = []
        if not run:
            run_file, run_start, run_end = number, offset, offset
        run.append(data)
        run_end += len(data)
        total += len(data)
    if run:
        _write_run(files, run_file, run, run_start, run_end, dirty)
    for number, (low, high) in dirty.items():
        _start_writeback(files.buffered[number], low, high - low)
    return total


def _write_run(
    files: Files,
    number: int,
    pieces: list[bytes | memoryview],
    start: int,
    end: int,
    dirty: dict[int, list[int]],
) -> None:
    """Write one run of adjacent pieces: its whole blocks directly if it is long enough.

    ``dirty`` collects, per file, the span written through the page cache: its
    writeback is started once per fetch job, not once per run.
    """
    span = dirty.get(number)
    if span is None:
        dirty[number] = [start, end]
    else:
        span[0], span[1] = min(span[0], start), max(span[1], end)
    blocks = _direct_blocks(files, number, start, end)
    if blocks is None:
        _pwritev_all(files.buffered[number], pieces, start)
        return
    direct: int | None = files.direct[number]
    first_block, last_block = blocks
    buffer = aligned_buffer(min(last_block - first_block, DIRECT_WINDOW_BYTES))
    try:
        source = _Concatenation(pieces)
        if first_block > start:
            _pwritev_all(files.buffered[number], source.take(first_block - start), start)
        position = first_block
        while position < last_block:
            size = min(len(buffer), last_block - position)
            source.copy_into(buffer[:size])
            if direct is not None:
                try:
                    pwrite_direct(direct, buffer[:size], position)
                    position += size
                    continue
                except DirectIOUnsupported:  # refused after all: this file goes buffered
                    files.drop_direct(number)
                    direct = None
            _pwritev_all(files.buffered[number], [buffer[:size]], position)
            position += size
        if end > last_block:
            _pwritev_all(files.buffered[number], source.take(end - last_block), last_block)
    finally:
        buffer.release()


def _direct_blocks(files: Files, number: int, start: int, end: int) -> tuple[int, int] | None:
    """The whole blocks of bytes ``start:end`` of a file, if they are to be written directly."""
    first_block = -(-start // ALIGNMENT) * ALIGNMENT
    last_block = end - end % ALIGNMENT
    if files.direct[number] is None or last_block - first_block < DIRECT_MIN_RUN_BYTES:
        return None
    return first_block, last_block


def write_in_place(
    files: Files, number: int, view: memoryview, base: int, start: int, end: int
) -> bool:
    """Write bytes ``start:end`` of a file from ``view`` (aligned, holding the file from
    ``base``), its whole blocks directly; False if they are too few to go direct."""
    blocks = _direct_blocks(files, number, start, end)
    direct = files.direct[number]
    if blocks is None or direct is None:
        return False
    first_block, last_block = blocks
    try:
        pwrite_direct(direct, view[first_block - base : last_block - base], first_block)
    except DirectIOUnsupported:  # refused after all: this file goes buffered
        files.drop_direct(number)
        return False
    fd = files.buffered[number]
    if start < first_block:
        _pwritev_all(fd, [view[start - base : first_block - base]], start)
    if last_block < end:
        _pwritev_all(fd, [view[last_block - base : end - base]], last_block)
    _start_writeback(fd, start, end - start)
    return True


class _Concatenation:
    """Reads consecutive bytes out of a list of pieces, as if they were joined."""

    def __init__(self, pieces: list[bytes | memoryview]) -> None:
        self._pieces = [memoryview(piece) for piece in pieces]
        self._number = 0
        self._offset = 0

    def take(self, size: int) -> list[memoryview]:
        """The next ``size`` bytes, as views of the pieces."""
        taken: list[memoryview] = []
        while size:
            piece = self._pieces[self._number]
            part = piece[self._offset : self._offset + size]
            taken.append(part)
            size -= len(part)
            self._offset += len(part)
            if self._offset == len(piece):
                self._number, self._offset = self._number + 1, 0
        return taken

    def copy_into(self, target: memoryview) -> None:
        fill(target, self.take(len(target)))


def _pwritev_all(fd: int, buffers: Sequence[bytes | memoryview], offset: int) -> None:
    expected = sum(len(b) for b in buffers)
    written = os.pwritev(fd, buffers, offset)
    if written != expected:  # short write (rare): finish the rest piece by piece
        joined = b"".join(bytes(b) for b in buffers)[written:]
        while joined:
            done = os.pwrite(fd, joined, offset + written)
            written += done
            joined = joined[done:]


def _load_sync_file_range() -> Callable[[int, int, int, int], int] | None:
    try:
        function = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):  # not Linux: fsync at the end does all the work
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function  # type: ignore[no-any-return]


_sync_file_range = _load_sync_file_range()
_SYNC_FILE_RANGE_WRITE = 2


def _start_writeback(fd: int, offset: int, length: int) -> None:
    """Start writing a just-written range to disk now (asynchronously, GIL released).

    The fsync before the swap then finds little left to flush instead of
    writing the whole database in one stall at the end.
    """
    if _sync_file_range is not None:
        _sync_file_range(fd, offset, length, _SYNC_FILE_RANGE_WRITE)


def read_live(path: Path, view: memoryview, offset: int) -> int:
    """Read a span of a live file into ``view``; the bytes read (0 if it cannot be read).

    Only a regular file is read (not a FIFO or device swapped in meanwhile), and
    a failing read just means its chunks are fetched instead.
    """
    try:
        fd = os.open(path, _READ_LIVE)
    except OSError:
        return 0
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return 0
        return read_into(fd, view, offset)
    except OSError:
        return 0
    finally:
        os.close(fd)


def create_with_mode(path: Path, mode: int) -> None:
    """Create the empty file ``path`` (never an existing one or through a symlink) with
    exactly ``mode``, whatever the umask."""
    fd = os.open(path, _CREATE_FILE, 0o600)
    try:
        os.fchmod(fd, mode)
    finally:
        os.close(fd)


def process_umask() -> int:
    """The process's umask, read without loosening it even for a moment.

    Linux tells it in /proc; elsewhere it is swapped for the strictest mask while
    read, so a file another thread creates meanwhile is never looser than asked.
    """
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
