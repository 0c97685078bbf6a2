"""Collecting sealed frames into packs and uploading them in the background."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING

from cloudkeep.repository.frames import FRAME_TARGET_SIZE, SealedFrame
from cloudkeep.repository.index import IndexFile, MasterIndex
from cloudkeep.repository.packs import BlobType, FrameMember, PackBuilder, encode_header

if TYPE_CHECKING:
    from cloudkeep.repository.repository import Repository

#: An index file per 64 packs (256 MiB) uploaded.
PACKS_PER_INDEX_FLUSH = 64
#: The first pack is sealed at this share of the pack size: the store starts
#: receiving sooner, which a daily backup over a slow link waits on.
FIRST_PACK_SHARE = 4
#: Waiting this long for an upload slot means the store takes packs slower than they
#: are sealed: the next frames are compressed harder (``FrameCodec.smaller``); a slot
#: free at once means the opposite (``faster``). A local disk's fsync keeps the wait
#: far below it.
SLOW_STORE_WAIT = 0.05
#: A pack passes its size by at most this much: a larger frame (a chunk of a plain
#: file, up to 4 MiB) that would take it further starts the next pack, so packs held
#: waiting and the uploaders' buffers stay near the pack size.
PACK_OVERSHOOT = FRAME_TARGET_SIZE


class PackWriter:
    """Collects sealed blobs into packs and uploads them in the background.

    Uploads overlap with chunking (two at a time, bounded so memory stays flat).
    ``flush`` uploads the partial pack and writes the index of everything
    uploaded, so a manifest written afterwards never points at unindexed data.
    """

    def __init__(
        self,
        repo: Repository,
        pack_size: int,
        known: MasterIndex | None = None,
        max_pending_uploads: int = 2,
    ) -> None:
        self._repo = repo
        # What counts as stored: the packs a prune keeps, else the repository's index
        # (looked up each time: ``load_index`` may replace it after the writer is made).
        self._known = known
        self._pack_size = pack_size
        self._next_pack_size = max(1, pack_size // FIRST_PACK_SHARE)
        self._lock = threading.Lock()
        self._uploads_lock = threading.Lock()
        self._builder = PackBuilder()
        self._pending: set[bytes] = set()
        self._uploads: list[Future[None]] = []
        self._slots = threading.BoundedSemaphore(max_pending_uploads)
        self._executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="upload")
        self._unindexed = IndexFile()
        self._index_files: list[str] = []
        self.uploaded_bytes = 0

    @property
    def _index(self) -> MasterIndex:
        return self._repo.index if self._known is None else self._known

    def known(self, blob_id: bytes) -> bool:
        """Already stored, or queued for storing by this writer."""
        return blob_id in self._index or blob_id in self._pending

    def claim_new(self, blob_ids: list[bytes]) -> list[int]:
        """Positions of the ids nobody stored or claimed yet; claims them (one lock per batch).

        A claimed blob must then be passed to ``add_claimed`` by the claimer.
        """
        pending = self._pending
        fresh = []
        with self._lock:
            for position in self._index.missing(blob_ids):
                blob_id = blob_ids[position]
                if blob_id not in pending:
                    pending.add(blob_id)
                    fresh.append(position)
        return fresh

    def add(self, blob_type: BlobType, blob_id: bytes, data: bytes | memoryview) -> bool:
        """Seal and queue one blob in a frame of its own; False if it is known already."""
        if not self.claim_new([blob_id]):
            return False
        self.add_claimed(blob_type, self._repo.seal_frames([blob_id], [data]))
        return True

    def add_frame(
        self, blob_type: BlobType, sealed: list[bytes], members: list[FrameMember]
    ) -> bool:
        """Queue an already sealed frame (prune copies them) unless all of it is known."""
        ids = [member.blob_id for member in members]
        with self._lock:
            if all(ids[at] in self._pending for at in self._index.missing(ids)):
                return False
            self._pending.update(ids)
        self.add_claimed(blob_type, [(sealed, members)])
        return True

    def add_claimed(self, blob_type: BlobType, frames: list[SealedFrame]) -> None:
        """Queue sealed frames whose blobs the caller claimed: one lock round per batch."""
        full: list[PackBuilder] = []
        with self._lock:
            for sealed, members in frames:
                builder = self._builder
                if builder.entries and (
                    builder.size + sum(map(len, sealed)) > self._next_pack_size + PACK_OVERSHOOT
                ):
                    full.append(builder)
                    self._builder = PackBuilder()
                    self._next_pack_size = self._pack_size
                self._builder.add_frame(blob_type, sealed, members)
                if self._builder.size >= self._next_pack_size:
                    full.append(self._builder)
                    self._builder = PackBuilder()
                    self._next_pack_size = self._pack_size
        for builder in full:
            self._submit(builder)

    def _submit(self, builder: PackBuilder) -> None:
        # Two sealing threads submit packs: the list of uploads has its own lock, as
        # a lost future would let flush() index before that pack is uploaded.
        self._raise_failed_uploads()
        self._take_slot()
        future = self._executor.submit(self._upload, builder)
        future.add_done_callback(lambda _f: self._slots.release())
        with self._uploads_lock:
            self._uploads.append(future)

    def _take_slot(self) -> None:
        """Wait for an upload slot, pacing the compression level by who waits on whom."""
        if self._slots.acquire(blocking=False):
            self._repo.codec.faster()
            return
        started = time.monotonic()
        self._slots.acquire()
        if time.monotonic() - started >= SLOW_STORE_WAIT:
            self._repo.codec.smaller()

    def _upload(self, builder: PackBuilder) -> None:
        pack_id, content = builder.finish(self._repo.sealer)
        self._repo.put_pack(pack_id, content)
        entries = builder.entries
        encoded = encode_header(entries)  # kept encoded until its index file is written
        with self._lock:
            self._index.add_pack(pack_id, entries)
            self._pending.difference_update([entry.blob_id for entry in entries])
            self._unindexed.encoded[pack_id] = encoded
            self.uploaded_bytes += len(content)
            full = len(self._unindexed.encoded) >= PACKS_PER_INDEX_FLUSH
            if full:
                unindexed, self._unindexed = self._unindexed, IndexFile()
        if full:
            # Index as we go: bounded memory, and what was uploaded before a crash
            # is found (and deduplicated against) by the next backup.
            name = self._repo.write_index_file(unindexed)
            with self._lock:
                self._index_files.append(name)

    def _raise_failed_uploads(self) -> None:
        with self._uploads_lock:
            done = [future for future in self._uploads if future.done()]
            self._uploads = [future for future in self._uploads if not future.done()]
        for future in done:
            future.result()  # re-raises the upload's error here, in the caller

    def flush(self, uploaded: Callable[[], object] | None = None) -> list[str]:
        """Upload everything queued and index it; returns the new index file names.

        ``uploaded`` is called once every pack is stored, before the index is written.
        """
        with self._lock:
            builder, self._builder = self._builder, PackBuilder()
        if builder.entries:
            self._submit(builder)
        with self._uploads_lock:
            uploads, self._uploads = self._uploads, []
        for future in uploads:
            future.result()
        if uploaded is not None:
            uploaded()
        with self._lock:
            unindexed, self._unindexed = self._unindexed, IndexFile()
        if unindexed.encoded:
            self._index_files.append(self._repo.write_index_file(unindexed))
        return list(self._index_files)

    def close(self) -> None:
        """Stop the upload threads (after flush, or abandoning queued work on cancel)."""
        self._executor.shutdown(wait=True, cancel_futures=True)

    def unindexed_pack_ids(self) -> list[str]:
        """Packs uploaded since the last flush: garbage if the backup is abandoned."""
        with self._lock:
            return list(self._unindexed.encoded)
