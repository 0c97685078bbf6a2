"""The job manager: submitted from any thread without an event loop, resource-ordered,
cancelable while waiting and while running."""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections import defaultdict

import pytest

from cloudkeep import operations
from cloudkeep.api.jobs import JobManager, Status
from cloudkeep.errors import Canceled, TooManyJobs
from cloudkeep.operations import (
    Backup,
    BackupResult,
    Check,
    Delete,
    Operation,
    OperationResult,
    ProgressFn,
    Prune,
    Restore,
)
from cloudkeep.wire import PlatformEnum
from cloudkeep.workspace import Workspace
from tests.operations.conftest import make_data

WAIT = 60.0  # seconds; only ever reached when something is broken


def manager(run: object, **kwargs: object) -> JobManager:
    jobs = JobManager(
        run,  # type: ignore[arg-type]
        device_name=lambda: "ops-test",
        platform=PlatformEnum.LINUX,
        **kwargs,  # type: ignore[arg-type]
    )
    jobs.start()
    return jobs


class Gates:
    """A runner whose jobs run until the test opens their gate (or cancels them).

    It stands in for the engine where a test needs to decide when a job ends; the
    log records every start and end in the order they happened.
    """

    def __init__(self) -> None:
        self.log: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        self.gates: defaultdict[str, threading.Event] = defaultdict(threading.Event)
        self.started: defaultdict[str, threading.Event] = defaultdict(threading.Event)

    def __call__(
        self,
        operation: Operation[OperationResult],
        progress: ProgressFn | None,
        cancel: threading.Event,
        job_id: str,
    ) -> OperationResult:
        with self._lock:
            gate = self.gates[job_id]
            self.log.append(("start", job_id))
            self.started[job_id].set()
        try:
            while not gate.wait(0.01):
                if cancel.is_set():
                    raise Canceled("the operation was canceled")
            return OperationResult()
        finally:
            with self._lock:
                self.log.append(("end", job_id))

    def running(self) -> set[str]:
        with self._lock:
            started = {job for event, job in self.log if event == "start"}
            ended = {job for event, job in self.log if event == "end"}
        return started - ended


def test_submit_from_a_plain_thread_without_an_event_loop(workspace: Workspace) -> None:
    def run_here(
        operation: Operation[OperationResult],
        progress: ProgressFn | None,
        cancel: threading.Event,
        job_id: str,
    ) -> OperationResult:
        return operations.run(operation, workspace, progress, cancel)

    jobs = manager(run_here)
    events: list[object] = []
    submitted: list[object] = []

    def scheduler() -> None:
        with pytest.raises(RuntimeError):
            asyncio.get_running_loop()  # no loop in this thread
        job = jobs.submit(Backup(), listener=events.append)
        submitted.append(job)
        assert job.finished.wait(WAIT)

    thread = threading.Thread(target=scheduler)
    thread.start()
    thread.join(WAIT)
    (job,) = submitted
    assert job.status is Status.COMPLETED, job.reason  # type: ignore[attr-defined]
    result = job.result  # type: ignore[attr-defined]
    assert isinstance(result, BackupResult)
    statuses = [event.status for event in events]  # type: ignore[attr-defined]
    assert statuses[0] is Status.INITIALIZED and statuses[-1] is Status.COMPLETED
    assert [info.id for info in workspace.list()] == [result.info.id]
    assert jobs.find(Backup, result.info.id) is job
    assert jobs.find(Backup, job.id) is job  # type: ignore[attr-defined]
    jobs.stop()


def test_jobs_sharing_a_resource_start_in_order_and_never_overlap() -> None:
    gates = Gates()
    jobs = manager(gates)
    first = jobs.submit(Backup())
    restore = jobs.submit(Restore("0.1.0_1"))
    second = jobs.submit(Backup())
    delete = jobs.submit(Delete("0.1.0_2"))
    prune = jobs.submit(Prune())
    check = jobs.submit(Check())
    for job in (first, delete):
        assert gates.started[job.id].wait(WAIT)
    # The restore and the second backup wait behind the first backup (the live data);
    # the delete runs beside it, and the prune and the check wait behind it (the packs).
    assert gates.running() == {first.id, delete.id}
    assert restore.status is second.status is Status.INITIALIZED
    assert prune.status is check.status is Status.INITIALIZED

    gates.gates[delete.id].set()
    assert delete.finished.wait(WAIT) and delete.status is Status.COMPLETED
    assert gates.started[prune.id].wait(WAIT)
    gates.gates[first.id].set()
    assert gates.started[restore.id].wait(WAIT)
    assert gates.running() == {restore.id, prune.id}
    gates.gates[prune.id].set()
    assert gates.started[check.id].wait(WAIT)
    for job in (restore, second, check):
        gates.gates[job.id].set()
    for job in (first, restore, second, prune, check):
        assert job.finished.wait(WAIT) and job.status is Status.COMPLETED
    assert gates.log.index(("end", delete.id)) < gates.log.index(("start", prune.id))

    data_jobs = [first.id, restore.id, second.id]
    assert [job for event, job in gates.log if event == "start" and job in data_jobs] == data_jobs
    for earlier, later in itertools.pairwise(data_jobs):
        assert gates.log.index(("end", earlier)) < gates.log.index(("start", later))
    assert gates.log.index(("end", prune.id)) < gates.log.index(("start", check.id))
    jobs.stop()


def test_a_waiting_job_is_canceled_at_once_and_never_runs() -> None:
    gates = Gates()
    jobs = manager(gates)
    running = jobs.submit(Backup())
    waiting = jobs.submit(Backup())
    assert gates.started[running.id].wait(WAIT)
    jobs.cancel(waiting)
    assert waiting.status is Status.CANCELED and waiting.finished.is_set()
    assert waiting.reason == "canceled on request before it started"
    after = jobs.submit(Backup())
    gates.gates[running.id].set()
    assert gates.started[after.id].wait(WAIT)
    gates.gates[after.id].set()
    assert after.finished.wait(WAIT)
    assert ("start", waiting.id) not in gates.log
    jobs.stop()


def test_a_running_backup_is_canceled_through_the_engine(workspace: Workspace) -> None:
    make_data(workspace.settings.data / "big", megabytes=48)

    def run_here(
        operation: Operation[OperationResult],
        progress: ProgressFn | None,
        cancel: threading.Event,
        job_id: str,
    ) -> OperationResult:
        return operations.run(operation, workspace, progress, cancel)

    jobs = manager(run_here)
    moving = threading.Event()

    def listener(event: object) -> None:
        if event.status is Status.IN_PROGRESS and event.percentage > 0:  # type: ignore[attr-defined]
            moving.set()

    job = jobs.submit(Backup(), listener=listener)
    assert moving.wait(WAIT)
    jobs.cancel(job)
    assert job.finished.wait(WAIT)
    assert job.status is Status.CANCELED and job.reason == "canceled on request"
    assert workspace.list() == []  # a canceled backup leaves nothing visible
    jobs.stop()


def test_a_full_queue_refuses_every_kind_of_job() -> None:
    gates = Gates()
    jobs = manager(gates, max_queued=1)
    running = jobs.submit(Backup())
    waiting = jobs.submit(Restore("0.1.0_1"))
    with pytest.raises(TooManyJobs, match="1 jobs are already waiting"):
        jobs.submit(Backup())
    with pytest.raises(TooManyJobs):  # deletes count too: each would be a thread waiting
        jobs.submit(Delete("0.1.0_1"))
    jobs.stop(timeout=WAIT)
    for job in (running, waiting):
        assert job.status is Status.CANCELED


def test_deletes_wait_for_each_other_and_count_toward_the_limit() -> None:
    gates = Gates()
    jobs = manager(gates, max_queued=2)
    first = jobs.submit(Delete("0.1.0_1"))
    assert gates.started[first.id].wait(WAIT)
    second = jobs.submit(Delete("0.1.0_2"))
    prune = jobs.submit(Prune())
    assert second.status is prune.status is Status.INITIALIZED
    with pytest.raises(TooManyJobs):
        jobs.submit(Delete("0.1.0_3"))
    jobs.stop(timeout=WAIT)
    assert ("start", second.id) not in gates.log and ("start", prune.id) not in gates.log


def test_jobs_submitted_before_start_wait_for_it() -> None:
    gates = Gates()
    jobs = JobManager(gates, device_name=lambda: "ops-test", platform=PlatformEnum.LINUX)
    job = jobs.submit(Delete("0.1.0_1"))
    assert job.status is Status.INITIALIZED and not gates.log
    jobs.start()
    assert gates.started[job.id].wait(WAIT)
    gates.gates[job.id].set()
    assert job.finished.wait(WAIT) and job.status is Status.COMPLETED
    jobs.stop()
