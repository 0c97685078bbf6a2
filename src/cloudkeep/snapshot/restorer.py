"""Restoring a backup: fetch byte ranges of packs, verify every blob, swap atomically.

Files are written into a staging folder beside the destination (same filesystem),
every blob authenticated and re-hashed against its keyed id, fsynced, and only
then swapped in (see ``swap``); what the swap replaces is kept as the undo copy.
Every entry is created relative to a descriptor of its folder without following
symlinks (``_Tree``), so no manifest can make a restore write outside its
staging folder. A single-file SQLite source is restored into the live database
through SQLite's backup API, one transaction that a running app sees as an
ordinary commit.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import re
import shutil
import sqlite3
import stat
import threading
import uuid
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from cloudkeep.direct_io import (
    ALIGNMENT,
    DIRECT_MIN_BYTES,
    DirectIOUnsupported,
    aligned_buffer,
    aligned_read_buffer,
    fill,
    open_direct_writer,
    pwrite_direct,
)
from cloudkeep.errors import CloudkeepError, RepositoryDamaged, UserError
from cloudkeep.repository.index import FrameBlobs
from cloudkeep.repository.locks import RepositoryLock, pid_alive
from cloudkeep.repository.packs import pack_name
from cloudkeep.repository.repository import BlobDamaged, FrameDamaged, OpenedFrame, Repository
from cloudkeep.snapshot.gc_pause import gc_paused
from cloudkeep.snapshot.manifest import FileEntry, Manifest, decode_chunk_list
from cloudkeep.snapshot.progress import ProgressFn, Tracker
from cloudkeep.snapshot.sources import is_sqlite
from cloudkeep.snapshot.sqlite_capture import BUSY_TIMEOUT_SECONDS, read_into
from cloudkeep.snapshot.swap import (
    fsync_dir,
    recover,
    remove_any,
    replace_atomically,
    swap_back,
    undo_path,
)
from cloudkeep.storage.base import ObjectNotFound, StorageError, StorageUnavailable

MAX_RANGE_BYTES = 2 * 1024 * 1024  # 2 GiB restore: 179 MiB peak RSS (4 MiB ranges: 215)
MAX_RANGE_GAP = 512 * 1024
FILES_PER_BATCH = 256
CHUNKS_PER_BATCH = 16_384  # 128 MiB of 8 KiB pages per plan; two plans live at once
# Plans start small and double: fetching starts after one chunk list is read, and
# each plan is made while the previous (half as big) one is being fetched.
FIRST_BATCH_CHUNKS = 4_096
FETCH_THREADS = 4
# Shorter runs are written buffered: each direct write waits for the device and then
# converts its fallocated (unwritten) blocks, splitting the file's extents. Restoring a backup
# taken after the 1% update (runs broken every ~400 KiB), three rounds: buffered
# 1.18-1.26 s, 1 MiB 1.30-1.41 s, 256 KiB 1.51-1.79 s; the first backup (long runs):
# buffered 1.56-1.82 s, 1 MiB 1.11-1.36 s, 256 KiB 1.11-1.39 s.
DIRECT_MIN_RUN_BYTES = 1024 * 1024
DIRECT_WINDOW_BYTES = 4 * 1024 * 1024  # per fetch thread: runs are written in windows
LOCK_TIMEOUT_SECONDS = 600.0
# Local data is compared with the backup in spans of this size, by these threads.
# Restoring the 600 MiB bench folder from its live copy (6 rounds): 2 threads and 4 MiB
# spans 1.13-1.32 s, 4 threads 0.99-1.22 s; 4 threads and 8 MiB spans 0.90-1.14 s.
REUSE_SPAN_BYTES = 8 * 1024 * 1024
REUSE_THREADS = 4
_IOV_MAX = 1024
_NO_ROOM = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
_Wanted = tuple[bytes, int, int]  # blob id, offset in its frame, length
_Place = tuple[int, int, bytes]  # offset in its file, length, blob id
_STAGING = re.compile(
    r"^\.(?P<name>.+)\.cloudkeep-restore-(?P<pid>\d+)-[0-9a-f]+(-journal|-wal|-shm)?$"
)


def clean_stale_staging(destination: Path) -> None:
    """Remove staging folders of restores that were killed before their swap."""
    recover(destination)
    parent = destination.parent
    if not parent.is_dir():
        return
    for path in parent.iterdir():
        match = _STAGING.match(path.name)
        if match and match["name"] == destination.name and not pid_alive(int(match["pid"])):
            remove_any(path)


_OPEN_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_CREATE_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


class _Tree:
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


class _Files:
    """The descriptors of one batch of restored files: buffered, and direct where possible.

    Long runs are written with ``O_DIRECT`` (see ``cloudkeep.direct_io``): a
    restored file is written once and read later by its app, so copying it into
    freshly allocated page-cache pages and writing those back for the fsync was
    a quarter of a restore's CPU (600 MiB: 23% of samples under perf). Bytes
    at either end of a run that do not fill a whole block go through the
    buffered descriptor; the fsync of that descriptor covers both.
    """

    def __init__(self) -> None:
        self.buffered: list[int] = []
        self.direct: list[int | None] = []
        self.direct_ok = True
        self._direct_opened: list[int] = []

    def open(self, tree: _Tree, path: str, size: int) -> int:
        fd = tree.open(path, _CREATE_FILE)
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

    def close(self) -> None:
        for fd in [*self.buffered, *self._direct_opened]:
            os.close(fd)


def _write_runs(
    files: _Files,
    writes: list[tuple[int, int, bytes | memoryview]],
) -> int:
    """Write pieces, merging adjacent ones into one run (one system call) each.

    One system call per run instead of per chunk: each call releases and retakes
    the GIL, and thousands of those stall the other threads (convoy effect).
    Fetch threads write concurrently. A lock that let one thread write buffered
    at a time paid off while every write went through the page cache; with long
    runs written directly it only queued the short ones (restores of the backup
    taken after the 1% update, paired: 2 GiB 5.1-6.1 s without it, 6.4-6.9 s with
    it; 600 MiB median 1.40 s against 1.52 s; the first backup's restore the same).
    """
    writes.sort(key=lambda write: (write[0], write[1]))
    total = 0
    run: list[bytes | memoryview] = []
    run_file, run_start, run_end = -1, 0, 0
    dirty: dict[int, list[int]] = {}
    for number, offset, data in writes:
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
    files: _Files,
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


def _direct_blocks(files: _Files, number: int, start: int, end: int) -> tuple[int, int] | None:
    """The whole blocks of bytes ``start:end`` of a file, if they are to be written directly."""
    first_block = -(-start // ALIGNMENT) * ALIGNMENT
    last_block = end - end % ALIGNMENT
    if files.direct[number] is None or last_block - first_block < DIRECT_MIN_RUN_BYTES:
        return None
    return first_block, last_block


def _write_in_place(
    files: _Files, number: int, view: memoryview, base: int, start: int, end: int
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


def _pwritev_all(fd: int, buffers: list[bytes | memoryview], offset: int) -> None:
    expected = sum(len(b) for b in buffers)
    written = os.pwritev(fd, buffers, offset)
    if written != expected:  # short write (rare): finish the rest piece by piece
        joined = b"".join(bytes(b) for b in buffers)[written:]
        while joined:
            done = os.pwrite(fd, joined, offset + written)
            written += done
            joined = joined[done:]


def _reserve(fd: int, entry: FileEntry) -> None:
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


def _read_local(path: Path, view: memoryview, offset: int) -> int:
    """Read a span of a live file into ``view``; the bytes read (0 if it cannot be read).

    Only a regular file is read (not a FIFO or device swapped in meanwhile), and
    a failing read just means its chunks are fetched instead.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
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


class Restorer:
    """Restores a backup; chunks the local data already holds are not fetched.

    ``reuse_local``: a restore usually replaces data that differs from the backup
    in a few pages (a bad update, a day of use). Each chunk is first looked for at
    its place in the live copy and used if its keyed BLAKE3 id matches the one
    the backup recorded, so only the chunks that differ are downloaded,
    decrypted and decompressed: the same check a fetched chunk passes, and no
    bytes the backup does not vouch for. ``reused_bytes`` and ``fetched_bytes``
    say how the last restore was served.
    """

    def __init__(
        self,
        repo: Repository,
        progress: ProgressFn | None = None,
        cancel: threading.Event | None = None,
        reuse_local: bool = True,
    ) -> None:
        self.repo = repo
        self.progress = progress
        self.cancel = cancel
        self.reuse_local = reuse_local
        self.reused_bytes = 0
        self.fetched_bytes = 0
        self._live: Path | None = None
        self._live_is_file = False

    def run(
        self,
        manifest: Manifest,
        live: Path,
        target: Path | None,
        before_swap: Callable[[], None] | None = None,
    ) -> Path:
        """Restore ``manifest``; returns the path now holding the restored data.

        In place (no ``target``), what the restore replaces is kept at
        ``undo_path(live)`` and the folder keeps its own mode; ``before_swap`` runs
        just before the swap (the check that no program holds the data open).
        A target folder gets the backed-up folder's mode when the backup has it.
        """
        if target is not None:
            if target.exists() and (not target.is_dir() or any(target.iterdir())):
                raise UserError(
                    f"the restore target {target} exists and is not empty; "
                    "choose a new or empty folder"
                )
            destination = target
        else:
            destination = live
        destination.parent.mkdir(parents=True, exist_ok=True)
        clean_stale_staging(destination)
        self._live = live if self.reuse_local else None
        self._live_is_file = manifest.kind == "file"
        self.reused_bytes = self.fetched_bytes = 0
        staging = destination.parent / (
            f".{destination.name}.cloudkeep-restore-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        )
        # A backup's modes are a key holder's word: the umask caps them, as tar does for
        # ordinary users, so no restore makes the user's files writable by others.
        umask = process_umask()
        root_mode = None if manifest.root_mode is None else manifest.root_mode & ~umask
        if target is None and live.is_dir():
            root_mode = stat.S_IMODE(live.stat().st_mode)  # the folder's own: kept as it is
        tracker = Tracker("restore", manifest.bytes, self.progress, self.cancel)
        tracker.advance(0)
        try:
            staging.mkdir()
            with (
                gc_paused(),
                RepositoryLock(self.repo, exclusive=False, purpose="restore").acquire(
                    LOCK_TIMEOUT_SECONDS
                ),
            ):
                self.repo.load_index()
                try:
                    self._materialize(manifest, staging, root_mode, umask, tracker)
                    self.fetched_bytes = (
                        sum(entry.size for entry in manifest.files if entry.type == "file")
                        - self.reused_bytes
                    )
                except OSError as exc:
                    if exc.errno not in _NO_ROOM:
                        raise
                    raise UserError(
                        f"no room left to restore into {staging.parent}: {exc.strerror}"
                    ) from exc
            tracker.check_canceled()
            if manifest.kind == "file" and target is None:
                replace_single_file(staging / manifest.files[0].path, live, undo_path(live))
                shutil.rmtree(staging, ignore_errors=True)
            else:
                if before_swap is not None and target is None:
                    before_swap()
                keep = undo_path(destination) if target is None else None
                replace_atomically(staging, destination, keep)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return destination

    # ------------------------------------------------------------------ writing
    def _materialize(
        self,
        manifest: Manifest,
        staging: Path,
        root_mode: int | None,
        umask: int,
        tracker: Tracker,
    ) -> None:
        tree = _Tree(staging)
        try:
            files: list[FileEntry] = []
            for entry in manifest.files:
                if entry.type == "dir":
                    tree.mkdir(entry.path)
                elif entry.type == "symlink":
                    tree.symlink(entry.path, entry.target)
                elif entry.type == "file":
                    files.append(entry)
            batch: list[FileEntry] = []
            for entry in files:
                batch.append(entry)
                if len(batch) >= FILES_PER_BATCH:
                    self._write_batch(batch, tree, tracker)
                    batch = []
            if batch:
                self._write_batch(batch, tree, tracker)
            self._finish_entries(manifest, tree, root_mode, umask)
        finally:
            tree.close()

    @staticmethod
    def _finish_entries(manifest: Manifest, tree: _Tree, root_mode: int | None, umask: int) -> None:
        """Modes (less ``umask``) and times (deepest first, so folder times stick), then
        folders to disk."""
        finishing = [entry for entry in manifest.files if entry.type in ("file", "dir")]
        finishing.sort(key=lambda entry: entry.path.count("/"), reverse=True)
        for entry in finishing:
            flags = os.O_RDONLY | (os.O_DIRECTORY if entry.type == "dir" else 0)
            fd = tree.open(entry.path, flags)
            try:
                os.fchmod(fd, entry.mode & ~umask)
                os.utime(fd, ns=(entry.mtime_ns, entry.mtime_ns))
                if entry.type == "dir":
                    os.fsync(fd)
            finally:
                os.close(fd)
        for path in tree.implicit:
            fd = tree.open(path, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        if root_mode is not None:
            os.fchmod(tree.root, root_mode)
        os.fsync(tree.root)

    def _chunk_list(self, entry: FileEntry, list_id: str) -> list[tuple[bytes, int]]:
        try:
            return decode_chunk_list(self.repo.read_blob(bytes.fromhex(list_id)))
        except (BlobDamaged, ValueError) as exc:
            raise RepositoryDamaged(f"cannot restore {entry.path}: {exc}") from exc

    def _write_batch(self, batch: list[FileEntry], tree: _Tree, tracker: Tracker) -> None:
        """Write a group of files, planning at most ``CHUNKS_PER_BATCH`` chunks at a time.

        The plan (blob → where it goes) covers one slice of the data at a time, so
        a database of any size is restored in bounded memory. The next slice is
        planned while the fetch threads work on the previous one. A slice's chunks
        are first looked for in the live copies of their files; only those not
        found there are fetched.
        """
        destinations: dict[bytes, list[tuple[int, int]]] = defaultdict(list)
        local: dict[int, tuple[Path, list[_Place]]] = {}  # per file: its live copy, places
        planned = 0
        files = _Files()
        in_flight: list[Future[None]] = []
        plan_limit = FIRST_BATCH_CHUNKS
        pool = ThreadPoolExecutor(FETCH_THREADS, thread_name_prefix="fetch")
        reuse_pool = ThreadPoolExecutor(REUSE_THREADS, thread_name_prefix="reuse")

        reusing: list[tuple[int, Future[tuple[list[_Place], int]]]] = []

        def hand_over() -> None:
            """Start on the slice just planned; fetch what the previous one did not find."""
            nonlocal in_flight, destinations, local, planned, reusing
            started_reuse = self._start_reuse(reuse_pool, local, files, tracker)
            self._missing_to_fetch(reusing, destinations)
            started = self._start_fetches(pool, destinations, files, tracker)
            for future in in_flight:  # at most two slices planned at once
                future.result()
            in_flight, reusing = started, started_reuse
            destinations, local, planned = defaultdict(list), {}, 0

        try:
            for number, entry in enumerate(batch):
                fd = files.open(tree, entry.path, entry.size)
                _reserve(fd, entry)
                source = self._local_copy(entry)
                offset = 0
                for list_id in entry.content:
                    chunks = self._chunk_list(entry, list_id)
                    if source is None:
                        for blob_id, size in chunks:
                            destinations[blob_id].append((number, offset))
                            offset += size
                    else:
                        places = local.setdefault(number, (source, []))[1]
                        for blob_id, size in chunks:
                            places.append((offset, size, blob_id))
                            offset += size
                    planned += len(chunks)
                    if planned >= plan_limit:
                        hand_over()
                        plan_limit = min(2 * plan_limit, CHUNKS_PER_BATCH)
                if offset != entry.size:
                    raise RepositoryDamaged(f"the chunk list of {entry.path} does not add up")
                os.ftruncate(fd, offset)
            if destinations or local:
                hand_over()
            if reusing:  # the last slice's chunks not found locally
                hand_over()
            for future in in_flight:
                future.result()
            for fd in files.buffered:
                os.fsync(fd)
        except BaseException:
            for future in [*in_flight, *(future for _, future in reusing)]:
                future.cancel()
            raise
        finally:
            reuse_pool.shutdown(wait=True, cancel_futures=True)
            pool.shutdown(wait=True, cancel_futures=True)
            files.close()

    # ----------------------------------------------------------- local reuse
    def _local_copy(self, entry: FileEntry) -> Path | None:
        """The live file that may hold some of ``entry``'s chunks, if it is a regular file."""
        if self._live is None:
            return None
        path = self._live if self._live_is_file else self._live / entry.path
        try:
            info = path.lstat()
        except OSError:
            return None
        return path if stat.S_ISREG(info.st_mode) and info.st_size > 0 else None

    def _start_reuse(
        self,
        pool: ThreadPoolExecutor,
        local: dict[int, tuple[Path, list[_Place]]],
        files: _Files,
        tracker: Tracker,
    ) -> list[tuple[int, Future[tuple[list[_Place], int]]]]:
        """Submit the jobs that write the chunks the live copies hold, a span each."""
        spans: list[tuple[int, Path, list[_Place]]] = []
        for number, (source, places) in local.items():
            first = 0
            for position, (offset, size, _) in enumerate(places):
                if offset + size - places[first][0] > REUSE_SPAN_BYTES and position > first:
                    spans.append((number, source, places[first:position]))
                    first = position
            spans.append((number, source, places[first:]))
        return [
            (number, pool.submit(self._reuse_span, files, number, source, span, tracker))
            for number, source, span in spans
        ]

    def _missing_to_fetch(
        self,
        reusing: list[tuple[int, Future[tuple[list[_Place], int]]]],
        destinations: dict[bytes, list[tuple[int, int]]],
    ) -> None:
        """Wait for reuse jobs; the chunks they did not find locally go to ``destinations``."""
        for number, future in reusing:
            missing, reused = future.result()
            self.reused_bytes += reused
            for offset, _, blob_id in missing:
                destinations[blob_id].append((number, offset))

    def _reuse_span(
        self,
        files: _Files,
        number: int,
        source: Path,
        places: list[_Place],
        tracker: Tracker,
    ) -> tuple[list[_Place], int]:
        """Write the chunks of one span its live copy holds; (chunks it does not, bytes written).

        The span is read from a block boundary into an aligned buffer: when the
        whole span matches, its whole blocks are written directly from that
        buffer, without the copy ``_write_runs`` makes.
        """
        tracker.check_canceled()
        start, end = places[0][0], places[-1][0] + places[-1][1]
        base = start - start % ALIGNMENT
        view = aligned_read_buffer(end - base)[: end - base]
        got = _read_local(source, view, base)
        blob_id = self.repo.sealer.blob_id
        runs: list[list[int]] = []  # [start, end) of each run of chunks found
        missing: list[_Place] = []
        for place in places:
            offset, size, expected = place
            at = offset - base
            if at + size <= got and blob_id(view[at : at + size]) == expected:
                if runs and runs[-1][1] == offset:
                    runs[-1][1] += size
                else:
                    runs.append([offset, offset + size])
            else:
                missing.append(place)
        short = [
            (number, run_start, view[run_start - base : run_end - base])
            for run_start, run_end in runs
            if not _write_in_place(files, number, view, base, run_start, run_end)
        ]
        if short:
            _write_runs(files, short)
        reused = sum(run_end - run_start for run_start, run_end in runs)
        tracker.advance(reused)
        return missing, reused

    def _start_fetches(
        self,
        pool: ThreadPoolExecutor,
        destinations: dict[bytes, list[tuple[int, int]]],
        files: _Files,
        tracker: Tracker,
    ) -> list[Future[None]]:
        """Submit the fetch-and-write jobs of one planned slice."""
        try:
            located = self.repo.index.frames_of(destinations)
        except KeyError as exc:
            raise RepositoryDamaged(f"blob {exc.args[0].hex()[:16]} is not in the index") from None
        by_pack: dict[str, list[FrameBlobs]] = {}  # packs in the order the data needs them
        for frame in located:
            by_pack.setdefault(frame.pack_id, []).append(frame)
        ranges: list[tuple[str, int, int, list[tuple[int, int, list[_Wanted]]]]] = []
        for pack_id, frames in by_pack.items():
            current: list[tuple[int, int, list[_Wanted]]] = []
            frames.sort(key=lambda frame: frame.offset)
            for _, offset, length, wanted in frames:
                if current:
                    start, end = current[0][0], current[-1][0] + current[-1][1]
                    if offset - end > MAX_RANGE_GAP or offset + length - start > MAX_RANGE_BYTES:
                        ranges.append((pack_id, start, end - start, current))
                        current = []
                current.append((offset, length, wanted))
            start, end = current[0][0], current[-1][0] + current[-1][1]
            ranges.append((pack_id, start, end - start, current))

        def fetch(job: tuple[str, int, int, list[tuple[int, int, list[_Wanted]]]]) -> None:
            tracker.check_canceled()
            pack_id, start, length, frames = job
            try:
                data = self.repo.storage.get(pack_name(pack_id), start, length)
            except ObjectNotFound as exc:
                raise RepositoryDamaged(f"pack {pack_id[:16]} is missing") from exc
            except StorageUnavailable:
                raise
            except StorageError as exc:
                raise RepositoryDamaged(f"pack {pack_id[:16]} is truncated") from exc
            if len(data) != length:
                raise RepositoryDamaged(f"pack {pack_id[:16]} is truncated")
            view = memoryview(data)
            try:
                opened = self.repo.open_frames(
                    [view[offset - start : offset - start + size] for offset, size, _ in frames]
                )
            except FrameDamaged as exc:
                raise RepositoryDamaged(
                    f"a frame at {frames[0][0]}+ in pack {pack_id[:16]} is damaged: {exc}"
                ) from exc
            writes: list[tuple[int, int, bytes | memoryview]] = []
            try:
                for frame, (_, _, wanted) in zip(opened, frames, strict=True):
                    self._frame_writes(frame, wanted, destinations, writes)
            except BlobDamaged as exc:
                raise RepositoryDamaged(f"{exc} (in pack {pack_id[:16]})") from exc
            tracker.advance(_write_runs(files, writes))

        return [pool.submit(fetch, job) for job in ranges]

    def _frame_writes(
        self,
        frame: OpenedFrame,
        wanted: list[_Wanted],
        destinations: dict[bytes, list[tuple[int, int]]],
        writes: list[tuple[int, int, bytes | memoryview]],
    ) -> None:
        """Add the writes of one opened frame's wanted blobs, each checked against it.

        Every blob is re-hashed against its keyed id: the frame's member table is
        authenticated, but any key holder can write a frame whose table lies
        about its content. Blobs that follow each other both in the frame and in
        one file become one piece (a frame of database pages is usually one
        piece, not 32): the write path then handles ~30x fewer pieces in Python.
        """
        blob_in_frame, data = self.repo.blob_in_frame, frame.data
        run_file, run_offset, run_end, inner_start, inner_end = -1, 0, 0, 0, 0
        for blob_id, inner_offset, raw_length in wanted:
            plain = blob_in_frame(frame, blob_id, inner_offset, raw_length, rehash=True)
            places = destinations[blob_id]
            if len(places) != 1:  # the same content at several places (or none)
                for number, file_offset in places:
                    writes.append((number, file_offset, plain))
                continue
            number, file_offset = places[0]
            if number == run_file and file_offset == run_end and inner_offset == inner_end:
                run_end += raw_length
                inner_end += raw_length
                continue
            if run_file >= 0:
                writes.append((run_file, run_offset, data[inner_start:inner_end]))
            run_file, run_offset, run_end = number, file_offset, file_offset + raw_length
            inner_start, inner_end = inner_offset, inner_offset + raw_length
        if run_file >= 0:
            writes.append((run_file, run_offset, data[inner_start:inner_end]))


# ------------------------------------------------------------------ single file
def replace_single_file(staged: Path, live: Path, keep: Path) -> None:
    """Put the content of ``staged`` at ``live``, keeping the replaced content at ``keep``.

    A live SQLite database is written through SQLite's backup API (one transaction
    a running app sees as an ordinary commit), after a copy of it is taken the
    same way; another file is replaced by a rename, its old content kept by a
    hard link. ``staged`` may be ``keep`` itself (undo).
    """
    temp = live.with_name(f".{live.name}.cloudkeep-restore-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        if live.exists() and is_sqlite(live) and is_sqlite(staged):
            # The copy gets the live file's permissions, not the umask's: a private
            # database must not leave a world-readable undo copy beside it.
            fd = os.open(temp, _CREATE_FILE, 0o600)
            try:
                os.fchmod(fd, stat.S_IMODE(live.stat().st_mode) & 0o777)
            finally:
                os.close(fd)
            try:
                _sqlite_copy(live, temp, scratch=True)
                _sqlite_copy(staged, live)
            except sqlite3.Error as exc:
                raise CloudkeepError(
                    f"cannot write the restored database into {live}: {exc}"
                ) from exc
        else:
            if live.exists():
                os.link(live, temp)
            os.replace(staged, live)
        if temp.exists():
            os.replace(temp, keep)
    finally:
        temp.unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        fsync_dir(live.parent)


def _sqlite_copy(source_path: Path, target_path: Path, scratch: bool = False) -> None:
    """Copy a database with SQLite's backup API; a ``scratch`` target (a new file only we
    use) is written without a journal."""
    source = sqlite3.connect(source_path, timeout=BUSY_TIMEOUT_SECONDS)
    try:
        target = sqlite3.connect(target_path, timeout=BUSY_TIMEOUT_SECONDS)
        try:
            if scratch:
                target.execute("PRAGMA journal_mode=OFF")
            source.backup(target, pages=-1)
        finally:
            target.close()
    finally:
        source.close()


def undo_restore(live: Path) -> Path:
    """Put back what the last in-place restore of ``live`` replaced; returns the undo path,
    which now holds the restored state (undo again to redo)."""
    keep = undo_path(live)
    recover(live)
    if keep.is_file() and not keep.is_symlink() and (live.is_file() or not live.exists()):
        replace_single_file(keep, live, keep)
        return keep
    return swap_back(live)
