"""``operations.run``: every operation through the one entry point, on a real workspace."""

from __future__ import annotations

import dataclasses
import os
import pickle
import threading
from pathlib import Path

import pytest

from cloudkeep.errors import BackupNotFound, Canceled, RepositoryNotFound
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
from cloudkeep.settings import Settings
from cloudkeep.workspace import Workspace
from tests.operations.conftest import make_data


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
    with pytest.raises(RepositoryNotFound):  # not even the repository was made
        workspace.list()


def test_operations_are_frozen_picklable_requests() -> None:
    operations = [Backup(), Restore("0.1.0_1", Path("/tmp/x"), force=True), Delete("0.1.0_1")]
    operations += [Prune(), Check(read_data=True)]
    for operation in operations:
        assert pickle.loads(pickle.dumps(operation)) == operation
        with pytest.raises(dataclasses.FrozenInstanceError):
            operation.__setattr__("backup_id", "other")
    assert Backup.uses == Restore.uses == {Resource.DATA}
    assert Prune.uses == Check.uses == Delete.uses == {Resource.PACKS}


def _result_sizes(settings: Settings, files: int) -> tuple[int, int]:
    """Pickled sizes of a dry-run prune's and a delete's results over ``files`` more blobs."""
    for number in range(files):
        (settings.data / f"note-{number}.txt").write_bytes(os.urandom(64))
    workspace = Workspace(settings)
    backup = run(Backup(), workspace)
    pruned = run(Prune(dry_run=True), workspace)
    deleted = run(Delete(backup.info.id), workspace)
    assert isinstance(deleted, DeleteResult) and deleted.pruned is not None
    assert deleted.pruned.packs_deleted > 0 and deleted.pruned.bytes_freed > 0
    return len(pickle.dumps(pruned)), len(pickle.dumps(deleted))


def test_prune_and_delete_results_do_not_grow_with_the_blobs(
    settings: Settings, tmp_path: Path
) -> None:
    small = _result_sizes(settings, 0)
    large_data = tmp_path / "large-data"
    make_data(large_data)
    large = _result_sizes(
        dataclasses.replace(
            settings,
            data=large_data,
            store=(tmp_path / "large-store").as_uri(),
            config_dir=tmp_path / "large-config",
            cache_dir=tmp_path / "large-cache",
        ),
        2000,  # 4000 more blobs (a file and its chunk list each): 250 KB with the index
    )
    for small_size, large_size in zip(small, large, strict=True):
        assert abs(large_size - small_size) < 256, (small, large)
