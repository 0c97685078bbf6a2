"""Deleting backups, and pruning: freeing the space no remaining backup uses.

Deleting a backup removes its manifest (safe at any time). Pruning first plans
(``plan_prune``), then executes the plan (``execute_prune``); ``prune`` does both
under the exclusive repository lock, so no backup can be deduplicating against a
pack while it goes away (a dry run plans under a shared lock and changes nothing).

Planning accounts for everything in ``data/``: packs no index names (a lost index
file, an interrupted or in-flight backup) are read whole and, if they hash to
their name, indexed from their headers, so their blobs count; objects that are
not readable packs of this repository are left alone. It refuses when a backup
needs a blob found in no stored pack, or when a backup does not read. Packs no
index named that are younger than the safety margin (store time,
``CLOUDKEEP_PRUNE_MARGIN``) are kept whatever they hold, and left unindexed
unless a backup uses them: they may belong to a backup in flight.

Crash-safe order of execution: (1) copy the used frames of mostly-unused packs
into new packs, (2) write a complete new index, (3) delete the old index files,
(4) delete unneeded packs in batches. Before (1), (3) and every batch of (4) it
checks that our lock is still held, no other client holds a live lock and no
backup was saved since the manifests were read (otherwise it stops and a later
prune finishes); each deletion also needs the lock held. A crash after any step
leaves an index that only names existing packs, and packs no index names are
indexed again by the next prune.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

from cloudkeep.backups.catalog import load_manifests
from cloudkeep.backups.progress import ProgressFn, Tracker
from cloudkeep.backups.usage import blob_users
from cloudkeep.errors import Busy, RepositoryDamaged
from cloudkeep.repository.crypto import DecryptionFailed
from cloudkeep.repository.index import FrameBlobs, MasterIndex
from cloudkeep.repository.locks import LockTiming, RepositoryLock
from cloudkeep.repository.packs import BlobType, FrameMember, PackEntry, PackFormatError, frames_of
from cloudkeep.repository.repository import BlobDamaged, Repository
from cloudkeep.settings import env_number
from cloudkeep.storage.base import ObjectInfo, ObjectNotFound, StorageError, StorageUnavailable

log = logging.getLogger(__name__)
REPACK_WHEN_UNUSED_FRACTION = 0.2
#: Twice the largest pack size a config may set, plus a frame: nothing larger is a pack.
MAX_ADOPTED_PACK = 192 * 1024 * 1024
DELETE_BATCH = 64
ENV_MARGIN = "CLOUDKEEP_PRUNE_MARGIN"
#: Packs no index names are kept this long (store time): kopia keeps unreferenced
#: blobs 2 h (BlobDeleteMinAge); a backup in flight indexes its packs every 64 packs.
DEFAULT_MARGIN = 3600.0
LAPSED = "this client's lock lapsed (suspended or cut off from the store)"


def prune_margin(environ: Mapping[str, str] | None = None) -> float:
    """Seconds a pack no index names is kept (``CLOUDKEEP_PRUNE_MARGIN``, default 1 h)."""
    return env_number(
        environ, ENV_MARGIN, DEFAULT_MARGIN, float, lambda m: m >= 0, "zero or more seconds"
    )


class FrameCopy(NamedTuple):
    """A frame of a pack to repack, copied as it is into a new pack."""

    type: BlobType
    frame: FrameBlobs  # its blobs: every member of the frame


@dataclass
class PrunePlan:
    """What a prune would do, and why; figures in bytes as the store lists them."""

    #: Index files read: replaced by a new index on execution.
    index_files: list[str] = field(default_factory=list)
    #: Packs kept whole, with their entries (the new index names them).
    keep: dict[str, list[PackEntry]] = field(default_factory=dict)
    #: Mostly-unused packs whose used frames are copied into new packs, then deleted.
    repack: list[str] = field(default_factory=list)
    #: Every pack deleted at the end: unused ones and the repacked ones.
    delete: list[str] = field(default_factory=list)
    #: The frames copied out of the repacked packs.
    copies: list[FrameCopy] = field(default_factory=list)
    #: Packs no index named, indexed from their headers (they hash to their names).
    adopted: list[str] = field(default_factory=list)
    #: Objects in ``data/`` no index named that are not readable packs: left alone.
    unreadable: list[str] = field(default_factory=list)
    #: Packs no index named, younger than the margin and used by no backup: left alone.
    sheltered: list[str] = field(default_factory=list)
    #: Stored size of each pack the plan names.
    sizes: dict[str, int] = field(default_factory=dict)
    #: The backups whose manifests were read: a new one stops execution.
    backups: set[str] = field(default_factory=set)
    #: Blobs in the packs kept and the frames copied; blobs only the deleted packs hold.
    blobs_kept: int = 0
    blobs_dropped: int = 0

    @property
    def bytes_freed(self) -> int:
        """Stored bytes the deleted packs hold."""
        return sum(self.sizes[pack_id] for pack_id in self.delete)

    @property
    def bytes_rewritten(self) -> int:
        """Sealed bytes copied into new packs."""
        return sum(copy.frame.length for copy in self.copies)

    def summary(self) -> str:
        return (
            f"would free {self.bytes_freed:,} bytes: repack {len(self.repack)} packs "
            f"({self.bytes_rewritten:,} bytes rewritten), delete {len(self.delete)} packs"
        )

    def figures(self) -> dict[str, object]:
        """The plan as JSON-ready figures and pack ids."""
        return {
            "bytes_freed": self.bytes_freed,
            "bytes_rewritten": self.bytes_rewritten,
            "packs_deleted": len(self.delete),
            "packs_repacked": len(self.repack),
            "packs_kept": len(self.keep),
            "blobs_kept": self.blobs_kept,
            "blobs_dropped": self.blobs_dropped,
            "adopted": sorted(self.adopted),
            "unreadable": sorted(self.unreadable),
            "sheltered": sorted(self.sheltered),
            "repack": list(self.repack),
            "delete": list(self.delete),
        }


@dataclass
class PruneReport:
    """What a prune did (``dry_run``: what it would do, in ``plan``)."""

    plan: PrunePlan
    dry_run: bool = False
    packs_deleted: int = 0
    packs_repacked: int = 0
    bytes_freed: int = 0
    #: Why execution stopped early (a later prune finishes).
    stopped: str | None = None


def prune(
    repo: Repository,
    *,
    dry_run: bool = False,
    lock_timeout: float | None = None,
    progress: ProgressFn | None = None,
    cancel: threading.Event | None = None,
    without: frozenset[str] = frozenset(),
) -> PruneReport:
    """Plan and (unless ``dry_run``) execute a prune under the repository lock.

    A dry run may plan as if the backups ``without`` were deleted (``forget --dry-run
    --prune``); a prune that executes never ignores a stored backup.
    Raises ``Busy`` if other clients hold the repository past the lock timeout.
    """
    if without and not dry_run:
        raise ValueError("only a dry run may plan without stored backups")
    timing = LockTiming.from_env()
    margin = prune_margin()
    wait = timing.prune_wait if lock_timeout is None else lock_timeout
    purpose = "prune (dry run)" if dry_run else "prune"
    lock = RepositoryLock(repo, exclusive=not dry_run, purpose=purpose, timing=timing)
    with lock.acquire(wait):
        plan = plan_prune(repo, lock.store_now(), margin, without)
        if dry_run:
            return PruneReport(plan, dry_run=True)
        return execute_prune(repo, plan, lock, progress, cancel)


def try_prune(repo: Repository, lock_timeout: float | None = None) -> PruneReport | None:
    """Prune now, or leave it for a later one if other clients hold the repository."""
    try:
        return prune(repo, lock_timeout=lock_timeout)
    except Busy as exc:
        log.info("prune postponed: %s", exc)
        return None


# ------------------------------------------------------------------ planning
def plan_prune(
    repo: Repository,
    store_now: float | None,
    margin: float,
    without: frozenset[str] = frozenset(),
) -> PrunePlan:
    """What to keep, repack and delete (as if the backups ``without`` were gone);
    changes nothing.

    ``store_now`` is the store's clock (None if it tells none: then every pack no
    index names counts as young). Raises ``RepositoryDamaged`` when what backups
    use cannot be known for sure, or they need data found in no stored pack.
    """
    plan = PrunePlan()
    plan.index_files = repo.list_files("index")

    def damaged(name: str, exc: Exception) -> None:
        raise RepositoryDamaged(
            f"prune stopped, nothing was deleted: {exc}; run 'cloudkeep repair-index'"
        ) from exc

    indexed = repo.read_index(damaged)
    listing = repo.list_packs()
    plan.sizes = {pack_id: info.size for pack_id, info in listing.items()}
    adopted = _adopt(repo, listing, sorted(listing.keys() - indexed.keys()), plan)
    young = _young(sorted(adopted), listing, store_now, margin)
    indexed.update(adopted)
    used, plan.backups = _used_blobs(repo, indexed, listing, without)

    # Young packs no index named stay whole: indexed if a backup uses them, else left
    # untouched and unindexed (a backup in flight may index and use them).
    for pack_id in sorted(young):
        if any(e.blob_id in used for e in indexed[pack_id]):
            plan.keep[pack_id] = indexed[pack_id]
        else:
            plan.sheltered.append(pack_id)
    # A frame is the unit of storage: it stays (whole) while any blob in it is used.
    seen: set[bytes] = {e.blob_id for entries in plan.keep.values() for e in entries}
    for pack_id, entries in indexed.items():
        if pack_id not in listing or pack_id in plan.keep or pack_id in young:
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
            plan.repack.append(pack_id)
        else:
            plan.keep[pack_id] = entries
            seen.update(e.blob_id for e in entries)
    sheltered = set(plan.sheltered)
    plan.delete = [p for p in listing if p in indexed and p not in plan.keep and p not in sheltered]
    plan.copies = _copies(plan, indexed, used, seen)
    kept = seen | {b for copy in plan.copies for b, _, _ in copy.frame.blobs}
    doomed = {e.blob_id for p in plan.delete for e in indexed[p]}
    plan.blobs_kept = len(kept)
    plan.blobs_dropped = len(doomed - kept)
    return plan


def _adopt(
    repo: Repository, listing: dict[str, ObjectInfo], pack_ids: list[str], plan: PrunePlan
) -> dict[str, list[PackEntry]]:
    """Headers of packs no index names; those that are not packs of this repository
    go to ``plan.unreadable``.

    Each is read whole and must hash to its name: a keyless writer could otherwise
    plant a copy of a real pack's header over garbage under a new name, and prune,
    counting the copy as holding those blobs, would repack or delete the real pack.
    Adopting is rare (after a crash or a lost index file), so the download is worth
    it; objects larger than any pack are not read.
    """
    adopted: dict[str, list[PackEntry]] = {}
    for pack_id in pack_ids:
        try:
            adopted[pack_id] = repo.load_unindexed_pack(
                pack_id, listing[pack_id].size, MAX_ADOPTED_PACK
            )
        except StorageUnavailable:
            raise
        except ObjectNotFound:
            continue  # deleted meanwhile by its own (failed) backup
        except (StorageError, DecryptionFailed, PackFormatError, ValueError):
            plan.unreadable.append(pack_id)
    if plan.unreadable:
        log.warning(
            "prune leaves %d object(s) in data/ that are not readable packs of this "
            "repository (run 'cloudkeep check')",
            len(plan.unreadable),
        )
    plan.adopted = sorted(adopted)
    return adopted


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


def _used_blobs(
    repo: Repository,
    indexed: dict[str, list[PackEntry]],
    listing: dict[str, ObjectInfo],
    without: frozenset[str],
) -> tuple[set[bytes], set[str]]:
    """The blobs the backups (but ``without``) use, and the backups read; refuses if
    that is not sure."""
    manifests, broken = load_manifests(repo)
    manifests = [manifest for manifest in manifests if manifest.id not in without]
    broken = {name: reason for name, reason in broken.items() if name not in without}
    if broken:
        raise RepositoryDamaged(
            "prune stopped: some backups are unreadable, so what they use is unknown "
            f"({', '.join(sorted(broken))}); run 'cloudkeep check'"
        )
    users, problems = blob_users(repo, manifests, MasterIndex.of(indexed))
    if problems:
        raise RepositoryDamaged(
            "prune stopped: the content lists of some backups are unreadable; run 'cloudkeep check'"
        )
    present = {e.blob_id for p, entries in indexed.items() if p in listing for e in entries}
    lost = {
        backup for blob_id, backups in users.items() if blob_id not in present for backup in backups
    }
    if lost:
        raise RepositoryDamaged(
            "prune stopped, nothing was deleted: backups "
            f"{', '.join(sorted(lost))} need data found in no pack of the store; "
            "run 'cloudkeep check'"
        )
    return set(users), {manifest.id for manifest in manifests}


def _copies(
    plan: PrunePlan, indexed: dict[str, list[PackEntry]], used: set[bytes], seen: set[bytes]
) -> list[FrameCopy]:
    """The frames of the repacked packs holding a used blob no kept or copied frame holds."""
    covered = set(seen)
    copies: list[FrameCopy] = []
    for pack_id in plan.repack:
        for (offset, length), members in frames_of(indexed[pack_id]).items():
            if not any(m.blob_id in used and m.blob_id not in covered for m in members):
                continue
            blobs = [(m.blob_id, m.inner_offset, m.raw_length) for m in members]
            copies.append(FrameCopy(members[0].type, FrameBlobs(pack_id, offset, length, blobs)))
            covered.update(m.blob_id for m in members)
    return copies


# ----------------------------------------------------------------- execution
def execute_prune(
    repo: Repository,
    plan: PrunePlan,
    lock: RepositoryLock,
    progress: ProgressFn | None = None,
    cancel: threading.Event | None = None,
) -> PruneReport:
    """Carry out ``plan`` under ``lock`` (exclusive, held since the plan was made)."""
    report = PruneReport(plan)
    if not plan.delete:
        # Nothing to free: only index what was found, so the next run reads no header again.
        adopted = set(plan.adopted)
        repo.write_index({p: e for p, e in plan.keep.items() if p in adopted})
        return report
    tracker = Tracker("prune", plan.bytes_rewritten + plan.bytes_freed, progress, cancel)
    if _stop(report, repo, lock, "before changing anything"):
        return report
    new_index_names = _repack(repo, plan, tracker)
    report.packs_repacked = len(plan.repack)
    new_index_names |= repo.write_index(plan.keep)
    # Old and new index files side by side are harmless; old ones go only while the lock
    # holds, or a backup started meanwhile could use a pack no index names any more.
    if _stop(report, repo, lock, "before deleting old index files"):
        return report
    for name in plan.index_files:
        if not lock.held():
            report.stopped = LAPSED
            log.warning("prune stopped before deleting old index files: %s", LAPSED)
            return report
        if name not in new_index_names:
            repo.remove_index_file(name)
    _delete_packs(repo, lock, report, tracker)
    return report


def _stop_reason(repo: Repository, lock: RepositoryLock, known: set[str]) -> str | None:
    """Why deleting must stop now, if it must: right before every batch of deletions."""
    lock.refresh()
    if not lock.held():
        return LAPSED
    conflicts = lock.conflicts()
    if conflicts:
        return f"other clients hold the repository ({', '.join(sorted(set(conflicts)))})"
    if set(repo.list_backups()) - known:
        return "a backup was saved meanwhile"
    return None


def _stop(report: PruneReport, repo: Repository, lock: RepositoryLock, when: str) -> bool:
    reason = _stop_reason(repo, lock, report.plan.backups)
    if reason is None:
        return False
    report.stopped = reason
    log.warning("prune stopped %s: %s", when, reason)
    return True


def _repack(repo: Repository, plan: PrunePlan, tracker: Tracker) -> set[str]:
    """Copy the planned frames into new packs (never damage: each blob is re-hashed);
    the index files the writer wrote for them."""
    if not plan.copies:
        return set()
    types = {(c.frame.pack_id, c.frame.offset): c.type for c in plan.copies}
    writer = repo.pack_writer(known=plan.keep)
    try:
        try:
            for loaded in repo.load_frames([copy.frame for copy in plan.copies]):
                tracker.check_canceled()
                frame = loaded.frame
                writer.add_frame(
                    types[frame.pack_id, frame.offset],
                    [bytes(loaded.sealed)],
                    [FrameMember(*blob) for blob in frame.blobs],
                )
                tracker.advance(frame.length)
        except BlobDamaged as exc:
            raise RepositoryDamaged(
                f"prune stopped, nothing was deleted: a pack holds damaged data ({exc}); "
                "run 'cloudkeep check'"
            ) from exc
        return set(writer.flush())
    finally:
        writer.close()


def _delete_packs(
    repo: Repository, lock: RepositoryLock, report: PruneReport, tracker: Tracker
) -> None:
    """Delete in batches, each only while the lock holds and nothing new appeared."""
    doomed = report.plan.delete
    for start in range(0, len(doomed), DELETE_BATCH):
        tracker.check_canceled()
        reason = _stop_reason(repo, lock, report.plan.backups)
        for pack_id in doomed[start : start + DELETE_BATCH]:
            if reason is None and not lock.held():
                reason = LAPSED
            if reason is not None:
                report.stopped = reason
                log.warning(
                    "prune stopped with %d unused pack(s) left: %s; a later delete "
                    "or prune frees them",
                    len(doomed) - report.packs_deleted,
                    reason,
                )
                return
            size = report.plan.sizes[pack_id]
            tracker.advance(size)
            if repo.delete_pack(pack_id):
                report.packs_deleted += 1
                report.bytes_freed += size
