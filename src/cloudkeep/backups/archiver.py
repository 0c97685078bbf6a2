"""Making a backup: scan, capture, chunk, deduplicate, seal, pack, upload, manifest.

The pipeline keeps both cores busy: the main thread reads, cuts chunks into
batches of a few MiB, hashes them and claims the new ones; two workers compress
and seal the new chunks (zstd and AES-GCM release the GIL); two uploader threads
send finished packs.
At most a handful of batches and packs are in flight, so memory stays flat
whatever the size of the data.
"""

from __future__ import annotations

import contextlib
import io
import logging
import mmap
import os
import socket
import stat
import threading
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple, TypeVar

from cloudkeep import __version__
from cloudkeep.backups.catalog import load_manifest
from cloudkeep.backups.gc_pause import gc_paused
from cloudkeep.backups.manifest import (
    CHUNKS_PER_LIST_BLOB,
    FileEntry,
    Manifest,
    created_from_us,
    current_platform,
    decode_chunk_list,
    encode_chunk_list,
    new_backup_id,
    now_us,
)
from cloudkeep.backups.progress import ProgressFn, Tracker
from cloudkeep.backups.sources import (
    SourceItem,
    describe,
    looks_like_database,
    open_regular,
    scan,
    shown,
    sqlite_page_size,
)
from cloudkeep.backups.sqlite_capture import (
    CaptureTorn,
    clean_scratch,
    consistent_pages,
    private_scratch,
)
from cloudkeep.errors import (
    Busy,
    CloudkeepError,
    ConfigurationError,
    DataSourceError,
    RepositoryChanged,
    RepositoryDamaged,
    UserError,
)
from cloudkeep.repository import index
from cloudkeep.repository.index import IndexFile
from cloudkeep.repository.locks import RepositoryLock
from cloudkeep.repository.pack_writer import PackWriter
from cloudkeep.repository.packs import BlobType
from cloudkeep.repository.repository import BlobDamaged, Repository
from cloudkeep.storage.base import ObjectExists, ObjectNotFound, StorageError

if TYPE_CHECKING:
    from pyfastcdc import FastCDC

log = logging.getLogger(__name__)
BATCH_BYTES = 2 * 1024 * 1024  # keeps a 2 GiB backup under the 200 MiB memory target
MAX_BATCHES_IN_FLIGHT = 4  # fewer starve the workers, more gain nothing
REREADS_OF_CHANGING_FILE = 2
LOCK_TIMEOUT_SECONDS = 600.0
_Block = TypeVar("_Block")


class _ChunkLists:
    """Turns a file's stream of (chunk id, size) into chunk-list blobs as it goes.

    Only one list blob's worth of entries is held at a time, so memory does not
    grow with the size of the file.
    """

    def __init__(self, repo: Repository, writer: PackWriter) -> None:
        self._repo = repo
        self._writer = writer
        self._pending: list[tuple[bytes, int]] = []
        self.list_ids: list[str] = []
        self.size = 0

    def extend(self, results: list[tuple[bytes, int]], size: int) -> None:
        """Add (id, size) of the next chunks; ``size`` is their total."""
        self._pending += results
        self.size += size
        while len(self._pending) >= CHUNKS_PER_LIST_BLOB:
            self._emit(self._pending[:CHUNKS_PER_LIST_BLOB])
            del self._pending[:CHUNKS_PER_LIST_BLOB]

    def close(self) -> list[str]:
        if self._pending:
            self._emit(self._pending)
            self._pending = []
        return self.list_ids

    def _emit(self, chunks: list[tuple[bytes, int]]) -> None:
        listing = encode_chunk_list(chunks)
        list_id = self._repo.blob_id(listing)
        self._writer.add(BlobType.TREE, list_id, listing)
        self.list_ids.append(list_id.hex())


class _Pages(NamedTuple):
    """A block of whole database pages: one batch, cut into chunks by the worker."""

    block: bytes | bytearray
    chunk_bytes: int


def page_chunks(block: memoryview, chunk_bytes: int) -> list[memoryview]:
    """Cut a block of whole pages into chunks of ``chunk_bytes`` (the last may be shorter)."""
    return [block[start : start + chunk_bytes] for start in range(0, len(block), chunk_bytes)]


class _Batcher:
    """Sends chunks to the workers in batches; hands (id, size) to each file's sink, in order.

    Batches of several files are in flight at once: a file's last batch does
    not stall the pipeline before the next file starts, which matters for
    folders of many small files.
    """

    def __init__(
        self,
        repo: Repository,
        writer: PackWriter,
        executor: ThreadPoolExecutor,
        tracker: Tracker,
    ) -> None:
        self._repo = repo
        self._writer = writer
        self._executor = executor
        self._tracker = tracker
        self._current: list[bytes | memoryview] = []
        self._current_bytes = 0
        self._in_flight: deque[
            tuple[Future[None] | None, list[tuple[bytes, int]], int, _ChunkLists]
        ] = deque()
        self._sink: _ChunkLists | None = None

    def start_file(self, sink: _ChunkLists) -> None:
        self._submit()  # the previous file's tail goes out as a batch of its own
        self._sink = sink

    def add(self, chunk: bytes | memoryview) -> None:
        self._current.append(chunk)
        self._current_bytes += len(chunk)
        if self._current_bytes >= BATCH_BYTES:
            self._submit()

    def add_pages(self, block: bytes | bytearray, chunk_bytes: int) -> None:
        """A block of database pages, sent as one batch and cut into chunks by the worker."""
        self._submit()  # chunks added before it go first
        self._send(_Pages(block, chunk_bytes))

    def _submit(self) -> None:
        if not self._current:
            return
        batch, self._current, self._current_bytes = self._current, [], 0
        self._send(batch)

    def _send(self, batch: list[bytes | memoryview] | _Pages) -> None:
        """Hash and claim the batch here; the workers seal what is new.

        Hashing in this (reading) thread, which otherwise waits for the workers:
        BLAKE3 releases the GIL for every 8 KiB page, and two workers hashing at
        once passed it back and forth for each page, each pass a wake-up of the
        other thread.
        """
        assert self._sink is not None
        self._tracker.check_canceled()
        source: memoryview | None = None
        chunk_bytes = 0
        chunks: Sequence[bytes | memoryview]
        if isinstance(batch, _Pages):
            source = memoryview(batch.block)
            chunk_bytes = batch.chunk_bytes
            chunks = page_chunks(source, chunk_bytes)
        else:
            chunks = batch
        blob_id = self._repo.blob_id
        ids = [blob_id(chunk) for chunk in chunks]
        sizes = [len(chunk) for chunk in chunks]
        batch_bytes = sum(sizes)
        fresh = self._writer.claim_new(ids)
        sealed: Future[None] | None = None
        if fresh:
            # Runs of new pages are frames cut straight out of the block (no join).
            offsets = None if source is None else [position * chunk_bytes for position in fresh]
            sealed = self._executor.submit(
                self._seal,
                [ids[position] for position in fresh],
                [chunks[position] for position in fresh],
                source,
                offsets,
                batch_bytes,
            )
        else:
            self._tracker.advance(batch_bytes)
        results = list(zip(ids, sizes, strict=True))
        self._in_flight.append((sealed, results, batch_bytes, self._sink))
        while len(self._in_flight) >= MAX_BATCHES_IN_FLIGHT:
            self._deliver_oldest()

    def _deliver_oldest(self) -> None:
        """A batch's chunks go into its file's lists once its new blobs are queued."""
        sealed, results, size, sink = self._in_flight.popleft()
        if sealed is not None:
            sealed.result()
        sink.extend(results, size)

    def _seal(
        self,
        ids: list[bytes],
        chunks: list[bytes | memoryview],
        source: memoryview | None,
        offsets: list[int] | None,
        batch_bytes: int,
    ) -> None:
        frames = self._repo.seal_frames(ids, chunks, source, offsets)
        self._writer.add_claimed(BlobType.DATA, frames)
        self._tracker.advance(batch_bytes)

    def finish(self) -> None:
        """Wait for every batch and hand all results to their files' sinks."""
        self._submit()
        while self._in_flight:
            self._deliver_oldest()


def _cdc_chunks(handle: io.BufferedIOBase, chunker: FastCDC, window: memoryview) -> Iterator[bytes]:
    """The file's content-defined chunks, cut as ``chunker.cut_stream`` cuts them, read
    through ``window`` (at least twice the largest chunk), which every file reuses.

    ``cut_stream`` zero-fills a window of its own per file (8 MiB): a heap block of that
    size for each file of a folder of them. A chunk is only taken once the bytes after
    its start reach the largest chunk's size or the file's end, as ``cut_stream``'s are.
    """
    largest = chunker.max_size
    assert len(window) >= 2 * largest
    filled, ended = 0, False
    while True:
        while not ended and filled < len(window):
            count = handle.readinto(window[filled:])
            ended = not count
            filled += count or 0
        taken = 0
        for chunk in chunker.cut_buf(window[:filled]):
            if not ended and chunk.offset + largest > filled:
                break  # cut with the bytes still to be read
            yield bytes(chunk.data)
            taken = chunk.offset + chunk.length
        if ended:
            return
        window[: filled - taken] = window[taken:filled]
        filled -= taken


class _ReadFailed(Exception):
    """Reading a file of the source failed (it vanished, or cannot be read).

    Only the reads of the user's file raise it, never the pipeline behind them:
    an error of the store must fail the backup, not leave a file out.
    """

    def __init__(self, error: OSError) -> None:
        super().__init__(str(error))
        self.error = error


@contextlib.contextmanager
def _reading() -> Iterator[None]:
    try:
        yield
    except OSError as exc:
        raise _ReadFailed(exc) from exc


def _read_through(blocks: Iterator[_Block]) -> Iterator[_Block]:
    """The blocks of a file; an ``OSError`` of the reads becomes ``_ReadFailed``.

    What the consumer raises between two blocks never passes through here.
    """
    with _reading():
        yield from blocks


def _read_again(item: SourceItem, previous: FileEntry | None) -> bool:
    """Whether a file must be read, not taken from the last backup (``previous``)."""
    return not (
        item.fingerprint
        and previous is not None
        and previous.fingerprint == item.fingerprint
        and previous.sqlite == item.sqlite
    )


def _ancestors(path: str) -> Iterator[str]:
    """The folders above a relative posix path, nearest first."""
    while "/" in path:
        path = path.rsplit("/", 1)[0]
        yield path


def _is_dir(path: Path) -> bool:
    try:
        return stat.S_ISDIR(path.lstat().st_mode)
    except OSError:
        return False


#: How far ahead of the clock a given backup time may lie (clocks of devices differ).
MAX_TIME_AHEAD = timedelta(days=1)


def backup_time_us(moment: datetime, now: datetime | None = None) -> int:
    """A given backup time (``backup --time``) in microseconds since the epoch.

    ``UserError`` before 1970 or more than a day ahead of the clock: a backup far in
    the future would be every policy's newest (keep-within measures from it).
    """
    if moment.tzinfo is None:
        moment = moment.astimezone()  # a wall-clock time is local time
    clock = now or datetime.now(UTC)
    if moment < datetime(1970, 1, 1, tzinfo=UTC) or moment > clock + MAX_TIME_AHEAD:
        raise UserError(f"the backup time {moment.isoformat()} is not between 1970 and tomorrow")
    return int((moment - datetime(1970, 1, 1, tzinfo=UTC)) / timedelta(microseconds=1))


class _PublishChecks:
    """The lock refresh and the config check a manifest needs, as concurrent requests
    overlapping the last uploads, so they add no round trips after them.

    The lock refresh starts before the last packs upload; the config check only once
    they are stored (``packs_stored``), overlapping the index upload: a config replaced
    by a device that won the creation while the packs uploaded is still seen.
    """

    def __init__(self, lock: RepositoryLock, repo: Repository) -> None:
        self._repo = repo
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="publish-check")
        self._refreshed = self._pool.submit(lock.refresh)
        self._key: Future[None] | None = None

    def packs_stored(self) -> None:
        self._key = self._pool.submit(self._repo.ensure_key_current)
        self._pool.shutdown(wait=False)

    def lock_refreshed(self) -> None:
        self._refreshed.result()

    def key_current(self) -> None:
        """``RepositoryChanged`` if the config names another key. Files written after the
        check began (the index) are then discarded by checking once more."""
        if self._key is None:
            self._repo.ensure_key_current()
            return
        try:
            self._key.result()
        except RepositoryChanged:
            self._repo.ensure_key_current()
            raise

    def settle(self) -> None:
        """Wait for both (their outcome no longer matters: the backup failed)."""
        self._pool.shutdown(wait=False)
        for future in (self._refreshed, self._key):
            if future is not None:
                with contextlib.suppress(Exception):
                    future.result()


class Archiver:
    def __init__(
        self,
        repo: Repository,
        scratch: Path,
        progress: ProgressFn | None = None,
        cancel: threading.Event | None = None,
        time_us: int | None = None,
    ) -> None:
        """``time_us``: the backup's time (microseconds since the epoch) instead of the
        clock's when it is saved (``backup --time``); the id carries it too."""
        self.repo = repo
        self.scratch = scratch
        self.progress = progress
        self.cancel = cancel
        self.time_us = time_us
        self._cdc: FastCDC | None = None
        self._cdc_window: mmap.mmap | None = None
        self._index_loaded = False
        self._parent: dict[str, FileEntry] = {}
        self.warnings: list[str] = []
        clean_scratch(scratch)

    def _chunker(self) -> FastCDC:
        if self._cdc is None:
            from pyfastcdc import FastCDC  # imported only when a file needs it

            params = self.repo.chunker
            self._cdc = FastCDC(
                params["cdc_avg"],
                min_size=params["cdc_min"],
                max_size=params["cdc_max"],
                seed=self.repo.key.chunker_seed(),
            )
        return self._cdc

    def _window(self) -> memoryview:
        """The read window of every plain file: twice the largest chunk, mapped once
        (outside the heap; its pages cost memory once read into)."""
        if self._cdc_window is None:
            self._cdc_window = mmap.mmap(-1, 2 * self._chunker().max_size)
        return memoryview(self._cdc_window)

    def _need_index(self) -> None:
        """Load the index on the first file that must be read: unchanged runs skip it."""
        if not self._index_loaded:
            self._load_live_index()
            self._index_loaded = True

    def _load_live_index(
        self, locations: bool = False, pool: ThreadPoolExecutor | None = None
    ) -> None:
        """Load the index of the packs the store holds: their blob ids only, unless
        blobs are to be read through it (``locations``); both listings at once in ``pool``.

        Index entries naming a pack the store no longer holds (an index file written
        by a client whose lock had lapsed while a prune deleted its packs) are
        dropped, so nothing is deduplicated against them. Our lock is held, so no
        pack listed here goes away before our manifest is saved.
        """
        spill = None
        if not locations:  # the ids this backup adds are kept there, if it can be made private
            with contextlib.suppress(ConfigurationError):
                private_scratch(self.scratch)
                spill = self.scratch
        if pool is None:
            self.repo.load_index(
                stored=set(self.repo.list_packs()), locations=locations, spill=spill
            )
            return
        packs = pool.submit(self.repo.list_packs)
        index_files = pool.submit(self.repo.list_files, "index")
        self.repo.load_index(
            stored=set(packs.result()),
            index_files=index_files.result(),
            locations=locations,
            spill=spill,
        )

    def run(self, source: Path, device_name: str) -> Manifest:
        kind, items = scan(source, self.warnings)
        parent_id, parent_files = self._parent_files(source, device_name)
        if any(_read_again(i, parent_files.get(i.relative)) for i in items if i.type == "file"):
            index.prepare()  # the index will be loaded: its numpy meanwhile
        tracker = Tracker("backup", sum(i.size for i in items), self.progress, self.cancel)
        tracker.advance(0)
        with (
            gc_paused(),
            RepositoryLock(self.repo, exclusive=False, purpose="backup").acquire(
                LOCK_TIMEOUT_SECONDS
            ) as lock,
        ):
            self._locked_reads(parent_id, parent_files, items)
            entries, added_bytes, index_names, checks = self._store(kind, items, tracker, lock)
            manifest = self._save_manifest(
                lock, source, kind, device_name, entries, added_bytes, index_names, checks
            )
            if manifest is None:
                # Once more, reading every file and deduplicating only against the packs
                # the store still holds (the index was just reloaded that way).
                log.warning("data this backup needs was removed meanwhile: backing up again")
                self._parent, self.warnings = {}, []
                kind, items = scan(source, self.warnings)
                tracker.total = tracker.done + sum(i.size for i in items)
                entries, added_again, index_names, checks = self._store(kind, items, tracker, lock)
                added_bytes += added_again  # both attempts uploaded what they added
                manifest = self._save_manifest(
                    lock, source, kind, device_name, entries, added_bytes, index_names, checks
                )
            if manifest is None:
                raise Busy(
                    "the backup was not saved: twice, while this device was suspended or "
                    "offline, a prune on another device removed data it needed; "
                    "back up again"
                )
            return manifest

    def _locked_reads(
        self, parent_id: str | None, parent_files: dict[str, FileEntry], items: list[SourceItem]
    ) -> None:
        """What a backup reads once its lock is held, as concurrent requests: whether the
        parent still exists and, if a file must be read, the listings the index needs.

        Reusing the parent's chunk lists is safe once our shared lock is held and the
        parent still exists: prune (exclusive) only removes blobs that no manifest
        refers to, and cannot run until we are done.
        """
        must_read = any(
            item.type == "file" and _read_again(item, parent_files.get(item.relative))
            for item in items
        )
        with ThreadPoolExecutor(max_workers=3, thread_name_prefix="locked-read") as pool:
            parent = pool.submit(self.repo.backup_exists, parent_id) if parent_id else None
            if must_read and not self._index_loaded:
                self._load_live_index(pool=pool)
                self._index_loaded = True
            if parent is not None and parent.result():
                self._parent = parent_files

    def _store(
        self, kind: str, items: list[SourceItem], tracker: Tracker, lock: RepositoryLock
    ) -> tuple[list[FileEntry], int, list[str], _PublishChecks]:
        """Store every file; their entries, the bytes uploaded, the index files written
        and the checks before publishing, started while the last packs upload."""
        writer = self.repo.pack_writer()
        executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="seal")
        checks: _PublishChecks | None = None
        try:
            batcher = _Batcher(self.repo, writer, executor, tracker)
            read: list[tuple[FileEntry, _ChunkLists]] = []
            entries = self._entries(kind, items, batcher, writer, tracker, read)
            batcher.finish()
            for entry, lists in read:
                entry.size = lists.size
                entry.content = lists.close()
            tracker.check_canceled()
            checks = _PublishChecks(lock, self.repo)
            index_names = writer.flush(uploaded=checks.packs_stored)
        except BaseException:
            executor.shutdown(wait=True, cancel_futures=True)
            writer.close()
            if checks is not None:
                checks.settle()
            self._discard_uploads(writer)
            raise
        executor.shutdown(wait=True)
        writer.close()
        return entries, writer.uploaded_bytes, index_names, checks

    def _entries(
        self,
        kind: str,
        items: list[SourceItem],
        batcher: _Batcher,
        writer: PackWriter,
        tracker: Tracker,
        read: list[tuple[FileEntry, _ChunkLists]],
    ) -> list[FileEntry]:
        """The entries of the items, less the files left out (see ``_left_out``).

        A folder that vanished together with the files left out of it goes too,
        with what the scan saw in it: every entry kept still has its folders.
        """
        entries: list[FileEntry] = []
        left_out: list[str] = []
        for item in items:
            entry = self._entry(item, kind, batcher, writer, tracker, read)
            if entry is None:
                left_out.append(item.relative)
            else:
                entries.append(entry)
        if not left_out:
            return entries
        folders = {item.relative: item.path for item in items if item.type == "dir"}
        needed = {
            folder for entry in entries if entry.type == "file" for folder in _ancestors(entry.path)
        }
        gone = {
            folder
            for path in left_out
            for folder in _ancestors(path)
            if folder in folders and folder not in needed and not _is_dir(folders[folder])
        }
        return [
            entry
            for entry in entries
            if entry.path not in gone and gone.isdisjoint(_ancestors(entry.path))
        ]

    def _entry(
        self,
        item: SourceItem,
        kind: str,
        batcher: _Batcher,
        writer: PackWriter,
        tracker: Tracker,
        read: list[tuple[FileEntry, _ChunkLists]],
    ) -> FileEntry | None:
        """The file's entry, None if it was left out; a file that is read gets its
        size and content once all its batches are done (``read`` collects it)."""
        entry = FileEntry(
            item.relative, item.type, item.mode, item.mtime_ns, item.size, item.sqlite, item.target
        )
        if item.type != "file":
            return entry
        tracker.check_canceled()
        previous = self._parent.get(item.relative)
        if previous is not None and not _read_again(item, previous):
            tracker.advance(item.size)
            previous.mode, previous.mtime_ns = item.mode, item.mtime_ns
            return previous
        entry.fingerprint = item.fingerprint
        self._need_index()
        try:
            lists = self._read_file(item, batcher, writer)
        except _ReadFailed as failed:
            self._left_out(item, kind, failed.error)
            return None
        read.append((entry, lists))
        return entry

    def _left_out(self, item: SourceItem, kind: str, error: OSError) -> None:
        """Warn that a file is not in this backup, or fail if it is what must be saved.

        A file that vanished, or that cannot be read, is left out with a warning;
        but a backup without its database (or the single file it is of) is no
        backup: an unreadable database fails it. Unreadable, a database shows no
        header, so its name, its companions or the last backup say what it is.
        """
        vanished = isinstance(error, (FileNotFoundError, NotADirectoryError))
        if kind == "file":
            happened = "vanished during the backup" if vanished else describe(error)
            raise DataSourceError(f"cannot read the data file {item.path}: {happened}")
        if not vanished:
            previous = self._parent.get(item.relative)
            if (
                item.sqlite
                or (previous is not None and previous.sqlite)
                or looks_like_database(item.path)
            ):
                raise DataSourceError(f"cannot read the database {item.path}: {describe(error)}")
        self.warnings.append(
            f"{shown(item.relative)}: vanished during the backup; it is not in this backup"
            if vanished
            else f"{shown(item.relative)}: cannot read it ({describe(error)}); "
            "it is not in this backup"
        )

    def _parent_files(
        self, source: Path, device_name: str
    ) -> tuple[str | None, dict[str, FileEntry]]:
        """Files of this device's latest backup of the same source, by path.

        Files whose fingerprint (inode, size, mtime, ctime; WAL included for
        SQLite) is unchanged are taken from it without being read again.
        """

        def stamp(name: str) -> int:
            tail = name.rsplit("_", 1)[-1]
            return int(tail) if tail.isdigit() else -1

        latest: Manifest | None = None
        for name in sorted(self.repo.list_backups(), key=stamp, reverse=True):
            try:
                manifest = load_manifest(self.repo, name)
            except (CloudkeepError, StorageError, ValueError, TypeError, KeyError):
                continue
            if manifest.device_name == device_name and manifest.source == str(source):
                latest = manifest
                break
        if latest is None:
            return None, {}
        return latest.id, {entry.path: entry for entry in latest.files if entry.type == "file"}

    def _read_file(self, item: SourceItem, batcher: _Batcher, writer: PackWriter) -> _ChunkLists:
        """Chunk one file; each read (re-reads included) gets a fresh chunk-list sink.

        ``_ReadFailed`` if the file cannot be opened or read. A file deleted once
        open is read to its end (its last state); a database that cannot be read
        through SQLite raises ``DataSourceError``.
        """

        def fresh() -> _ChunkLists:
            lists = _ChunkLists(self.repo, writer)
            batcher.start_file(lists)
            return lists

        lists = fresh()
        if item.sqlite:
            with _reading():
                page_size = sqlite_page_size(item.path)
            wanted = self.repo.chunker["sqlite_chunk_bytes"]
            chunk_bytes = max(page_size, wanted // page_size * page_size)
            block_bytes = max(1, BATCH_BYTES // chunk_bytes) * chunk_bytes
            for in_place in (True, False):
                if not in_place:
                    lists = fresh()  # what was stored is deduplicated on the second read
                try:
                    with contextlib.ExitStack() as stack:
                        with _reading():
                            capture = stack.enter_context(
                                consistent_pages(
                                    item.path, self.scratch, block_bytes, in_place=in_place
                                )
                            )
                        for block in _read_through(capture.blocks):
                            batcher.add_pages(block, chunk_bytes)
                        return lists
                except CaptureTorn:
                    continue  # only an in-place capture is torn: read it again
            raise AssertionError("a capture through the backup API is never torn")
        for attempt in range(REREADS_OF_CHANGING_FILE + 1):
            if attempt:
                lists = fresh()
            with _reading():
                handle = os.fdopen(open_regular(item.path), "rb")
            with handle:
                before = os.fstat(handle.fileno())
                chunks = _cdc_chunks(handle, self._chunker(), self._window())
                for chunk in _read_through(chunks):
                    batcher.add(chunk)
                after = os.fstat(handle.fileno())
            if (before.st_size, before.st_mtime_ns) == (after.st_size, after.st_mtime_ns):
                return lists
        self.warnings.append(
            f"{shown(item.relative)}: kept changing while it was read; "
            "the backup holds the last read"
        )
        return lists

    def _discard_uploads(self, writer: PackWriter) -> None:
        """Remove packs this failed backup uploaded but never indexed (best effort)."""
        for pack_id in writer.unindexed_pack_ids():
            with contextlib.suppress(StorageError, CloudkeepError):
                self.repo.delete_pack(pack_id)

    def _save_manifest(
        self,
        lock: RepositoryLock,
        source: Path,
        kind: str,
        device_name: str,
        entries: list[FileEntry],
        added_bytes: int,
        index_names: list[str],
        checks: _PublishChecks,
    ) -> Manifest | None:
        """Publish the manifest; None if data it needs vanished while our lock had lapsed.

        A lock that lapsed (suspend, store outage) may have let a prune
        delete packs this backup deduplicated against or uploaded. Then, before
        publishing: hold the lock again (waiting out a running prune), and check
        that every blob the manifest references is in a pack the store still holds.
        ``checks`` refreshed the lock and read the config while the last packs and
        the index were uploaded; both are judged only now, after them.
        """
        checks.lock_refreshed()
        while not lock.held():
            lock.reacquire(LOCK_TIMEOUT_SECONDS)
            if not self._all_stored(entries, index_names):
                return None
        checks.key_current()  # never publish under a key that lost the creation
        stamp = now_us() if self.time_us is None else self.time_us
        while True:
            manifest = Manifest(
                id=new_backup_id(stamp),
                version=__version__,
                timestamp=str(stamp),
                bytes=sum(e.size for e in entries if e.type == "file"),
                created=created_from_us(stamp),
                device_name=device_name,
                platform=current_platform(),
                hostname=socket.gethostname(),
                source=str(source),
                kind=kind,
                files=entries,
                warnings=self.warnings,
                added_bytes=added_bytes,
                root_mode=stat.S_IMODE(source.stat().st_mode) if kind == "folder" else None,
            )
            try:
                self.repo.save_backup(manifest.id, manifest.encode())
                break
            except ObjectExists:
                stamp += 1 + int.from_bytes(os.urandom(1), "little")
        if not lock.held():  # it lapsed while the manifest was being written
            lock.reacquire(LOCK_TIMEOUT_SECONDS)
            if not self._all_stored(entries, index_names):
                self.repo.delete_backup(manifest.id)
                return None
        return manifest

    def _all_stored(self, entries: list[FileEntry], index_names: list[str]) -> bool:
        """Whether every blob the entries reference is in a pack the store holds.

        First our own index files lose the packs that are gone, so no index
        entry of ours sends a restore to a deleted pack.
        """
        repo = self.repo
        stored = set(repo.list_packs())
        for name in index_names:
            try:
                packs = repo.read_index_file(name).packs
            except (ObjectNotFound, RepositoryDamaged):
                continue  # replaced by a prune
            live = {pack_id: e for pack_id, e in packs.items() if pack_id in stored}
            if len(live) < len(packs):
                if live:
                    repo.write_index_file(IndexFile(live))
                repo.remove_index_file(name)
        self._load_live_index(locations=True)  # the chunk lists are read through it
        checked: set[bytes] = set()
        for entry in entries:
            for list_hex in entry.content:
                list_id = bytes.fromhex(list_hex)
                if list_id in checked:
                    continue
                checked.add(list_id)
                try:
                    chunks = decode_chunk_list(bytes(repo.read_blob(list_id)))
                except (BlobDamaged, ValueError):
                    return False
                if repo.index.missing([blob_id for blob_id, _size in chunks]):
                    return False
        return True
