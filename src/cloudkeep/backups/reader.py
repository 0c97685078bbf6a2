"""Reading a backed-up file without restoring it: any byte range, or the whole in order.

A file's chunk lists are read once (batched ranged reads) into a compact map of
chunk offsets; a read finds its chunks by bisection and fetches only the frames
holding them, with the same verified path as a restore (``RepositoryReader``:
every blob re-hashed against its keyed id, errors of the data as
``RepositoryDamaged``). A frame is opened whole to get one blob, so the file's
other chunks in it (its neighbours within a frame's reach) are verified and
kept too: SQLite reads neighbouring pages next. Kept blobs live in an LRU
bounded by bytes, shared by every file of one reader (identical chunks are one
blob). ``stream`` reads windows of chunks in file order with several ranged
reads in flight, bypassing the cache, in bounded memory.

The caller holds a shared repository lock with the index loaded (see
``Workspace.reader``): no prune removes a pack while it is read.
"""

from __future__ import annotations

import threading
from array import array
from bisect import bisect_right
from collections import OrderedDict, deque
from collections.abc import Generator, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from itertools import accumulate

from cloudkeep.backups.manifest import CHUNK_LIST_ENTRY, FileEntry
from cloudkeep.backups.restore.fetch import FETCH_THREADS, RepositoryReader
from cloudkeep.backups.restore.plan import check_file_size
from cloudkeep.errors import RepositoryDamaged
from cloudkeep.repository.frames import FRAME_TARGET_SIZE
from cloudkeep.repository.index import FrameBlobs
from cloudkeep.repository.loader import LoadedFrame, PackRange, plan_ranges
from cloudkeep.repository.repository import Repository
from cloudkeep.repository.untrusted import shown

__all__ = ["DEFAULT_CACHE_BYTES", "BackupFile", "BackupReader"]

#: Bytes of blobs a reader keeps for random reads.
DEFAULT_CACHE_BYTES = 64 * 1024 * 1024
#: Bytes of a file ``stream`` plans at once; at most ``STREAM_WINDOWS`` are held.
STREAM_WINDOW_BYTES = 8 * 1024 * 1024
STREAM_WINDOWS = 2
#: How far around a wanted chunk the file's chunks are taken along from its frame.
NEIGHBOUR_BYTES = FRAME_TARGET_SIZE
_ID = CHUNK_LIST_ENTRY.size - 4  # bytes of a blob id


class BlobCache:
    """Blobs by id, least recently used dropped first once over ``limit`` bytes."""

    def __init__(self, limit: int) -> None:
        if limit < 0:
            raise ValueError("a cache limit is a number of bytes, at least 0")
        self.limit = limit
        self.bytes = 0
        self._blobs: OrderedDict[bytes, bytes] = OrderedDict()
        self._lock = threading.Lock()

    def __contains__(self, blob_id: bytes) -> bool:
        return blob_id in self._blobs

    def get(self, blob_id: bytes) -> bytes | None:
        with self._lock:
            blob = self._blobs.get(blob_id)
            if blob is not None:
                self._blobs.move_to_end(blob_id)
            return blob

    def put(self, blob_id: bytes, blob: bytes) -> None:
        if len(blob) > self.limit:
            return
        with self._lock:
            old = self._blobs.pop(blob_id, None)
            if old is not None:
                self.bytes -= len(old)
            self._blobs[blob_id] = blob
            self.bytes += len(blob)
            while self.bytes > self.limit:
                _, dropped = self._blobs.popitem(last=False)
                self.bytes -= len(dropped)


class BackupReader:
    """Read access to the backups of ``repo`` (index loaded, shared lock held by the caller).

    ``cache_bytes`` bounds the blobs kept for random reads. ``fetched_bytes``
    counts the bytes read from the store (chunk lists and frames), across threads.
    """

    def __init__(self, repo: Repository, cache_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        self._repo = repo
        self._access = RepositoryReader(repo)
        self.cache = BlobCache(cache_bytes)
        self._fetched = 0
        self._count_lock = threading.Lock()

    @property
    def fetched_bytes(self) -> int:
        """Bytes fetched from the store so far."""
        with self._count_lock:
            return self._fetched

    def file(self, entry: FileEntry) -> BackupFile:
        """The backed-up content of ``entry`` (a regular file of a backup's manifest)."""
        if entry.type != "file":
            raise ValueError(f"{entry.path} is a {entry.type}, not a file")
        return BackupFile(self, entry)

    # ------------------------------------------------------------ for BackupFile
    def _load(self, span: PackRange) -> list[LoadedFrame]:
        """One ranged read, every wanted blob verified; its bytes counted."""
        loaded = self._access.load(span)
        with self._count_lock:
            self._fetched += span.length
        return loaded

    def _load_all(self, spans: list[PackRange]) -> Iterator[LoadedFrame]:
        """The frames of ``spans``, several ranged reads at once when there are several."""
        if len(spans) == 1:
            yield from self._load(spans[0])
            return
        with ThreadPoolExecutor(FETCH_THREADS, thread_name_prefix="read") as pool:
            futures = [pool.submit(self._load, span) for span in spans]
            try:
                for future in futures:
                    yield from future.result()
            finally:
                for future in futures:
                    future.cancel()

    def _locate(self, wanted: Iterable[bytes]) -> list[FrameBlobs]:
        return self._access.locate(wanted)

    def _known(self, blob_id: bytes) -> bool:
        return self._repo.has_blob(blob_id)


class _ChunkMap:
    """A file's chunks, compactly: ``starts[i]`` is where chunk ``i`` begins
    (``starts[n]`` the file's end) and ``ids[32 i : 32 i + 32]`` its blob id."""

    __slots__ = ("ids", "starts")

    def __init__(self, starts: array, ids: bytes) -> None:
        self.starts = starts
        self.ids = ids

    def __len__(self) -> int:
        return len(self.starts) - 1

    def blob_id(self, number: int) -> bytes:
        return self.ids[_ID * number : _ID * (number + 1)]

    def length(self, number: int) -> int:
        return self.starts[number + 1] - self.starts[number]


class BackupFile:
    """One backed-up file: ``read`` any range of it, or ``stream`` it whole."""

    def __init__(self, reader: BackupReader, entry: FileEntry) -> None:
        self._reader = reader
        self.entry = entry
        self.size = entry.size
        self._map: _ChunkMap | None = None
        self._map_lock = threading.Lock()

    @contextmanager
    def _naming_file(self) -> Iterator[None]:
        """Damage found while reading says which file it stopped."""
        try:
            yield
        except RepositoryDamaged as exc:
            if str(exc).startswith("cannot read"):
                raise
            raise RepositoryDamaged(f"cannot read {shown(self.entry.path)}: {exc}") from exc

    def _wrong_length(self, blob_id: bytes, actual: int, listed: int) -> RepositoryDamaged:
        return RepositoryDamaged(
            f"cannot read {shown(self.entry.path)}: chunk {blob_id.hex()[:16]} is "
            f"{actual} bytes, its chunk list says {listed}"
        )

    # ----------------------------------------------------------------- chunks
    def _chunk_lists(self, list_ids: list[str]) -> list[memoryview]:
        """The raw chunk lists ``list_ids`` name, in that order, each verified."""
        if not list_ids:
            return []
        wanted = [bytes.fromhex(list_id) for list_id in list_ids]
        reader = self._reader
        found: dict[bytes, memoryview] = {}
        frames = reader._locate(wanted)
        for loaded in reader._load_all(plan_ranges(frames)):
            data = loaded.opened.data
            for blob_id, inner_offset, raw_length in loaded.frame.blobs:
                found[blob_id] = data[inner_offset : inner_offset + raw_length]
        raws = []
        for blob_id in wanted:
            raw = found[blob_id]
            if len(raw) % CHUNK_LIST_ENTRY.size:
                raise RepositoryDamaged(
                    f"cannot read {shown(self.entry.path)}: a chunk list has a partial entry"
                )
            raws.append(raw)
        return raws

    def _chunk_map(self) -> _ChunkMap:
        with self._map_lock, self._naming_file():
            if self._map is None:
                ids = bytearray()
                lengths: list[int] = []
                for raw in self._chunk_lists(self.entry.content):
                    for blob_id, length in CHUNK_LIST_ENTRY.iter_unpack(raw):
                        ids += blob_id
                        lengths.append(length)
                starts = array("q", accumulate(lengths, initial=0))
                check_file_size(self.entry, starts[-1])
                self._map = _ChunkMap(starts, bytes(ids))
            return self._map

    def chunks(self) -> list[tuple[int, int, bytes]]:
        """(offset, length, blob id) of every chunk in file order; reads the chunk lists
        only (``RepositoryDamaged`` if they do not cover the file exactly)."""
        chunk_map = self._chunk_map()
        return [
            (chunk_map.starts[n], chunk_map.length(n), chunk_map.blob_id(n))
            for n in range(len(chunk_map))
        ]

    # ------------------------------------------------------------ random reads
    def read(self, offset: int, size: int) -> bytes:
        """Up to ``size`` bytes from ``offset`` (fewer only past the end of the file)."""
        if offset < 0 or size < 0:
            raise ValueError("a read needs an offset and a size of at least 0")
        end = min(offset + size, self.size)
        if offset >= end:
            return b""
        chunk_map = self._chunk_map()
        starts = chunk_map.starts
        first = bisect_right(starts, offset) - 1
        last = bisect_right(starts, end - 1) - 1
        with self._naming_file():
            blobs = self._blobs(chunk_map, first, last + 1)
        parts = []
        for number in range(first, last + 1):
            blob_id = chunk_map.blob_id(number)
            blob = blobs[blob_id]
            if len(blob) != chunk_map.length(number):
                raise self._wrong_length(blob_id, len(blob), chunk_map.length(number))
            start = starts[number]
            parts.append(blob[max(offset - start, 0) : end - start])
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _blobs(self, chunk_map: _ChunkMap, first: int, stop: int) -> dict[bytes, bytes]:
        """The blobs of chunks ``first`` to ``stop - 1``: from the cache, the rest fetched
        with their neighbours in the same frames (which are cached too)."""
        cache = self._reader.cache
        blobs: dict[bytes, bytes] = {}
        missing: set[bytes] = set()
        for number in range(first, stop):
            blob_id = chunk_map.blob_id(number)
            if blob_id in blobs or blob_id in missing:
                continue
            blob = cache.get(blob_id)
            if blob is None:
                missing.add(blob_id)
            else:
                blobs[blob_id] = blob
        if not missing:
            return blobs
        reader = self._reader
        # Wanted blobs first: one the index does not know is damage; a neighbour it does
        # not know is not needed now, and left for the read that needs it.
        wanted = dict.fromkeys(missing)
        for number in self._neighbours(chunk_map, first, stop):
            blob_id = chunk_map.blob_id(number)
            if blob_id not in wanted and blob_id not in cache and reader._known(blob_id):
                wanted[blob_id] = None
        located = reader._locate(wanted)
        frames = [f for f in located if any(member[0] in missing for member in f.blobs)]
        for loaded in reader._load_all(plan_ranges(frames)):
            data = loaded.opened.data
            for blob_id, inner_offset, raw_length in loaded.frame.blobs:
                blob = bytes(data[inner_offset : inner_offset + raw_length])
                cache.put(blob_id, blob)
                if blob_id in missing:
                    blobs[blob_id] = blob
        return blobs

    @staticmethod
    def _neighbours(chunk_map: _ChunkMap, first: int, stop: int) -> range:
        """Chunks within ``NEIGHBOUR_BYTES`` of chunks ``first``..``stop - 1``: those a
        frame opened for them may hold too."""
        starts = chunk_map.starts
        low = bisect_right(starts, max(starts[first] - NEIGHBOUR_BYTES, 0)) - 1
        high = bisect_right(starts, starts[stop] + NEIGHBOUR_BYTES - 1)
        return range(max(low, 0), min(high, len(chunk_map)))

    # ---------------------------------------------------------------- stream
    def stream(self) -> Iterator[bytes | memoryview]:
        """The whole file in order, in pieces; windows of ``STREAM_WINDOW_BYTES`` are
        fetched ahead, several ranged reads at once, at most ``STREAM_WINDOWS`` held.

        Chunk lists are read as the stream reaches them, so memory stays bounded
        whatever the file's size. ``RepositoryDamaged`` as soon as the chunks
        would not cover the file exactly.
        """
        pending: deque[tuple[list[tuple[bytes, int]], list[Future[list[LoadedFrame]]]]] = deque()
        reader = self._reader
        with (
            ThreadPoolExecutor(FETCH_THREADS, thread_name_prefix="stream") as pool,
            self._naming_file(),
        ):
            try:
                offset = 0
                for window in self._windows():
                    located = reader._locate([blob_id for blob_id, _ in window])
                    spans = plan_ranges(located)
                    pending.append((window, [pool.submit(reader._load, s) for s in spans]))
                    if len(pending) >= STREAM_WINDOWS:
                        offset = yield from self._yield_window(*pending.popleft(), offset)
                while pending:
                    offset = yield from self._yield_window(*pending.popleft(), offset)
                check_file_size(self.entry, offset)
            finally:
                for _, futures in pending:
                    for future in futures:
                        future.cancel()

    def _windows(self) -> Iterator[list[tuple[bytes, int]]]:
        """The chunks ((blob id, length) each) in windows of about ``STREAM_WINDOW_BYTES``,
        chunk lists read a few at a time as the windows need them."""
        content = self.entry.content
        per_read = max(1, FETCH_THREADS)
        window: list[tuple[bytes, int]] = []
        window_bytes = 0
        for start in range(0, len(content), per_read):
            for raw in self._chunk_lists(content[start : start + per_read]):
                for blob_id, length in CHUNK_LIST_ENTRY.iter_unpack(raw):
                    window.append((blob_id, length))
                    window_bytes += length
                    if window_bytes >= STREAM_WINDOW_BYTES:
                        yield window
                        window, window_bytes = [], 0
        if window:
            yield window

    def _yield_window(
        self,
        window: list[tuple[bytes, int]],
        futures: list[Future[list[LoadedFrame]]],
        offset: int,
    ) -> Generator[memoryview, None, int]:
        """The chunks of one window in order; returns the file offset after them."""
        blobs: dict[bytes, memoryview] = {}
        for future in futures:
            for loaded in future.result():
                data = loaded.opened.data
                for blob_id, inner_offset, raw_length in loaded.frame.blobs:
                    blobs[blob_id] = data[inner_offset : inner_offset + raw_length]
        futures.clear()
        for blob_id, length in window:
            blob = blobs[blob_id]
            if len(blob) != length:
                raise self._wrong_length(blob_id, len(blob), length)
            if offset + length > self.size:
                check_file_size(self.entry, offset + length)
            offset += length
            yield blob
        return offset
