"""Typed operations and the one entry point that runs them, whoever asks.

An operation is a frozen dataclass: its fields are the request, ``execute`` is its
engine handler over a ``Workspace``, ``uses`` names the resources it must not share
with another running operation (the job queue orders jobs by it), and ``stream``
the progress stream of the Backups API it shows in, if any. Its result is a small
frozen dataclass too (``info``: the backup it reports, if any). Both cross the
engine process's pipe as they are, so results carry figures, never whole indexes.

Adding an operation (a copy to another store, a verification of a subset of the
packs) is one class here with its result, then one handler per front end: a CLI
command that calls ``run`` and prints the result, and, if the API offers it, a route
that submits it to the job queue. Nothing else dispatches on the kind of operation.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Generic, TypeVar

from cloudkeep.backups.progress import Progress, ProgressFn
from cloudkeep.errors import Canceled

if TYPE_CHECKING:
    from cloudkeep.backups.checker import CheckReport
    from cloudkeep.backups.prune import PruneReport
    from cloudkeep.backups.retention import GroupDecision
    from cloudkeep.config import Retention
    from cloudkeep.workspace import BackupInfo, Workspace

__all__ = [
    "Backup",
    "BackupResult",
    "Check",
    "CheckResult",
    "Delete",
    "DeleteResult",
    "Forget",
    "ForgetResult",
    "Operation",
    "OperationResult",
    "Progress",
    "ProgressFn",
    "Prune",
    "PruneResult",
    "PruneSummary",
    "Resource",
    "Restore",
    "RestoreResult",
    "Stream",
    "UndoRestore",
    "UndoRestoreResult",
    "run",
]


class Resource(StrEnum):
    """What two running operations must not share (the store itself is ordered by the
    repository lock, as between devices)."""

    #: The live data folder: a backup reads it, a restore replaces it.
    DATA = "data"
    #: Every pack of the store: a prune rewrites and deletes them, a check reads them all.
    PACKS = "packs"


class Stream(StrEnum):
    """The Backups API progress stream an operation's job shows in."""

    CREATIONS = "creations"
    RESTORATIONS = "restorations"


@dataclass(frozen=True, kw_only=True)
class OperationResult:
    """Base of every operation's result; ``info`` is the backup the job reports (the
    one created or restored), None for the others."""

    info: BackupInfo | None = None

    @property
    def listed(self) -> BackupInfo | None:
        """A backup this operation added to the repository's list."""
        return None

    @property
    def unlisted(self) -> tuple[str, ...]:
        """The ids of the backups this operation removed from the repository's list."""
        return ()


R = TypeVar("R", bound=OperationResult, covariant=True)


class Operation(ABC, Generic[R]):
    """Base of every operation; subclasses are frozen dataclasses."""

    uses: ClassVar[frozenset[Resource]] = frozenset()
    stream: ClassVar[Stream | None] = None

    @abstractmethod
    def execute(
        self, workspace: Workspace, progress: ProgressFn | None, cancel: threading.Event | None
    ) -> R:
        """Run on ``workspace``; raise ``Canceled`` when ``cancel`` is set in time."""


def run(
    operation: Operation[R],
    workspace: Workspace,
    progress: ProgressFn | None = None,
    cancel: threading.Event | None = None,
) -> R:
    """Run one operation: the CLI, the job queue and the engine process all call this.

    Progress goes to ``progress`` as the engine reports it; ``cancel`` is checked before
    the operation starts and by the engine between pieces of work (``Canceled``).
    """
    _check_canceled(cancel)
    return operation.execute(workspace, progress, cancel)


def _check_canceled(cancel: threading.Event | None) -> None:
    if cancel is not None and cancel.is_set():
        raise Canceled("the operation was canceled")


# ---------------------------------------------------------------------- backup
@dataclass(frozen=True, kw_only=True)
class BackupResult(OperationResult):
    info: BackupInfo

    @property
    def listed(self) -> BackupInfo:
        return self.info


@dataclass(frozen=True)
class Backup(Operation[BackupResult]):
    """Back up the live data (creating the repository on first use); ``time`` is
    recorded as the backup's time instead of the clock's (``backup --time``)."""

    time: datetime | None = None

    uses: ClassVar[frozenset[Resource]] = frozenset({Resource.DATA})
    stream: ClassVar[Stream | None] = Stream.CREATIONS

    def execute(
        self, workspace: Workspace, progress: ProgressFn | None, cancel: threading.Event | None
    ) -> BackupResult:
        return BackupResult(info=workspace.backup(progress=progress, cancel=cancel, time=self.time))


# --------------------------------------------------------------------- restore
@dataclass(frozen=True, kw_only=True)
class RestoreResult(OperationResult):
    """``info`` carries the bytes reused and fetched and where replaced data is kept."""

    info: BackupInfo


@dataclass(frozen=True)
class Restore(Operation[RestoreResult]):
    """Restore a backup over the live data (``target`` None) or into ``target``.

    ``force`` restores in place even while another program holds a database open;
    ``reuse_local`` takes the chunks the live data still holds instead of fetching them;
    ``include`` restores only these paths of the backup (files or whole folders), in
    place one entry at a time (empty: the whole backup).
    """

    backup_id: str
    target: Path | None = None
    force: bool = False
    reuse_local: bool = True
    include: tuple[str, ...] = ()

    uses: ClassVar[frozenset[Resource]] = frozenset({Resource.DATA})
    stream: ClassVar[Stream | None] = Stream.RESTORATIONS

    def execute(
        self, workspace: Workspace, progress: ProgressFn | None, cancel: threading.Event | None
    ) -> RestoreResult:
        info = workspace.restore(
            self.backup_id,
            self.target,
            progress=progress,
            cancel=cancel,
            reuse_local=self.reuse_local,
            force=self.force,
            include=self.include,
        )
        return RestoreResult(info=info)


@dataclass(frozen=True)
class UndoRestoreResult(OperationResult):
    """``kept``: where the state the undo took away is kept now (undo again to redo)."""

    kept: str


@dataclass(frozen=True)
class UndoRestore(Operation[UndoRestoreResult]):
    """Put back what the last in-place restore replaced (the whole data folder, or the
    entries a restore of chosen paths replaced); ``force`` as for ``Restore``."""

    force: bool = False

    uses: ClassVar[frozenset[Resource]] = frozenset({Resource.DATA})

    def execute(
        self, workspace: Workspace, progress: ProgressFn | None, cancel: threading.Event | None
    ) -> UndoRestoreResult:
        return UndoRestoreResult(kept=str(workspace.undo_restore(force=self.force)))


# ----------------------------------------------------------------------- prune
@dataclass(frozen=True)
class PruneSummary:
    """What a prune did (with ``dry_run``: would do), as front ends show it: the plan's
    figures and summary line, the report's counts; not the plan's index of kept packs."""

    dry_run: bool
    #: ``PrunePlan.figures()``: JSON-ready figures and pack ids.
    figures: dict[str, object]
    #: ``PrunePlan.summary()``: one line saying what the plan frees.
    plan_summary: str
    #: Objects in ``data/`` that are not readable packs: left alone.
    unreadable: tuple[str, ...]
    packs_deleted: int
    packs_repacked: int
    bytes_freed: int
    #: Why execution stopped early (a later prune finishes).
    stopped: str | None

    @classmethod
    def of(cls, report: PruneReport) -> PruneSummary:
        plan = report.plan
        return cls(
            dry_run=report.dry_run,
            figures=plan.figures(),
            plan_summary=plan.summary(),
            unreadable=tuple(plan.unreadable),
            packs_deleted=report.packs_deleted,
            packs_repacked=report.packs_repacked,
            bytes_freed=report.bytes_freed,
            stopped=report.stopped,
        )


@dataclass(frozen=True)
class PruneResult(OperationResult):
    """With ``summary.dry_run`` nothing was executed."""

    summary: PruneSummary


@dataclass(frozen=True)
class Prune(Operation[PruneResult]):
    """Plan freeing the space no backup uses, then execute the plan unless ``dry_run``
    (``Busy`` if other clients hold the repository)."""

    dry_run: bool = False

    uses: ClassVar[frozenset[Resource]] = frozenset({Resource.PACKS})

    def execute(
        self, workspace: Workspace, progress: ProgressFn | None, cancel: threading.Event | None
    ) -> PruneResult:
        report = workspace.prune(self.dry_run, progress=progress, cancel=cancel)
        return PruneResult(PruneSummary.of(report))


# ---------------------------------------------------------------------- delete
@dataclass(frozen=True)
class DeleteResult(OperationResult):
    """``pruned`` is None when other clients held the repository: a later prune frees it."""

    backup_id: str
    pruned: PruneSummary | None
    others: tuple[str, ...] = ()

    @property
    def unlisted(self) -> tuple[str, ...]:
        return (self.backup_id, *self.others)


@dataclass(frozen=True)
class Delete(Operation[DeleteResult]):
    """Delete a backup (and ``others`` with it: every id is checked first), then prune
    once the space nothing else uses if the repository is free. Uses the packs, as a
    prune does (not the data: a delete beside a running backup starts at once; its
    prune waits for the exclusive repository lock)."""

    backup_id: str
    others: tuple[str, ...] = ()

    uses: ClassVar[frozenset[Resource]] = frozenset({Resource.PACKS})

    def execute(
        self, workspace: Workspace, progress: ProgressFn | None, cancel: threading.Event | None
    ) -> DeleteResult:
        report = workspace.delete(self.backup_id, *self.others)
        pruned = None if report is None else PruneSummary.of(report)
        return DeleteResult(self.backup_id, pruned, self.others)


# ---------------------------------------------------------------------- forget
@dataclass(frozen=True)
class ForgetResult(OperationResult):
    """The policy's decision per device and data folder, what was deleted, and the one
    prune after it (with ``dry_run``: its plan, as if the backups were deleted): None if
    not asked for, nothing was removed, or ``prune_postponed`` (other clients held the
    repository: a later prune frees the space)."""

    groups: tuple[GroupDecision, ...]
    dry_run: bool
    deleted: tuple[str, ...]
    pruned: PruneSummary | None
    prune_postponed: bool
    #: Backups whose manifest does not read -> why: never decided on, never deleted.
    unreadable: dict[str, str]

    @property
    def unlisted(self) -> tuple[str, ...]:
        return self.deleted


@dataclass(frozen=True)
class Forget(Operation[ForgetResult]):
    """Delete the backups ``policy`` does not keep (restic's forget), of ``device`` only
    when given; with ``prune`` prune once after all deletions; ``dry_run`` only decides.
    Uses the packs, as a delete does (the server runs it after a scheduled backup)."""

    policy: Retention
    dry_run: bool = False
    prune: bool = False
    device: str | None = None

    uses: ClassVar[frozenset[Resource]] = frozenset({Resource.PACKS})

    def execute(
        self, workspace: Workspace, progress: ProgressFn | None, cancel: threading.Event | None
    ) -> ForgetResult:
        report = workspace.forget(
            self.policy, self.device, dry_run=self.dry_run, prune=self.prune, cancel=cancel
        )
        return ForgetResult(
            groups=report.plan.groups,
            dry_run=report.dry_run,
            deleted=report.deleted,
            pruned=None if report.prune is None else PruneSummary.of(report.prune),
            prune_postponed=report.prune_postponed,
            unreadable=report.plan.unreadable,
        )


# ----------------------------------------------------------------------- check
@dataclass(frozen=True)
class CheckResult(OperationResult):
    """Damage found is in ``report.errors``, not raised: the front end decides."""

    report: CheckReport


@dataclass(frozen=True)
class Check(Operation[CheckResult]):
    """Verify the repository's structure, and with ``read_data`` every stored byte."""

    read_data: bool = False

    uses: ClassVar[frozenset[Resource]] = frozenset({Resource.PACKS})

    def execute(
        self, workspace: Workspace, progress: ProgressFn | None, cancel: threading.Event | None
    ) -> CheckResult:
        return CheckResult(workspace.check(self.read_data, progress=progress, cancel=cancel))
