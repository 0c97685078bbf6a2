"""Fetching blobs from the repository for a restore: ranged pack reads, every blob verified.

``RepositoryReader`` is everything a restore asks of the repository: its lock
and index, chunk lists, the keyed hash, where blobs are and the frames of a
ranged read (``Repository.load_range``, which re-hashes every wanted blob
against its keyed id: the frame's member table is authenticated, but any key
holder can write a frame whose table lies about its content). The reads run in
the restore's own pool, several at once, each writing its blobs as it lands.
"""

from __future__ import annotations

import sys
import threading
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from itertools import islice
from typing import TYPE_CHECKING

from cloudkeep.backups.manifest import CHUNK_LIST_ENTRY, CHUNKS_PER_LIST_BLOB, FileEntry
from cloudkeep.backups.progress import Tracker
from cloudkeep.backups.restore.plan import Fetches, chunk_entries
from cloudkeep.backups.restore.write import Files, Piece, write_pieces
from cloudkeep.errors import RepositoryDamaged
from cloudkeep.repository.crypto import ID_SIZE
from cloudkeep.repository.index import FrameBlobs, frame_groups, numpy_module
from cloudkeep.repository.loader import MAX_RANGE_BYTES, LoadedFrame, PackRange, plan_ranges
from cloudkeep.repository.locks import RepositoryLock
from cloudkeep.repository.repository import BlobDamaged, Repository

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray

FETCH_THREADS = 4
#: The largest ranged read that merges frames from a folder of this machine
#: (``loader.plan_ranges``; a frame may be larger). Each fetch thread holds its range
#: as stored, decrypted and decompressed: half of the loader's 2 MiB took a fifth off a
#: restore's peak at the same speed. A remote store keeps the loader's 2 MiB: there
#: twice the requests cost their round trips.
LOCAL_RANGE_BYTES = 1024 * 1024
#: Chunk lists read together (4,096 chunks each), and groups of them read ahead.
LISTS_AHEAD = 8
LIST_GROUPS_AHEAD = 2
#: The largest chunk list a backup writes. A larger one (any blob a key holder names
#: as a chunk list, up to a 64 MiB frame) is damage, refused before it is read: the
#: lists read ahead then hold at most this much each.
MAX_CHUNK_LIST_SIZE = CHUNKS_PER_LIST_BLOB * CHUNK_LIST_ENTRY.size
LOCK_TIMEOUT_SECONDS = 600.0
#: The GIL switch interval while a restore fetches (Python's default is 5 ms): every
#: 8 KiB blob is re-hashed in a call that gives the GIL up, and waiting up to 5 ms to
#: get it back from a thread running Python stalled the fetch threads.
FETCH_SWITCH_INTERVAL = 0.0002

_switch_lock = threading.Lock()
_switch_state = {"depth": 0, "was": 0.005}  # nested and concurrent restores share one


@contextmanager
def quick_handoffs() -> Iterator[None]:
    """Hand the GIL over after ``FETCH_SWITCH_INTERVAL`` instead of Python's 5 ms."""
    with _switch_lock:
        if _switch_state["depth"] == 0:
            _switch_state["was"] = sys.getswitchinterval()
            sys.setswitchinterval(FETCH_SWITCH_INTERVAL)
        _switch_state["depth"] += 1
    try:
        yield
    finally:
        with _switch_lock:
            _switch_state["depth"] -= 1
            if _switch_state["depth"] == 0:
                sys.setswitchinterval(_switch_state["was"])


class RepositoryReader:
    """A restore's access to the repository; errors of the data become ``RepositoryDamaged``."""

    def __init__(self, repo: Repository) -> None:
        self._repo = repo
        #: The keyed hash that names a blob.
        self.blob_id = repo.blob_id
        #: The largest ranged read that merges frames.
        self.range_bytes = LOCAL_RANGE_BYTES if repo.store_is_local else MAX_RANGE_BYTES

    @contextmanager
    def opened(self) -> Iterator[None]:
        """Hold a shared lock (no prune meanwhile) with the index loaded."""
        with RepositoryLock(self._repo, exclusive=False, purpose="restore").acquire(
            LOCK_TIMEOUT_SECONDS
        ):
            self._repo.load_index()
            yield

    def chunk_lists(self, wanted: list[tuple[FileEntry, str]]) -> list[bytes]:
        """The chunk lists ``wanted`` names (a file and one chunk list id of it each),
        as stored, each re-hashed against its id; located together, few ranged reads."""
        ids: list[bytes] = []
        try:
            for entry, list_id in wanted:
                ids.append(_list_id(entry, list_id))
            found: dict[bytes, bytes] = {}
            frames = self._repo.locate(ids)
            for frame in frames:
                for blob_id, _, raw_length in frame.blobs:
                    if raw_length > MAX_CHUNK_LIST_SIZE:
                        path = wanted[ids.index(blob_id)][0].path
                        raise RepositoryDamaged(
                            f"cannot restore {path}: its chunk list {blob_id.hex()[:16]} "
                            f"holds {raw_length:,} bytes, more than the "
                            f"{MAX_CHUNK_LIST_SIZE:,} a backup writes"
                        )
            for span in plan_ranges(frames):
                for loaded in self._repo.load_range(span):
                    data = loaded.opened.data
                    for blob_id, inner_offset, raw_length in loaded.frame.blobs:
                        found[blob_id] = bytes(data[inner_offset : inner_offset + raw_length])
        except BlobDamaged as exc:
            path = wanted[ids.index(exc.blob_id) if exc.blob_id in ids else 0][0].path
            raise RepositoryDamaged(f"cannot restore {path}: {exc}") from exc
        return [found[blob_id] for blob_id in ids]

    def places(self, blob_ids: NDArray[np.void]) -> NDArray[np.uint32]:
        """(frame number, offset in the frame, size) of each blob (``MasterIndex.places``)."""
        try:
            return self._repo.index.places(blob_ids)
        except KeyError as exc:
            raise RepositoryDamaged(str(BlobDamaged(exc.args[0], "not in the index"))) from exc

    def frames(self, numbers: NDArray[np.uint32]) -> list[tuple[str, int, int]]:
        """(pack id, offset, length) of the frames numbered ``numbers``."""
        return self._repo.index.frames(numbers)

    def locate(self, blob_ids: Iterable[bytes]) -> list[FrameBlobs]:
        """The frames holding ``blob_ids``, in order of first need."""
        try:
            return self._repo.locate(blob_ids)
        except BlobDamaged as exc:
            raise RepositoryDamaged(str(exc)) from exc

    def load(self, span: PackRange) -> list[LoadedFrame]:
        """Read one range of a pack, open its frames and re-hash every wanted blob."""
        try:
            return self._repo.load_range(span)
        except BlobDamaged as exc:
            raise RepositoryDamaged(str(exc)) from exc


class ChunkLists:
    """The chunk lists of a batch's files, in file order, read ahead of the planning.

    ``LISTS_AHEAD`` lists at a time are read together (``RepositoryReader.chunk_lists``)
    in a thread of their own, ``LIST_GROUPS_AHEAD`` groups ahead, so the planning
    thread does not wait for each read. They are held as stored (36 bytes a chunk)
    and decoded one at a time, when planned.
    """

    def __init__(self, reader: RepositoryReader, batch: list[FileEntry]) -> None:
        self._reader = reader
        self._wanted = ((entry, list_id) for entry in batch for list_id in entry.content)
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="lists")
        self._pending: deque[tuple[list[FileEntry], Future[list[bytes]]]] = deque()
        self._ready: Iterator[tuple[FileEntry, bytes]] = iter(())
        for _ in range(LIST_GROUPS_AHEAD):
            self._read_ahead()

    def _read_ahead(self) -> None:
        group = list(islice(self._wanted, LISTS_AHEAD))
        if group:
            entries = [entry for entry, _ in group]
            self._pending.append((entries, self._pool.submit(self._reader.chunk_lists, group)))

    def next(self) -> NDArray[np.void]:
        """The batch's next chunk list (its files' ``content`` in order), as
        ``plan.chunk_entries``."""
        listed = next(self._ready, None)
        if listed is None:
            entries, raws = self._pending.popleft()
            self._ready = zip(entries, raws.result(), strict=True)
            self._read_ahead()
            listed = next(self._ready)
        entry, raw = listed
        try:
            return chunk_entries(raw)
        except ValueError as exc:
            raise RepositoryDamaged(f"cannot restore {entry.path}: {exc}") from exc

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


def _list_id(entry: FileEntry, list_id: str) -> bytes:
    try:
        return bytes.fromhex(list_id)
    except ValueError as exc:
        raise RepositoryDamaged(f"cannot restore {entry.path}: {exc}") from exc


class Located:
    """A planned slice's chunks located, in arrays: the distinct blobs (``blobs``), each
    one's place (frame number, offset in the frame, size: ``places``) and where it goes
    (``targets``), grouped by frame in the order the data first needs the frames.

    ``FrameBlobs`` member tuples are made a range at a time, by the job fetching it
    (``members``), so a slice holds no object per chunk.
    """

    def __init__(self, reader: RepositoryReader, fetches: Fetches) -> None:
        np = numpy_module()
        ids, files, offsets = fetches.arrays()
        self.blobs, first, inverse = np.unique(ids, return_index=True, return_inverse=True)
        inverse = inverse.reshape(-1)
        del ids
        self.places = reader.places(self.blobs)
        self._range_bytes = reader.range_bytes
        # The places each blob goes to: ``_targets[_first_target[b] : +_target_count[b]]``.
        by_blob = np.argsort(inverse, kind="stable")
        self._file = files[by_blob]
        self._offset = offsets[by_blob]
        del files, offsets, by_blob
        self._target_count = np.bincount(inverse, minlength=len(self.blobs))
        self._first_target = np.cumsum(self._target_count) - self._target_count
        del inverse
        # Frames in order of first need; a frame's blobs in order of their offset in it.
        numbers, self._members, self._ends = frame_groups(
            self.places[:, 0], first, within=self.places[:, 1]
        )
        heads = reader.frames(numbers)
        self.frames = [FrameBlobs(pack, offset, length, []) for pack, offset, length in heads]

    def ranges(self) -> list[tuple[PackRange, list[int]]]:
        """The ranged reads of the slice, each with the frame groups it reads."""
        group_of = {id(frame): group for group, frame in enumerate(self.frames)}
        return [
            (span, [group_of[id(frame)] for frame in span.frames])
            for span in plan_ranges(self.frames, self._range_bytes)
        ]

    def members(self, group: int) -> tuple[FrameBlobs, list[tuple[int, int, int, int]]]:
        """The frame of ``group`` with its member tuples, and per member: its
        (offset in the frame, size, file, offset in it) where it goes to one place,
        (offset in the frame, size, -1, blob) where it goes to several."""
        start = int(self._ends[group - 1]) if group else 0
        blobs = self._members[start : int(self._ends[group])]
        raw = self.blobs[blobs].tobytes()
        ids = [raw[at : at + ID_SIZE] for at in range(0, len(raw), ID_SIZE)]
        inner = self.places[blobs, 1].tolist()
        sizes = self.places[blobs, 2].tolist()
        counts = self._target_count[blobs].tolist()
        firsts = self._first_target[blobs]
        files = self._file[firsts].tolist()
        offsets = self._offset[firsts].tolist()
        head = self.frames[group]
        frame = FrameBlobs(
            head.pack_id, head.offset, head.length, list(zip(ids, inner, sizes, strict=True))
        )
        places = [
            (at, size, file, offset) if count == 1 else (at, size, -1, blob)
            for at, size, file, offset, count, blob in zip(
                inner, sizes, files, offsets, counts, blobs.tolist(), strict=True
            )
        ]
        return frame, places

    def targets(self, blob: int) -> list[tuple[int, int]]:
        """(file, offset) of every place the blob numbered ``blob`` goes to."""
        first = int(self._first_target[blob])
        end = first + int(self._target_count[blob])
        return list(
            zip(self._file[first:end].tolist(), self._offset[first:end].tolist(), strict=True)
        )


def start_fetches(
    pool: ThreadPoolExecutor,
    reader: RepositoryReader,
    fetches: Fetches,
    files: Files,
    tracker: Tracker,
) -> list[Future[None]]:
    """Submit the fetch-and-write jobs of one planned slice: a ranged read each, packs in
    the order the data first needs them."""
    if not fetches:
        return []
    located = Located(reader, fetches)
    return [
        pool.submit(fetch_range, reader, span, groups, located, files, tracker)
        for span, groups in located.ranges()
    ]


def fetch_range(
    reader: RepositoryReader,
    span: PackRange,
    groups: list[int],
    located: Located,
    files: Files,
    tracker: Tracker,
) -> None:
    """Fetch one range (every wanted blob in it verified) and write each blob to its places."""
    tracker.check_canceled()
    frames, places = zip(*(located.members(group) for group in groups), strict=True)
    pieces: list[Piece] = []
    loaded = reader.load(span._replace(frames=list(frames)))
    for frame, where in zip(loaded, places, strict=True):
        frame_pieces(frame, where, located, pieces)
    tracker.advance(write_pieces(files, pieces))


def frame_pieces(
    loaded: LoadedFrame,
    places: list[tuple[int, int, int, int]],
    located: Located,
    pieces: list[Piece],
) -> None:
    """Add the pieces of one loaded frame's blobs (each already re-hashed by the loader),
    ``places`` as ``Located.members`` gives them.

    Blobs that follow each other both in the frame and in one file become one
    piece: a frame of database pages is usually one piece, not one per page.
    """
    data = loaded.opened.data
    run_file, run_offset, run_end, inner_start, inner_end = -1, 0, 0, 0, 0
    for inner_offset, raw_length, number, file_offset in places:
        if number < 0:  # the same content at several places
            plain = data[inner_offset : inner_offset + raw_length]
            for target, target_offset in located.targets(file_offset):
                pieces.append(Piece(target, target_offset, plain))
            continue
        if number == run_file and file_offset == run_end and inner_offset == inner_end:
            run_end += raw_length
            inner_end += raw_length
            continue
        if run_file >= 0:
            pieces.append(Piece(run_file, run_offset, data[inner_start:inner_end]))
        run_file, run_offset, run_end = number, file_offset, file_offset + raw_length
        inner_start, inner_end = inner_offset, inner_offset + raw_length
    if run_file >= 0:
        pieces.append(Piece(run_file, run_offset, data[inner_start:inner_end]))
