"""Rebuilding the index from the packs' own headers.

Every pack ends with a sealed header listing its blobs, so the index is redundant:
if index files are deleted or damaged, the backups are not lost. ``repair_index``
reads each pack's trailer and header with two ranged reads (no blob data), writes
one complete new index of every pack whose header opens, and only then deletes the
index files that do not read (a crash in between leaves a usable index). It runs
under the exclusive lock, so no backup or reclaim changes packs meanwhile.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass, field

from cloudkeep.errors import RepositoryDamaged
from cloudkeep.repository.crypto import DecryptionFailed
from cloudkeep.repository.index import IndexFile
from cloudkeep.repository.locks import RepositoryLock
from cloudkeep.repository.packs import HEADER_AAD, PackEntry, PackFormatError, decode_header
from cloudkeep.repository.repository import Repository
from cloudkeep.storage.base import ObjectInfo, ObjectNotFound, StorageError, StorageUnavailable

_TRAILER = struct.Struct("<I")
PACKS_PER_INDEX_FILE = 4000
#: A pack header lists 49 bytes per blob: 16 MiB is ~340,000 blobs, far more than a
#: pack holds; a hostile object claiming more is not read.
MAX_HEADER_BYTES = 16 * 1024 * 1024
_PACK_NAME = re.compile(r"data/([0-9a-f]{2})/(\1[0-9a-f]{62})")


@dataclass
class RepairReport:
    packs_indexed: int = 0
    blobs_indexed: int = 0
    index_files_written: int = 0
    index_files_removed: int = 0
    unreadable_packs: list[str] = field(default_factory=list)


def stored_packs(repo: Repository) -> dict[str, ObjectInfo]:
    """Pack id → listing of every object under ``data/`` named as a pack is named.

    Anything else there is not ours to read or delete.
    """
    packs = {}
    for info in repo.storage.list("data/"):
        named = _PACK_NAME.fullmatch(info.name)
        if named:
            packs[named.group(2)] = info
    return packs


def pack_entries(repo: Repository, name: str, size: int) -> list[PackEntry]:
    """The header of one pack, read with two ranged reads and checked for sanity."""
    if size < _TRAILER.size:
        raise PackFormatError("pack shorter than its trailer")
    (header_len,) = _TRAILER.unpack(repo.storage.get(name, size - _TRAILER.size, _TRAILER.size))
    start = size - _TRAILER.size - header_len
    if start < 0:
        raise PackFormatError("pack header length points before the start of the pack")
    if header_len > MAX_HEADER_BYTES:
        raise PackFormatError(f"pack header claims {header_len:,} bytes")
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
    for pack_id, info in stored_packs(repo).items():
        try:
            packs[pack_id] = pack_entries(repo, info.name, info.size)
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
