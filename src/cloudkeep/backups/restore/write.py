"""The local side of a restore: the staging tree, restored files and how bytes reach them.

Every OS-specific call goes through ``cloudkeep.platform``: folders reached without
following symlinks (``Folder``), direct writers, ``pwritev``, preallocation,
early writeback, and the reads of live files a restore reuses chunks from.
"""

from __future__ import annotations

import errno
import os
import posixpath
import stat
from collections.abc import Collection, Iterable
from concurrent.futures import Executor
from pathlib import Path
from typing import NamedTuple

from cloudkeep import platform
from cloudkeep.backups.manifest import FileEntry
from cloudkeep.direct_io import (
    ALIGNMENT,
    DIRECT_MIN_BYTES,
    DirectIOUnsupported,
    aligned_buffer,
    fill,
    pwrite_direct,
)
from cloudkeep.errors import RepositoryDamaged, UnsafeBackup, UserError
from cloudkeep.platform import Folder

# Shorter runs are written buffered: each direct write waits for the device and then
# converts its fallocated (unwritten) blocks, splitting the file's extents; runs this
# long or longer gain more than that costs.
DIRECT_MIN_RUN_BYTES = 1024 * 1024
DIRECT_WINDOW_BYTES = 4 * 1024 * 1024  # per fetch thread: runs are written in windows
_IOV_MAX = 1024
_NO_ROOM = platform.NO_ROOM | {errno.EFBIG}  # EFBIG: past the file size limit (ulimit -f)
_CREATE_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL


class Piece(NamedTuple):
    """Bytes to write into a file of the batch (by number) at an offset."""

    file: int
    offset: int
    data: bytes | memoryview


def out_of_room(exc: OSError) -> bool:
    """Whether a failed write or allocation means the disk (or quota) is full."""
    return exc.errno in _NO_ROOM


def link_to_folder(path: str, target: str, folders: Collection[str]) -> bool:
    """Whether the symlink ``path`` → ``target`` points to one of the backup's ``folders``
    (paths relative to its root). A target outside the backup, or absolute, is not known:
    False (on Windows such a link to a folder is made as a file link)."""
    target = target.replace("\\", "/")
    if not target or target.startswith("/") or ":" in target:
        return False
    resolved = posixpath.normpath(posixpath.join(posixpath.dirname(path), target))
    return resolved == "." or resolved in folders  # "." is the backup's root


def _check_name(name: str, path: str) -> None:
    """Refuse ``name`` (a segment of the entry ``path``) where this system would not take
    it as one plain entry (a drive, stream or device on Windows), as an unsafe backup."""
    reason = platform.unsafe_name(name, platform.WINDOWS_NAMES)
    if reason is not None:
        raise UnsafeBackup(f"cannot restore {path!r} on this system: {name!r} is {reason}")


class Tree:
    """The staging folder, reached only through ``platform.Folder``s, never through a symlink.

    Each folder on an entry's way is entered from its parent (created first if
    missing) without following a symlink, and the entry itself is made by name
    in its folder: files with ``O_EXCL``, never through a symlink. A symlink (or
    file) where a folder is expected stops the restore, so even a manifest that
    got past validation cannot reach outside. Only the main thread uses it.
    """

    MAX_OPEN = 256  # folders kept open; more are reopened from the root

    def __init__(self, root: Path) -> None:
        self.root = platform.open_folder(root)
        self._folders: dict[str, Folder] = {}
        self.implicit: set[str] = set()  # folders made for entries whose folder is not listed
        #: Symlinks this system would not let the restore make (see ``platform.make_symlink``).
        self.warnings: list[str] = []

    def close(self) -> None:
        for folder in self._folders.values():
            folder.close()
        self._folders.clear()
        self.root.close()

    def folder(self, relative: str) -> Folder:
        """The staging folder ``relative`` ("" is the root); valid until the next call."""
        if not relative:
            return self.root
        folder = self._folders.get(relative)
        if folder is not None:
            return folder
        parent_path, _, name = relative.rpartition("/")
        parent = self.folder(parent_path)
        _check_name(name, relative)
        try:
            parent.mkdir(name, 0o700)
            self.implicit.add(relative)
        except FileExistsError:
            pass
        try:
            folder = parent.child(name)
        except OSError as exc:
            raise RepositoryDamaged(
                f"cannot restore into {relative!r}: it is not a folder ({exc.strerror})"
            ) from exc
        if len(self._folders) >= self.MAX_OPEN:
            for cached in self._folders.values():
                cached.close()
            self._folders.clear()
        self._folders[relative] = folder
        return folder

    def split(self, path: str) -> tuple[Folder, str]:
        """(the folder holding ``path``, its last name)."""
        for segment in path.split("/"):
            _check_name(segment, path)
        parent, _, name = path.rpartition("/")
        return self.folder(parent), name

    def mkdir(self, path: str) -> None:
        folder, name = self.split(path)
        try:
            folder.mkdir(name, 0o700)
        except FileExistsError:
            if not stat.S_ISDIR(folder.lstat(name).st_mode):
                raise RepositoryDamaged(f"cannot restore the folder {path!r}: taken") from None
        self.implicit.discard(path)

    def symlink(self, path: str, target: str, target_is_directory: bool = False) -> None:
        """Make the symlink ``path``; where the system refuses, a warning is kept instead.
        ``target_is_directory``: it points to a folder (see ``link_to_folder``)."""
        folder, name = self.split(path)
        warning = platform.make_symlink(folder, target, name, target_is_directory)
        if warning is not None:
            self.warnings.append(warning)

    def open(self, path: str, flags: int) -> int:
        folder, name = self.split(path)
        return folder.open(name, flags)

    def create_file(self, path: str) -> int:
        """A new file at ``path`` (``O_EXCL``: never an existing one), open for writing."""
        return self.open(path, _CREATE_FILE)

    def finish(self, entries: Iterable[FileEntry], umask: int, root_mode: int | None) -> None:
        """Set modes (less ``umask``) and times of ``entries`` in the order given, then put
        every folder on disk.

        Given deepest first, a folder's time is set after its content changed for good.
        """
        for entry in entries:
            mode = entry.mode & ~umask
            if entry.type == "dir":
                self.folder(entry.path).finish(mode, entry.mtime_ns)
            else:
                folder, name = self.split(entry.path)
                folder.finish_entry(name, mode, entry.mtime_ns)
        for path in self.implicit:
            self.folder(path).finish(None, None)
        self.root.finish(root_mode, None)


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
            direct = platform.reopen_direct(fd)  # the very file just created
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

    def sync(self, pool: Executor | None = None) -> None:
        """Put every file of the batch on disk, several at once in ``pool`` if given:
        concurrent fsyncs share the filesystem's journal commits."""
        if pool is None:
            for fd in self.buffered:
                os.fsync(fd)
            return
        for done in [pool.submit(os.fsync, fd) for fd in self.buffered]:
            done.result()

    def close(self) -> None:
        for fd in [*self.buffered, *self._direct_opened]:
            os.close(fd)


def reserve(fd: int, entry: FileEntry) -> None:
    """Allocate the file's blocks up front, as restic does.

    A full disk is reported before anything is fetched rather than halfway, and
    writes land in allocated blocks instead of growing a sparse file page by page.
    """
    try:
        platform.preallocate(fd, entry.size)
    except OSError as exc:
        if out_of_room(exc):
            raise UserError(
                f"not enough space to restore {entry.path} ({entry.size:,} bytes): {exc.strerror}"
            ) from exc
        raise


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
        platform.start_writeback(files.buffered[number], low, high - low)
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
        platform.pwritev_all(files.buffered[number], pieces, start)
        return
    direct: int | None = files.direct[number]
    first_block, last_block = blocks
    buffer = aligned_buffer(min(last_block - first_block, DIRECT_WINDOW_BYTES))
    try:
        source = _Concatenation(pieces)
        if first_block > start:
            platform.pwritev_all(files.buffered[number], source.take(first_block - start), start)
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
            platform.pwritev_all(files.buffered[number], [buffer[:size]], position)
            position += size
        if end > last_block:
            platform.pwritev_all(files.buffered[number], source.take(end - last_block), last_block)
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
        platform.pwritev_all(fd, [view[start - base : first_block - base]], start)
    if last_block < end:
        platform.pwritev_all(fd, [view[last_block - base : end - base]], last_block)
    platform.start_writeback(fd, start, end - start)
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


def read_live(path: Path, view: memoryview, offset: int) -> int:
    """Read a span of a live file into ``view``; the bytes read (0 if it cannot be read).

    Only a regular file is read (not a FIFO or device swapped in meanwhile), and
    a failing read just means its chunks are fetched instead.
    """
    try:
        fd = platform.open_nofollow(path, os.O_RDONLY | platform.O_NONBLOCK)
    except OSError:
        return 0
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return 0
        return platform.read_into(fd, view, offset)
    except OSError:
        return 0
    finally:
        os.close(fd)


def create_with_mode(path: Path, mode: int) -> None:
    """Create the empty file ``path`` (never an existing one or through a symlink) with
    exactly ``mode``, whatever the umask."""
    fd = platform.open_nofollow(path, _CREATE_FILE, 0o600)
    try:
        platform.set_mode(fd, path, mode)
    finally:
        os.close(fd)
