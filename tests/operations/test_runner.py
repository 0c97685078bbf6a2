"""Typed messages across the engine process boundary, through a real worker process."""

from __future__ import annotations

import pickle
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from cloudkeep.api.runner import Cancel, Crashed, Failed, Finished, ProcessEngine, Run
from cloudkeep.config import Retention
from cloudkeep.errors import BackupNotFound, Busy, Canceled, CloudkeepError
from cloudkeep.operations import (
    Backup,
    BackupResult,
    Check,
    CheckResult,
    Delete,
    DeleteResult,
    Forget,
    ForgetResult,
    Progress,
    Restore,
    RestoreResult,
)
from cloudkeep.settings import Settings
from cloudkeep.storage.base import StoreRejected
from tests.operations.conftest import make_data


@pytest.fixture
def engine(settings: Settings) -> Iterator[ProcessEngine]:
    started = ProcessEngine(settings)
    started.start()
    yield started
    started.stop()


def test_operations_and_results_cross_a_real_worker_process(
    engine: ProcessEngine, settings: Settings, tmp_path: Path
) -> None:
    reports: list[Progress] = []
    backup = engine.run(Backup(), reports.append, threading.Event(), "job-1")
    assert isinstance(backup, BackupResult) and backup.info.bytes > 0
    assert reports and all(isinstance(r, Progress) for r in reports)
    target = tmp_path / "restored"
    restored = engine.run(Restore(backup.info.id, target), None, threading.Event(), "job-2")
    assert isinstance(restored, RestoreResult) and restored.info.id == backup.info.id
    assert (target / "settings.json").read_bytes() == (settings.data / "settings.json").read_bytes()
    checked = engine.run(Check(read_data=True), None, threading.Event(), "job-3")
    assert isinstance(checked, CheckResult) and checked.report.ok
    deleted = engine.run(Delete(backup.info.id), None, threading.Event(), "job-4")
    assert isinstance(deleted, DeleteResult) and deleted.backup_id == backup.info.id


def test_a_timed_backup_and_forget_cross_a_real_worker_process(engine: ProcessEngine) -> None:
    when = datetime(2025, 1, 1, 12, tzinfo=UTC)
    old = engine.run(Backup(time=when), None, threading.Event(), "job-1")
    assert isinstance(old, BackupResult) and old.info.created == when
    engine.run(Backup(), None, threading.Event(), "job-2")
    forgot = engine.run(Forget(Retention(last=1), prune=True), None, threading.Event(), "job-3")
    assert isinstance(forgot, ForgetResult) and forgot.deleted == (old.info.id,)
    assert forgot.unlisted == (old.info.id,) and forgot.pruned is not None
    (group,) = forgot.groups
    assert [kept.reasons for kept in group.keep] == [("last backup",)]


def test_an_engine_error_crosses_as_its_own_class(engine: ProcessEngine, tmp_path: Path) -> None:
    engine.run(Backup(), None, threading.Event(), "job-1")
    with pytest.raises(BackupNotFound, match=r"0\.1\.0_123"):
        engine.run(Restore("0.1.0_123", tmp_path / "x"), None, threading.Event(), "job-2")


def test_operations_run_side_by_side_and_cancel_by_message(
    engine: ProcessEngine, settings: Settings
) -> None:
    earlier = engine.run(Backup(), None, threading.Event(), "job-1")
    assert isinstance(earlier, BackupResult)
    make_data(settings.data / "big", megabytes=96)
    moving = threading.Event()
    cancel = threading.Event()
    outcome: list[BaseException | object] = []

    def back_up() -> None:
        try:
            outcome.append(engine.run(Backup(), lambda _: moving.set(), cancel, "job-2"))
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=back_up)
    thread.start()
    assert moving.wait(120)
    # One worker, two operations at once: a check answers while the backup runs.
    checked = engine.run(Check(), None, threading.Event(), "job-3")
    assert isinstance(checked, CheckResult) and checked.report.backups == 1
    assert thread.is_alive()
    cancel.set()
    thread.join(120)
    assert len(outcome) == 1 and isinstance(outcome[0], Canceled)


def test_messages_are_plain_picklable_dataclasses() -> None:
    for message in (
        Run("job-1", Restore("0.1.0_1", force=True)),
        Cancel("job-1"),
        Finished("job-1", DeleteResult("0.1.0_1", None)),
        Crashed("job-1", "ValueError: x", "Traceback ..."),
    ):
        assert pickle.loads(pickle.dumps(message)) == message


def test_a_failure_keeps_its_class_message_and_fields() -> None:
    error = Busy("another client holds the repository")
    error.holders = ["laptop"]  # type: ignore[attr-defined]
    error.unpicklable = threading.Lock()  # type: ignore[attr-defined]
    failed = pickle.loads(pickle.dumps(Failed.of("job-1", error)))
    assert failed.error == "cloudkeep.errors:Busy"
    rebuilt = failed.exception()
    assert type(rebuilt) is Busy and str(rebuilt) == "another client holds the repository"
    assert rebuilt.holders == ["laptop"]  # type: ignore[attr-defined]
    assert not hasattr(rebuilt, "unpicklable")
    # Classes outside cloudkeep.errors are found by module too.
    storage = Failed.of("job-1", StoreRejected("access denied")).exception()
    assert type(storage) is StoreRejected


@pytest.mark.parametrize(
    "name", ["os:system", "cloudkeep.errors:nothing", "cloudkeep.settings:Settings", "x"]
)
def test_a_failure_naming_no_cloudkeep_error_class_is_the_base(name: str) -> None:
    rebuilt = Failed("job-1", name, "it failed").exception()
    assert type(rebuilt) is CloudkeepError and str(rebuilt) == "it failed"


class _TwoArgumentError(CloudkeepError):
    """An error whose ``__init__`` wants more than its message: it does not unpickle."""

    def __init__(self, what: str, why: str) -> None:
        super().__init__(f"{what}: {why}")
        self.what = what


def test_a_failure_that_pickles_crosses_the_pipe_as_itself() -> None:
    error = Busy("another client holds the repository")
    error.holders = ["laptop"]  # type: ignore[attr-defined]
    failed = pickle.loads(pickle.dumps(Failed.of("job-1", error)))
    rebuilt = failed.exception()
    assert failed.raised is not None and type(rebuilt) is Busy
    assert str(rebuilt) == str(error) and rebuilt.holders == ["laptop"]  # type: ignore[attr-defined]


def test_a_failure_that_does_not_unpickle_falls_back_to_its_text() -> None:
    failed = pickle.loads(pickle.dumps(Failed.of("job-1", _TwoArgumentError("pack", "gone"))))
    assert failed.raised is None
    rebuilt = failed.exception()
    assert isinstance(rebuilt, CloudkeepError) and str(rebuilt) == "pack: gone"
    assert rebuilt.what == "pack"  # type: ignore[attr-defined]
