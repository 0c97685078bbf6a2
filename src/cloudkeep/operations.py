"""Typed operations and the one entry point that runs them, whoever asks.

An operation is a frozen dataclass: its fields are the request, ``execute`` is its
engine handler over a ``Workspace``, and ``uses`` names the resources it must not
share with another running operation (the job queue orders jobs by it). Its result
is a frozen dataclass too. Both cross the engine process's pipe as they are.

Adding an operation (a copy to another store, a verification of a subset of the
packs) is one class here with its result, then one handler per front end: a CLI
command that calls ``run`` and prints the result, and, if the API offers it, a route
that submits it to the job queue. Nothing else dispatches on the kind of operation.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Generic, TypeVar

from cloudkeep.backups.progress import ProgressFn
from cloudkeep.errors import Canceled

if TYPE_CHECKING:
    from cloudkeep.backups.checker import CheckReport
    from cloudkeep.backups.prune import PruneReport
    from cloudkeep.workspace import BackupInfo, Workspace

__all__ = [
    "Backup",
    "BackupResult",
    "Check",
    "CheckResult",
    "Delete",
    "DeleteResult",
    "Operation",
    "OperationResult",
    "Prune",
    "PruneResult",
    "Resource",
    "Restore",
    "RestoreResult",
    "run",
]


class Resource(StrEnum):
    """What two running operations must not share (the store itself is ordered by the
    repository lock, as between devices)."""

    #: The live data folder: a backup reads it, a restore replaces it.
    DATA = "data"
    #: Every pack of the store: a prune rewrites and deletes them, a check reads them all.
    PACKS = "packs"


@dataclass(frozen=True)
class OperationResult:
    """Base of every operation's result."""


R = TypeVar("R", bound=OperationResult, covariant=True)


class Operation(ABC, Generic[R]):
    """Base of every operation; subclasses are frozen dataclasses."""

    uses: ClassVar[frozenset[Resource]] = frozenset()

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
@dataclass(frozen=True)
class BackupResult(OperationResult):
    info: BackupInfo


@dataclass(frozen=True)
class Backup(Operation[BackupResult]):
    """Back up the live data (creating the repository on first use)."""

    uses: ClassVar[frozenset[Resource]] = frozenset({Resource.DATA})

    def execute(
        self, workspace: Workspace, progress: ProgressFn | None, cancel: threading.Event | None
    ) -> BackupResult:
        return BackupResult(workspace.backup(progress=progress, cancel=cancel))


# --------------------------------------------------------------------- restore
@dataclass(frozen=True)
class RestoreResult(OperationResult):
    """``info`` carries the bytes reused and fetched and where replaced data is kept."""

    info: BackupInfo


@dataclass(frozen=True)
class Restore(Operation[RestoreResult]):
    """Restore a backup over the live data (``target`` None) or into ``target``.

    ``force`` restores in place even while another program holds a database open;
    ``reuse_local`` takes the chunks the live data still holds instead of fetching them.
    """

    backup_id: str
    target: Path | None = None
    force: bool = False
    reuse_local: bool = True

    uses: ClassVar[frozenset[Resource]] = frozenset({Resource.DATA})

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
        )
        return RestoreResult(info)


# ---------------------------------------------------------------------- delete
@dataclass(frozen=True)
class DeleteResult(OperationResult):
    """``pruned`` is None when other clients held the repository: a later prune frees it."""

    backup_id: str
    pruned: PruneReport | None


@dataclass(frozen=True)
class Delete(Operation[DeleteResult]):
    """Delete one backup, then prune the space nothing else uses if the repository is
    free. Uses no resource: deleting a manifest is safe beside anything, and the
    prune waits for the exclusive repository lock."""

    backup_id: str

    def execute(
        self, workspace: Workspace, progress: ProgressFn | None, cancel: threading.Event | None
    ) -> DeleteResult:
        return DeleteResult(self.backup_id, workspace.delete(self.backup_id))


# ----------------------------------------------------------------------- prune
@dataclass(frozen=True)
class PruneResult(OperationResult):
    """``report.plan`` holds the figures; with ``dry_run`` nothing was executed."""

    report: PruneReport


@dataclass(frozen=True)
class Prune(Operation[PruneResult]):
    """Plan freeing the space no backup uses, then execute the plan unless ``dry_run``
    (``Busy`` if other clients hold the repository)."""

    dry_run: bool = False

    uses: ClassVar[frozenset[Resource]] = frozenset({Resource.PACKS})

    def execute(
        self, workspace: Workspace, progress: ProgressFn | None, cancel: threading.Event | None
    ) -> PruneResult:
        return PruneResult(workspace.prune(self.dry_run, progress=progress, cancel=cancel))


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
