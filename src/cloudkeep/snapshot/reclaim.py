"""Deleting backups and reclaiming the space no remaining backup uses.

Deleting a backup removes its manifest (safe at any time). Reclaiming runs
under the exclusive repository lock, so no backup can be deduplicating
against a pack while it goes away. Crash-safe order: (1) repack still-used
blobs of mostly-unused packs into new packs, (2) write a complete new index,
(3) delete the old index files, (4) delete packs no index mentions. A crash
after any step leaves an index that only names existing packs; a rerun
finishes the job.
"""

from __future__ import annotations

import contextlib
import logging

from cloudkeep.errors import Busy, RepositoryDamaged
from cloudkeep.repository.index import IndexFile, MasterIndex
from cloudkeep.repository.locks import RepositoryLock
from cloudkeep.repository.packs import FrameMember, PackEntry, frames_of, pack_name, read_header
from cloudkeep.repository.repository import BlobDamaged, FrameDamaged, Repository
from cloudkeep.snapshot.usage import blob_users, load_manifests
from cloudkeep.storage.base import ObjectNotFound

log = logging.getLogger(__name__)
REPACK_WHEN_UNUSED_FRACTION = 0.2
# ~1 GiB of packs: an index file of at most ~60 MiB even for data compressing 10:1,
# far under what a reader accepts (repository.untrusted.MAX_STORED_SIZE).
PACKS_PER_INDEX_FILE = 256


class ReclaimReport:
    def __init__(self) -> None:
        self.packs_deleted = 0
        self.packs_repacked = 0
        self.bytes_freed = 0


def delete_backup(repo: Repository, backup_id: str) -> None:
    repo.delete_file("snapshots", backup_id)


def reclaim(repo: Repository, lock_timeout: float = 30.0) -> ReclaimReport:
    with RepositoryLock(repo, exclusive=True, purpose="space reclaim").acquire(lock_timeout):
        return _reclaim(repo)


def try_reclaim(repo: Repository, lock_timeout: float = 30.0) -> ReclaimReport | None:
    """Reclaim now, or leave it for the next delete if other clients hold the repository."""
    try:
        return reclaim(repo, lock_timeout)
    except Busy as exc:
        log.info("space reclaim postponed: %s", exc)
        return None


def _reclaim(repo: Repository) -> ReclaimReport:
    report = ReclaimReport()
    index_names = repo.list_files("index")
    indexed: dict[str, list[PackEntry]] = {}
    for name in index_names:
        for pack_id, entries in repo.read_index_file(name).packs.items():
            indexed.setdefault(pack_id, entries)
    index = MasterIndex()
    for pack_id, entries in indexed.items():
        index.add_pack(pack_id, entries)
    repo.index = index
    manifests, broken = load_manifests(repo)
    if broken:
        raise RepositoryDamaged(
            "space reclaim stopped: some backups are unreadable, so what they use is unknown "
            f"({', '.join(sorted(broken))}); run 'cloudkeep check'"
        )
    users, problems = blob_users(repo, manifests)
    if problems:
        raise RepositoryDamaged(
            "space reclaim stopped: the content lists of some backups are unreadable; "
            "run 'cloudkeep check'"
        )
    used = set(users)
    stored = repo.list_packs()

    # A frame is the unit of storage: it stays (whole) while any blob in it is used.
    keep: dict[str, list[PackEntry]] = {}
    seen: set[bytes] = set()
    to_repack: list[str] = []
    for pack_id, entries in indexed.items():
        if pack_id not in stored:
            continue  # already gone; its blobs are reported by check
        frames = frames_of(entries)
        live_bytes = sum(
            length
            for (_offset, length), members in frames.items()
            if any(m.blob_id in used and m.blob_id not in seen for m in members)
        )
        if not live_bytes:
            continue
        if sum(length for _offset, length in frames) - live_bytes > (
            REPACK_WHEN_UNUSED_FRACTION * stored[pack_id]
        ):
            to_repack.append(pack_id)
        else:
            keep[pack_id] = entries
            seen.update(e.blob_id for e in entries)

    writer = repo.pack_writer()
    repo.index = MasterIndex()
    for pack_id, entries in keep.items():
        repo.index.add_pack(pack_id, entries)
    try:
        for pack_id in to_repack:
            content = memoryview(repo.read_pack(pack_id, stored[pack_id]))
            for (offset, length), members in frames_of(read_header(content, repo.sealer)).items():
                if not any(m.blob_id in used and m.blob_id not in repo.index for m in members):
                    continue
                sealed = content[offset : offset + length]
                try:  # never copy damage forward
                    frame = repo.open_frame(sealed)
                    for m in members:
                        repo.blob_in_frame(
                            frame, m.blob_id, m.inner_offset, m.raw_length, rehash=True
                        )
                except (FrameDamaged, BlobDamaged) as exc:
                    raise RepositoryDamaged(
                        f"space reclaim stopped: pack {pack_id[:16]} holds damaged data "
                        f"({exc}); run 'cloudkeep check'"
                    ) from exc
                writer.add_frame(
                    members[0].type,
                    [bytes(sealed)],
                    [FrameMember(m.blob_id, m.inner_offset, m.raw_length) for m in members],
                )
            report.packs_repacked += 1
        new_index_names = set(writer.flush())
    finally:
        writer.close()
    for pack_id in writer.flushed_pack_ids():
        keep[pack_id] = []  # already indexed by the writer's own index file

    pack_ids = [p for p, entries in keep.items() if entries]
    for start in range(0, len(pack_ids), PACKS_PER_INDEX_FILE):
        chunk = pack_ids[start : start + PACKS_PER_INDEX_FILE]
        new_index_names.add(repo.write_index_file(IndexFile({p: keep[p] for p in chunk})))
    for name in index_names:
        if name not in new_index_names:
            repo.delete_file("index", name)
    for pack_id, size in stored.items():
        if pack_id not in keep:
            with contextlib.suppress(ObjectNotFound):
                repo.storage.delete(pack_name(pack_id))
            report.packs_deleted += 1
            report.bytes_freed += size
    return report
