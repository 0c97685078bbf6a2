"""Forgetting: deleting the backups a retention policy does not keep.

Plan, then execute. The plan applies the policy (``retention.decide``) to the backups
listed once; execution deletes exactly the backups the plan removes, one manifest at
a time (each deletion atomic), and nothing else.

Races: a backup published after the listing is not in the plan, so it is never
deleted, and it could not have saved one the plan removes: adding backups never turns
a removal into a keep (buckets fill from the newest, keep-within only moves forward).
A crash or a cancel between deletions leaves a store that the same policy decides
the same way again (what it keeps does not depend on what it removes), so a rerun
finishes. Two devices forgetting at once delete some manifests twice, which is no
error. A backup whose manifest does not read is never decided on, so never deleted.
Like a delete, forget takes no lock: removing a manifest is safe at any time (a backup
building on it holds a shared lock, which keeps every prune away until it is done).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from cloudkeep.backups.catalog import load_manifests
from cloudkeep.backups.manifest import Manifest
from cloudkeep.backups.retention import BackupRecord, GroupDecision, decide, effective
from cloudkeep.config import Retention
from cloudkeep.errors import Canceled, UserError
from cloudkeep.repository.repository import Repository

if TYPE_CHECKING:
    from cloudkeep.backups.prune import PruneReport

__all__ = ["ForgetPlan", "ForgetReport", "execute_forget", "plan_forget", "record_of"]


@dataclass(frozen=True)
class ForgetPlan:
    """The policy's decision per device and data folder, and the backups it skipped."""

    groups: tuple[GroupDecision, ...]
    #: Backup name -> why its manifest does not read (kept: never decided on).
    unreadable: dict[str, str]

    @property
    def doomed(self) -> tuple[str, ...]:
        """Ids of the backups to delete, oldest first."""
        removed = [backup for group in self.groups for backup in group.remove]
        removed.sort(key=lambda backup: (backup.time, backup.id))
        return tuple(backup.id for backup in removed)


@dataclass(frozen=True)
class ForgetReport:
    """What a forget did (``dry_run``: decided only)."""

    plan: ForgetPlan
    dry_run: bool = False
    #: The backups deleted, oldest first.
    deleted: tuple[str, ...] = ()
    #: The one prune run after the deletions, if asked for and the repository was free.
    prune: PruneReport | None = None
    #: A prune was asked for but other clients held the repository: a later one frees it.
    prune_postponed: bool = False


def record_of(manifest: Manifest) -> BackupRecord:
    """What the policy needs of a backup; a time without an offset counts as UTC."""
    created = manifest.created_at
    if created.tzinfo is None:
        created = created.replace(tzinfo=UTC)
    return BackupRecord(manifest.id, created, manifest.device_name, manifest.source)


def plan_forget(
    repo: Repository,
    policy: Retention,
    device: str | None = None,
    now: datetime | None = None,
) -> ForgetPlan:
    """Decide which backups ``policy`` keeps (only ``device``'s when given); changes nothing.

    ``UserError`` for a policy that names no rule: it would remove every backup.
    """
    if not effective(policy):
        raise UserError(
            "no retention policy given and none configured: name what to keep "
            "(e.g. --keep-daily 7 --keep-weekly 4); forget never removes every backup"
        )
    manifests, unreadable = load_manifests(repo)
    records = [record_of(m) for m in manifests if device is None or m.device_name == device]
    return ForgetPlan(tuple(decide(records, policy, now)), unreadable)


def execute_forget(
    repo: Repository, plan: ForgetPlan, cancel: threading.Event | None = None
) -> tuple[str, ...]:
    """Delete the backups the plan removes; the ids deleted, in order.

    ``Canceled`` between two deletions leaves the rest for a rerun (it decides the same).
    """
    deleted: list[str] = []
    for backup_id in plan.doomed:
        if cancel is not None and cancel.is_set():
            raise Canceled(
                f"forget was canceled after deleting {len(deleted)} of "
                f"{len(plan.doomed)} backups; run it again to finish"
            )
        repo.delete_backup(backup_id)
        deleted.append(backup_id)
    return tuple(deleted)
