"""Rebuilding the index from the packs' own headers.

Every pack ends with a sealed header listing its blobs, so the index is redundant:
if index files are deleted or damaged, the backups are not lost. ``repair_index``
reads each pack's trailer and header with two ranged reads (no blob data), writes
one complete new index of every pack whose header opens, and only then deletes the
index files that do not read (a crash in between leaves a usable index). It runs
under the exclusive lock, so no backup or reclaim changes packs meanwhile.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from cloudkeep.errors import RepositoryDamaged
from cloudkeep.repository.crypto import DecryptionFailed
from cloudkeep.repository.index import IndexFile
from cloudkeep.repository.locks import RepositoryLock
from cloudkeep.repository.packs import (
    HEADER_AAD,
    PackEntry,
    PackFormatError,
    decode_header,
    header_start,
    pack_name,
)
from cloudkeep.repository.repository import Repository
from cloudkeep.storage.base import ObjectNotFound, StorageError, StorageUnavailable

_TRAILER = struct.Struct("<I")
# ~1 GiB of packs: an index file of at most ~60 MiB even for data compressing 10:1,
# far under what a reader accepts (repository.untrusted.MAX_STORED_SIZE).
PACKS_PER_INDEX_FILE = 256
#: A pack header lists 49 bytes per blob: 16 MiB is ~340,000 blobs, far more than a
#: pack holds; a hostile object claiming more is not read.
MAX_HEADER_BYTES = 16 * 1024 * 1024


@dataclass
class RepairReport:
    packs_indexed: int = 0
    blobs_indexed: int = 0
    index_files_written: int = 0
    index_files_removed: int = 0
    unreadable_packs: list[str] = field(default_factory=list)


def pack_entries(repo: Repository, name: str, size: int) -> list[PackEntry]:
    """The header of one pack, read with two ranged reads and checked for sanity."""
    if size < _TRAILER.size:
        raise PackFormatError("pack shorter than its trailer")
    (header_len,) = _TRAILER.unpack(repo.storage.get(name, size - _TRAILER.size, _TRAILER.size))
    if header_len > MAX_HEADER_BYTES:
        raise PackFormatError(f"pack header claims {header_len:,} bytes")
    start = header_start(size, header_len)
    sealed = repo.storage.get(name, start, header_len)
    entries = decode_header(repo.sealer.open(sealed, HEADER_AAD))
    for entry in entries:
        if entry.offset + entry.length > start:
            raise PackFormatError("pack header entry points past the blob area")
    return entries


def repair_index(repo: Repository, lock_timeout: float = 30.0) -> RepairReport:
    with RepositoryLock(repo, exclusive=True, purpose="index repair").acquire(lock_timeout):
        return _repair(repo)


def _repair(repo: Repository) -> RepairReport:
    report = RepairReport()
    repo.read_cache = False  # judge what the store holds, not our cached copies
    packs: dict[str, list[PackEntry]] = {}
    for pack_id, info in repo.list_packs().items():
        try:
            packs[pack_id] = pack_entries(repo, pack_name(pack_id), info.size)
        except StorageUnavailable:
            raise
        except (StorageError, ObjectNotFound, DecryptionFailed, PackFormatError, ValueError):
            report.unreadable_packs.append(pack_id)
    old_names = repo.list_files("index")
    new_names: set[str] = set()
    pack_ids = sorted(packs)
    for start in range(0, len(pack_ids), PACKS_PER_INDEX_FILE):
        chunk = pack_ids[start : start + PACKS_PER_INDEX_FILE]
        new_names.add(repo.write_index_file(IndexFile({p: packs[p] for p in chunk})))
        report.index_files_written += 1
    report.packs_indexed = len(packs)
    report.blobs_indexed = sum(len(entries) for entries in packs.values())
    # Index files that still read stay (they may name blobs of a pack whose header
    # is damaged); the ones that do not read are replaced by the new index.
    for name in old_names:
        if name in new_names:
            continue
        try:
            repo.read_index_file(name)
        except (RepositoryDamaged, ObjectNotFound):
            repo.delete_file("index", name)
            report.index_files_removed += 1
    report.unreadable_packs.sort()
    return report
