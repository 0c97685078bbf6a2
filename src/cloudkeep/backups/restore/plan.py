"""What a restore creates, and which chunk goes to which offset of which file.

A restore plans before it writes, one slice of the data at a time so memory
stays bounded: the entries of the tree (``TreePlan``), then per batch of files
the chunks each file is made of (``SlicePlan``), split into chunks to look for
in the live copy first (``FilePlan``) and chunks to fetch (``Fetches``, in arrays),
whose frames are read from the packs in few ranged reads (``loader.plan_ranges``).
Files are named by their number in their batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, TypeAlias

from cloudkeep.backups.manifest import CHUNK_LIST_ENTRY, FileEntry, Manifest
from cloudkeep.errors import RepositoryDamaged
from cloudkeep.repository.crypto import ID_SIZE
from cloudkeep.repository.index import numpy_module

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray

FILES_PER_BATCH = 256
CHUNKS_PER_BATCH = 16_384  # 128 MiB of 8 KiB pages per slice; two slices live at once
# Slices start small and double: fetching starts after one chunk list is read, and
# each slice is planned while the previous (half as big) one is being fetched.
FIRST_BATCH_CHUNKS = 4_096


#: A chunk to look for at its place in a live file, used if it hashes to the id:
#: (offset, length, blob id).
LocalChunk: TypeAlias = tuple[int, int, bytes]


def chunk_entries(raw: bytes) -> NDArray[np.void]:
    """A chunk list as stored, as an array of (``id``, ``size``) items (no object per
    chunk); ``ValueError`` if it does not hold whole entries."""
    if len(raw) % CHUNK_LIST_ENTRY.size:
        raise ValueError("chunk list has a partial entry")
    return numpy_module().frombuffer(raw, _chunk_dtype())


@cache
def _chunk_dtype() -> np.dtype:
    """``manifest.CHUNK_LIST_ENTRY`` (blob id, size)."""
    return numpy_module().dtype({"names": ["id", "size"], "formats": ["V32", "<u4"]})


class Fetches:
    """The chunks of a slice to fetch: blob id, file of the batch and offset in it each,
    kept in arrays as planned (44 bytes a chunk, no object per chunk)."""

    __slots__ = ("_files", "_ids", "_offsets", "count")

    def __init__(self) -> None:
        self._ids: list[NDArray[np.void]] = []
        self._files: list[tuple[int, int]] = []  # (file, chunks) of each part
        self._offsets: list[NDArray[np.uint64]] = []
        self.count = 0

    def __bool__(self) -> bool:
        return self.count > 0

    def add(self, file: int, ids: NDArray[np.void], offsets: NDArray[np.uint64]) -> None:
        """Fetch the blobs ``ids`` (32-byte items) to ``offsets`` of ``file``."""
        if len(ids):
            self._ids.append(ids)
            self._files.append((file, len(ids)))
            self._offsets.append(offsets)
            self.count += len(ids)

    def arrays(self) -> tuple[NDArray[np.void], NDArray[np.uint32], NDArray[np.uint64]]:
        """(blob ids, files, offsets) of every chunk, in the order planned."""
        np = numpy_module()
        if not self.count:
            return np.empty(0, "V32"), np.empty(0, np.uint32), np.empty(0, np.uint64)
        files = np.repeat(
            np.array([file for file, _ in self._files], np.uint32),
            [count for _, count in self._files],
        )
        return np.concatenate(self._ids), files, np.concatenate(self._offsets)


@dataclass(slots=True)
class FilePlan:
    """The chunks of one file looked for in its live copy ``source`` before any is fetched."""

    file: int
    source: Path
    chunks: list[LocalChunk] = field(default_factory=list)


@dataclass(slots=True)
class SlicePlan:
    """One slice of a batch: chunks to fetch and, per file, chunks to look for locally
    first; ``chunks`` counts both."""

    fetch: Fetches = field(default_factory=Fetches)
    reuse: dict[int, FilePlan] = field(default_factory=dict)
    chunks: int = 0

    def add_chunks(
        self, file: int, offset: int, entries: NDArray[np.void], source: Path | None
    ) -> int:
        """Place the chunks ``entries`` (``chunk_entries``) one after another from ``offset``
        of ``file``: looked for in ``source`` first if there is one. Returns where they end."""
        np = numpy_module()
        sizes = entries["size"].astype(np.uint64)
        ends = np.cumsum(sizes)
        ends += offset
        starts = ends - sizes
        if source is None:
            self.fetch.add(file, entries["id"], starts)
        else:
            plan = self.reuse.get(file)
            if plan is None:
                plan = self.reuse[file] = FilePlan(file, source)
            raw = entries["id"].tobytes()
            ids = [raw[at : at + ID_SIZE] for at in range(0, len(raw), ID_SIZE)]
            plan.chunks += zip(starts.tolist(), sizes.tolist(), ids, strict=True)
        self.chunks += len(entries)
        return int(ends[-1]) if len(entries) else offset

    def add_missing(self, file: int, missing: list[LocalChunk]) -> None:
        """Fetch the chunks of ``file`` its live copy did not hold."""
        if missing:
            np = numpy_module()
            ids = np.frombuffer(b"".join(blob_id for _, _, blob_id in missing), "V32")
            offsets = np.array([offset for offset, _, _ in missing], np.uint64)
            self.fetch.add(file, ids, offsets)

    def empty(self) -> bool:
        return not self.fetch and not self.reuse


def next_slice_limit(limit: int) -> int:
    """The chunks the next slice may hold: twice the last, up to ``CHUNKS_PER_BATCH``."""
    return min(2 * limit, CHUNKS_PER_BATCH)


def check_file_size(entry: FileEntry, end: int, whole: bool = True) -> None:
    """A file's chunk lists must cover it exactly: no hole and nothing past its end.
    Not ``whole`` (some of its lists planned): only nothing past its end, so no
    offset grows past a file's size before the check at its end."""
    if end > entry.size or (whole and end != entry.size):
        raise RepositoryDamaged(f"the chunk list of {entry.path} does not add up")


@dataclass(slots=True)
class TreePlan:
    """The entries of a backup in the order a restore handles them."""

    #: Folders and symlinks, created first, in the backup's order.
    links_and_folders: list[FileEntry]
    #: Regular files, in batches of at most ``FILES_PER_BATCH``.
    batches: list[list[FileEntry]]
    #: Files and folders whose mode and time are set last, deepest first.
    finishing: list[FileEntry]


def plan_tree(manifest: Manifest) -> TreePlan:
    links_and_folders: list[FileEntry] = []
    files: list[FileEntry] = []
    for entry in manifest.files:
        if entry.type == "file":
            files.append(entry)
        elif entry.type in ("dir", "symlink"):
            links_and_folders.append(entry)
    batches = [
        files[start : start + FILES_PER_BATCH] for start in range(0, len(files), FILES_PER_BATCH)
    ]
    finishing = [entry for entry in manifest.files if entry.type in ("file", "dir")]
    finishing.sort(key=lambda entry: entry.path.count("/"), reverse=True)
    return TreePlan(links_and_folders, batches, finishing)
