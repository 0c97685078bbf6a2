"""Deleting backups and reclaiming the space no remaining backup uses.

Deleting a backup removes its manifest (safe at any time). Reclaiming runs
under the exclusive repository lock, so no backup can be deduplicating
against a pack while it goes away. It first accounts for everything in
``data/``: packs no index names (a lost index file, an interrupted or
in-flight backup) have their headers read and are indexed, so their blobs
count; objects that are not readable packs are left alone. It refuses when a
backup needs a blob found in no stored pack. Packs no index named that are
younger than the safety margin (store time) are kept whatever they hold, and
left unindexed unless a backup uses them: they may belong to a backup in flight.

Crash-safe order: (1) repack still-used blobs of mostly-unused packs into new
packs, (2) write a complete new index, (3) delete the old index files, (4)
delete unneeded packs in batches. Before (1), (3) and every batch of (4) it
checks that our lock is still held, no other client holds a live lock and no
backup was saved since the manifests were read (otherwise it stops and a later
reclaim finishes); each deletion also needs the lock held. A crash after any
step leaves an index that only names existing packs, and packs no index names
are indexed again by the next reclaim.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

from cloudkeep.errors import Busy, ConfigurationError, RepositoryDamaged
from cloudkeep.repository.crypto import DecryptionFailed
from cloudkeep.repository.index import IndexFile, MasterIndex
from cloudkeep.repository.locks import LockTiming, RepositoryLock
from cloudkeep.repository.packs import (
    FrameMember,
    PackEntry,
    PackFormatError,
    frames_of,
    pack_id_of,
    pack_name,
    read_header,
)
from cloudkeep.repository.repository import BlobDamaged, FrameDamaged, Repository
from cloudkeep.snapshot.repair import PACKS_PER_INDEX_FILE
from cloudkeep.snapshot.usage import blob_users, load_manifests
from cloudkeep.storage.base import ObjectInfo, ObjectNotFound, StorageError, StorageUnavailable

__all__ = ["PACKS_PER_INDEX_FILE", "ReclaimReport", "delete_backup", "reclaim", "try_reclaim"]

log = logging.getLogger(__name__)
REPACK_WHEN_UNUSED_FRACTION = 0.2
#: Twice the largest pack size a config may set, plus a frame: nothing larger is a pack.
MAX_ADOPTED_PACK = 192 * 1024 * 1024
DELETE_BATCH = 64
ENV_MARGIN = "CLOUDKEEP_RECLAIM_MARGIN"
#: Packs no index names are kept this long (store time): kopia keeps unreferenced
#: blobs 2 h (BlobDeleteMinAge); a backup in flight indexes its packs every 64 packs.
DEFAULT_MARGIN = 3600.0
LAPSED = "this client's lock lapsed (suspended or cut off from the store)"


def reclaim_margin(environ: Mapping[str, str] | None = None) -> float:
    env = os.environ if environ is None else environ
    raw = env.get(ENV_MARGIN, "").strip()
    if not raw:
        return DEFAULT_MARGIN
    try:
        margin = float(raw)
    except ValueError:
        raise ConfigurationError(f"{ENV_MARGIN}={raw!r} is not a number") from None
    if not margin >= 0:
        raise ConfigurationError(f"{ENV_MARGIN} must be zero or more seconds")
    return margin


class ReclaimReport:
    def __init__(self) -> None:
        self.packs_deleted = 0
        self.packs_repacked = 0
        self.bytes_freed = 0
        self.packs_adopted = 0  # packs no index named, indexed from their headers
        self.stopped: str | None = None  # why deleting stopped early (a later run finishes)


def delete_backup(repo: Repository, backup_id: str) -> None:
    repo.delete_file("snapshots", backup_id)


def reclaim(repo: Repository, lock_timeout: float | None = None) -> ReclaimReport:
    timing = LockTiming.from_env()
    margin = reclaim_margin()
    wait = timing.reclaim_wait if lock_timeout is None else lock_timeout
    lock = RepositoryLock(repo, exclusive=True, purpose="space reclaim", timing=timing)
    with lock.acquire(wait):
        return _reclaim(repo, lock, margin)


def try_reclaim(repo: Repository, lock_timeout: float | None = None) -> ReclaimReport | None:
    """Reclaim now, or leave it for the next delete if other clients hold the repository."""
    try:
        return reclaim(repo, lock_timeout)
    except Busy as exc:
        log.info("space reclaim postponed: %s", exc)
        return None


def _stop_reason(repo: Repository, lock: RepositoryLock, known: set[str]) -> str | None:
    """Why deleting must stop now, if it must: right before every batch of deletions."""
    lock.refresh()
    if not lock.held():
        return LAPSED
    conflicts = lock.conflicts()
    if conflicts:
        return f"other clients hold the repository ({', '.join(sorted(set(conflicts)))})"
    if set(repo.list_files("snapshots")) - known:
        return "a backup was saved meanwhile"
    return None


def _adopt(
    repo: Repository, listing: dict[str, ObjectInfo], pack_ids: list[str]
) -> tuple[dict[str, list[PackEntry]], list[str]]:
    """Headers of packs no index names; and those that are not packs of this repository.

    Each is read whole and must hash to its name: a keyless writer could otherwise
    plant a copy of a real pack's header over garbage under a new name, and
    reclaim, counting the copy as holding those blobs, would repack or delete the
    real pack. Adopting is rare (after a crash or a lost index file), so the
    download is worth it; objects larger than any pack are not read.
    """
    adopted: dict[str, list[PackEntry]] = {}
    unreadable: list[str] = []
    for pack_id in pack_ids:
        info = listing[pack_id]
        try:
            if info.size > MAX_ADOPTED_PACK:
                raise PackFormatError(f"{info.size:,} bytes is larger than any pack")
            content = repo.read_pack(pack_id, info.size)
            if pack_id_of(content) != pack_id:
                raise PackFormatError("content does not match its name")
            adopted[pack_id] = read_header(content, repo.sealer)
        except StorageUnavailable:
            raise
        except ObjectNotFound:
            continue  # deleted meanwhile by its own (failed) backup
        except (StorageError, DecryptionFailed, PackFormatError, ValueError):
            unreadable.append(pack_id)
    return adopted, unreadable


def _young(
    pack_ids: list[str], listing: dict[str, ObjectInfo], store_now: float | None, margin: float
) -> set[str]:
    """The packs written less than ``margin`` ago by the store's clock (all, if it tells none)."""
    young = set()
    for pack_id in pack_ids:
        modified = listing[pack_id].modified
        if store_now is None or modified is None or store_now - modified < margin:
            young.add(pack_id)
    return young


def _reclaim(repo: Repository, lock: RepositoryLock, margin: float) -> ReclaimReport:
    report = ReclaimReport()
    index_names = repo.list_files("index")
    indexed: dict[str, list[PackEntry]] = {}
    for name in index_names:
        try:
            index_file = repo.read_index_file(name)
        except RepositoryDamaged as exc:
            raise RepositoryDamaged(
                f"space reclaim stopped, nothing was deleted: {exc}; run 'cloudkeep repair-index'"
            ) from exc
        for pack_id, entries in index_file.packs.items():
            indexed.setdefault(pack_id, entries)
    listing = repo.list_packs()
    unindexed = sorted(listing.keys() - indexed.keys())
    adopted, unreadable = _adopt(repo, listing, unindexed)
    if unreadable:
        log.warning(
            "space reclaim leaves %d object(s) in data/ that are not readable packs of this "
            "repository (run 'cloudkeep check')",
            len(unreadable),
        )
    report.packs_adopted = len(adopted)
    young = _young(sorted(adopted), listing, lock.store_now(), margin)
    indexed.update(adopted)
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
    present = {e.blob_id for p, entries in indexed.items() if p in listing for e in entries}
    lost = {
        backup for blob_id, backups in users.items() if blob_id not in present for backup in backups
    }
    if lost:
        raise RepositoryDamaged(
            "space reclaim stopped, nothing was deleted: backups "
            f"{', '.join(sorted(lost))} need data found in no pack of the store; "
            "run 'cloudkeep check'"
        )
    used = set(users)
    known = {manifest.id for manifest in manifests}

    # Young packs no index named stay whole: indexed if a backup uses them, else left
    # untouched and unindexed (a backup in flight may index and use them).
    keep: dict[str, list[PackEntry]] = {}
    sheltered: set[str] = set()
    for pack_id in sorted(young):
        if any(e.blob_id in used for e in indexed[pack_id]):
            keep[pack_id] = indexed[pack_id]
        else:
            sheltered.add(pack_id)
    # A frame is the unit of storage: it stays (whole) while any blob in it is used.
    seen: set[bytes] = {e.blob_id for entries in keep.values() for e in entries}
    to_repack: list[str] = []
    for pack_id, entries in indexed.items():
        if pack_id not in listing or pack_id in keep or pack_id in sheltered:
            continue  # gone (its blobs are reported by check), or young
        frames = frames_of(entries)
        live_bytes = sum(
            length
            for (_offset, length), members in frames.items()
            if any(m.blob_id in used and m.blob_id not in seen for m in members)
        )
        if not live_bytes:
            continue
        if sum(length for _offset, length in frames) - live_bytes > (
            REPACK_WHEN_UNUSED_FRACTION * listing[pack_id].size
        ):
            to_repack.append(pack_id)
        else:
            keep[pack_id] = entries
            seen.update(e.blob_id for e in entries)
    unused = [p for p in listing if p in indexed and p not in keep and p not in sheltered]
    if not unused:
        # Nothing to free: only index what was found, so the next run reads no header again.
        _write_index_files(repo, {p: entries for p, entries in adopted.items() if p in keep})
        return report
    reason = _stop_reason(repo, lock, known)
    if reason:
        report.stopped = reason
        log.warning("space reclaim stopped before changing anything: %s", reason)
        return report

    new_index_names, repacked_into = _repack(repo, listing, to_repack, keep, used, report)
    for pack_id in repacked_into:
        keep[pack_id] = []  # already indexed by the writer's own index file
    new_index_names |= _write_index_files(repo, {p: e for p, e in keep.items() if e})
    # Old and new index files side by side are harmless; old ones go only while the lock
    # holds, or a backup started meanwhile could use a pack no index names any more.
    reason = _stop_reason(repo, lock, known)
    for name in index_names:
        if reason is None and not lock.held():
            reason = LAPSED
        if reason is not None:
            report.stopped = reason
            log.warning("space reclaim stopped before deleting old index files: %s", reason)
            return report
        if name not in new_index_names:
            repo.delete_file("index", name)
    _delete_packs(repo, lock, known, unused, listing, report)
    return report


def _write_index_files(repo: Repository, packs: dict[str, list[PackEntry]]) -> set[str]:
    names = set()
    pack_ids = list(packs)
    for start in range(0, len(pack_ids), PACKS_PER_INDEX_FILE):
        chunk = pack_ids[start : start + PACKS_PER_INDEX_FILE]
        names.add(repo.write_index_file(IndexFile({p: packs[p] for p in chunk})))
    return names


def _repack(
    repo: Repository,
    listing: dict[str, ObjectInfo],
    to_repack: list[str],
    keep: dict[str, list[PackEntry]],
    used: set[bytes],
    report: ReclaimReport,
) -> tuple[set[str], list[str]]:
    """Copy the used frames of mostly-unused packs into new packs; (index files, new packs)."""
    writer = repo.pack_writer()
    repo.index = MasterIndex()
    for pack_id, entries in keep.items():
        repo.index.add_pack(pack_id, entries)
    try:
        for pack_id in to_repack:
            content = memoryview(repo.read_pack(pack_id, listing[pack_id].size))
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
        names = set(writer.flush())
    finally:
        writer.close()
    return names, writer.flushed_pack_ids()


def _delete_packs(
    repo: Repository,
    lock: RepositoryLock,
    known: set[str],
    doomed: list[str],
    listing: dict[str, ObjectInfo],
    report: ReclaimReport,
) -> None:
    """Delete in batches, each only while the lock holds and nothing new appeared."""
    for start in range(0, len(doomed), DELETE_BATCH):
        reason = _stop_reason(repo, lock, known)
        for pack_id in doomed[start : start + DELETE_BATCH]:
            if reason is None and not lock.held():
                reason = LAPSED
            if reason is not None:
                report.stopped = reason
                log.warning(
                    "space reclaim stopped with %d unused pack(s) left: %s; a later delete "
                    "or reclaim frees them",
                    len(doomed) - report.packs_deleted,
                    reason,
                )
                return
            try:
                repo.storage.delete(pack_name(pack_id))
            except ObjectNotFound:
                continue
            report.packs_deleted += 1
            report.bytes_freed += listing[pack_id].size
