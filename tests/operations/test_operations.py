"""``operations.run``: every operation through the one entry point, on a real workspace."""

from __future__ import annotations

import dataclasses
import pickle
import threading
from pathlib import Path

import pytest

from cloudkeep.errors import BackupNotFound, Canceled
from cloudkeep.operations import (
    Backup,
    BackupResult,
    Check,
    CheckResult,
    Delete,
    DeleteResult,
    Progress,
    Prune,
    PruneResult,
    Resource,
    Restore,
    RestoreResult,
    run,
)
from cloudkeep.workspace import Workspace


def test_every_operation_runs_through_the_entry_point(workspace: Workspace, tmp_path: Path) -> None:
    reports: list[Progress] = []
    first = run(Backup(), workspace, reports.append)
    assert isinstance(first, BackupResult) and first.info.bytes > 0
    assert reports and reports[-1].phase == "backup"
    second = run(Backup(), workspace)

    target = tmp_path / "restored"
    restored = run(Restore(first.info.id, target), workspace)
    assert isinstance(restored, RestoreResult) and restored.info.id == first.info.id
    data = workspace.settings.data
    assert (target / "settings.json").read_bytes() == (data / "settings.json").read_bytes()

    checked = run(Check(read_data=True), workspace)
    assert isinstance(checked, CheckResult) and checked.report.ok
    assert checked.report.backups == 2 and checked.report.bytes_read > 0

    deleted = run(Delete(first.info.id), workspace)
    assert isinstance(deleted, DeleteResult) and deleted.backup_id == first.info.id
    assert deleted.pruned is not None
    assert [info.id for info in workspace.list()] == [second.info.id]
    with pytest.raises(BackupNotFound):
        run(Restore(first.info.id, tmp_path / "again"), workspace)

    pruned = run(Prune(), workspace)
    assert isinstance(pruned, PruneResult) and pruned.summary.packs_deleted == 0


def test_a_canceled_operation_does_not_start(workspace: Workspace) -> None:
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(Canceled):
        run(Backup(), workspace, cancel=cancel)
    assert workspace.list() == []


def test_operations_are_frozen_picklable_requests() -> None:
    operations = [Backup(), Restore("0.1.0_1", Path("/tmp/x"), force=True), Delete("0.1.0_1")]
    operations += [Prune(), Check(read_data=True)]
    for operation in operations:
        assert pickle.loads(pickle.dumps(operation)) == operation
        with pytest.raises(dataclasses.FrozenInstanceError):
            operation.__setattr__("backup_id", "other")
    assert Backup.uses == Restore.uses == {Resource.DATA}
    assert Prune.uses == Check.uses == Delete.uses == {Resource.PACKS}
