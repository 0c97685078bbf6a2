"""Fetching blobs from the repository for a restore: ranged pack reads, every blob verified.

``RepositoryReader`` is everything a restore asks of the repository: its lock
and index, chunk lists, the keyed hash, where blobs are and the frames of a
ranged read. Every blob cut out of a frame is re-hashed against its keyed id:
the frame's member table is authenticated, but any key holder can write a frame
whose table lies about its content.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager

from cloudkeep.errors import RepositoryDamaged
from cloudkeep.repository.index import FrameBlobs
from cloudkeep.repository.locks import RepositoryLock
from cloudkeep.repository.packs import pack_name
from cloudkeep.repository.repository import BlobDamaged, FrameDamaged, OpenedFrame, Repository
from cloudkeep.snapshot.manifest import FileEntry, decode_chunk_list
from cloudkeep.snapshot.progress import Tracker
from cloudkeep.snapshot.restore.plan import ChunkTarget, PackRange, fetch_plan
from cloudkeep.snapshot.restore.write import Files, Piece, write_pieces
from cloudkeep.storage.base import ObjectNotFound, StorageError, StorageUnavailable

FETCH_THREADS = 4
LOCK_TIMEOUT_SECONDS = 600.0


class RepositoryReader:
    """A restore's access to the repository; errors of the data become ``RepositoryDamaged``."""

    def __init__(self, repo: Repository) -> None:
        self._repo = repo
        #: ``blob_in_frame(frame, blob_id, inner_offset, length, rehash=True)``: a blob cut
        #: out of its opened frame and re-hashed against its keyed id (``BlobDamaged``).
        self.blob_in_frame = repo.blob_in_frame

    @contextmanager
    def opened(self) -> Iterator[None]:
        """Hold a shared lock (no space reclaim meanwhile) with the index loaded."""
        with RepositoryLock(self._repo, exclusive=False, purpose="restore").acquire(
            LOCK_TIMEOUT_SECONDS
        ):
            self._repo.load_index()
            yield

    def chunk_list(self, entry: FileEntry, list_id: str) -> list[tuple[bytes, int]]:
        """The (blob id, length) of each chunk a chunk list of ``entry`` names, verified."""
        try:
            return decode_chunk_list(self._repo.read_blob(bytes.fromhex(list_id)))
        except (BlobDamaged, ValueError) as exc:
            raise RepositoryDamaged(f"cannot restore {entry.path}: {exc}") from exc

    @property
    def blob_id(self) -> Callable[[bytes | memoryview], bytes]:
        """The keyed hash that names a blob."""
        return self._repo.sealer.blob_id

    def locate(self, blob_ids: Iterable[bytes]) -> list[FrameBlobs]:
        """The frames holding ``blob_ids``, in order of first need."""
        try:
            return self._repo.index.frames_of(blob_ids)
        except KeyError as exc:
            raise RepositoryDamaged(f"blob {exc.args[0].hex()[:16]} is not in the index") from None

    def frames(self, job: PackRange) -> list[OpenedFrame]:
        """Read one range of a pack and open (decrypt, decompress) the frames in it."""
        pack_id, start, length, frames = job
        try:
            data = self._repo.storage.get(pack_name(pack_id), start, length)
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
            return self._repo.open_frames(
                [
                    view[frame.offset - start : frame.offset - start + frame.length]
                    for frame in frames
                ]
            )
        except FrameDamaged as exc:
            raise RepositoryDamaged(
                f"a frame at {frames[0].offset}+ in pack {pack_id[:16]} is damaged: {exc}"
            ) from exc


def start_fetches(
    pool: ThreadPoolExecutor,
    reader: RepositoryReader,
    targets: dict[bytes, list[ChunkTarget]],
    files: Files,
    tracker: Tracker,
) -> list[Future[None]]:
    """Submit the fetch-and-write jobs of one planned slice: a ranged read each."""
    plan = fetch_plan(targets, reader.locate(targets))
    return [
        pool.submit(fetch_range, reader, job, plan.targets, files, tracker) for job in plan.ranges
    ]


def fetch_range(
    reader: RepositoryReader,
    job: PackRange,
    targets: dict[bytes, list[ChunkTarget]],
    files: Files,
    tracker: Tracker,
) -> None:
    """Fetch one range, verify every wanted blob in it and write each to its places."""
    tracker.check_canceled()
    opened = reader.frames(job)
    pieces: list[Piece] = []
    try:
        for frame, located in zip(opened, job.frames, strict=True):
            frame_pieces(reader, frame, located.blobs, targets, pieces)
    except BlobDamaged as exc:
        raise RepositoryDamaged(f"{exc} (in pack {job.pack_id[:16]})") from exc
    tracker.advance(write_pieces(files, pieces))


def frame_pieces(
    reader: RepositoryReader,
    frame: OpenedFrame,
    wanted: list[tuple[bytes, int, int]],
    targets: dict[bytes, list[ChunkTarget]],
    pieces: list[Piece],
) -> None:
    """Add the pieces of one opened frame's ``wanted`` blobs ((id, offset in the frame,
    length) each), every blob re-hashed against its keyed id first.

    Blobs that follow each other both in the frame and in one file become one
    piece: a frame of database pages is usually one piece, not one per page.
    """
    blob_in_frame, data = reader.blob_in_frame, frame.data
    run_file, run_offset, run_end, inner_start, inner_end = -1, 0, 0, 0, 0
    for blob_id, inner_offset, raw_length in wanted:
        plain = blob_in_frame(frame, blob_id, inner_offset, raw_length, rehash=True)
        places = targets[blob_id]
        if len(places) != 1:  # the same content at several places (or none)
            for number, file_offset in places:
                pieces.append(Piece(number, file_offset, plain))
            continue
        number, file_offset = places[0]
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
