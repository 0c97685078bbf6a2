"""Operations as background jobs: ordered by the resources they use, progress fanned out.

Any thread may submit (a request handler, a scheduler thread): nothing here needs an
event loop. Jobs start in submission order, each in a thread of its own, and a job
waits while an earlier unfinished job uses a resource it uses (``Operation.uses``):
backups and restores of the live data never overlap, nor do prunes, deletes and
checks of the packs, while a delete beside a backup starts at once; their store work
is ordered by the repository lock, as between devices. A job waiting to start is
INITIALIZED; beyond ``max_queued`` of them a submission raises ``TooManyJobs`` (HTTP 429).

Listeners are plain callables, called with the manager's lock held (from whichever
thread changed the job) with immutable wire snapshots; they must only hand them on
(``streaming.Subscription`` bridges them to an event loop). A listener that goes away
does not affect the job: only an explicit cancel does.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from cloudkeep import __version__
from cloudkeep.errors import Canceled, CloudkeepError, TooManyJobs
from cloudkeep.operations import (
    Operation,
    OperationResult,
    Progress,
    ProgressFn,
    Resource,
    Stream,
)
from cloudkeep.wire import (
    Backup as WireBackup,
)
from cloudkeep.wire import (
    BackupsStreamedProgress,
    BackupStatus,
    BackupStatusEnum,
    BackupStreamedProgress,
    ModelDownloadProgressStatusEnum,
    PlatformEnum,
    backup_from_info,
    grouped_timestamp,
)

__all__ = [
    "DEFAULT_MAX_QUEUED",
    "JOB_PREFIX",
    "TERMINAL",
    "Job",
    "JobManager",
    "Listener",
    "Runner",
    "Status",
    "new_trace_id",
]

log = logging.getLogger("cloudkeep.api")

Status = ModelDownloadProgressStatusEnum
TERMINAL = frozenset({Status.COMPLETED, Status.FAILED, Status.CANCELED})
JOB_PREFIX = "job-"
_HISTORY = 1000
# Jobs waiting to start. Each is a whole backup, restore, delete... run in turn, so more
# than this is a client looping, not a user asking.
DEFAULT_MAX_QUEUED = 16
# Publish an IN-PROGRESS event only when the percentage rose by this much, or this long
# passed since the last one: enough for a smooth bar, few enough for slow clients.
_MIN_STEP = 0.5
_MIN_INTERVAL = 0.25

Listener = Callable[[Any], None]


def new_trace_id() -> str:
    """Short id written to the log with a traceback and given to the client."""
    return secrets.token_hex(6)


class Runner(Protocol):
    """Runs one operation to its result (in this process, or in the engine process)."""

    def __call__(
        self,
        operation: Operation[OperationResult],
        progress: ProgressFn | None,
        cancel: threading.Event,
        job_id: str,
    ) -> OperationResult: ...


@dataclass(eq=False)
class Job:
    """Mutable state, only changed by the manager under its lock.

    ``backup`` is the wire Backup the job's events carry: the backup a restore or delete
    acts on, a provisional one named by the job id for a creation until it completes.
    """

    id: str
    operation: Operation[OperationResult]
    backup: WireBackup
    status: Status = Status.INITIALIZED
    percentage: float = 0.0
    reason: str | None = None
    result: OperationResult | None = None
    error: CloudkeepError | None = None
    trace_id: str | None = None
    cancel: threading.Event = field(default_factory=threading.Event)
    finished: threading.Event = field(default_factory=threading.Event)
    listeners: set[Listener] = field(default_factory=set)
    published_at: float = 0.0
    published_percentage: float = 0.0

    @property
    def name(self) -> str:
        """What the job does, for messages: "backup", "restore", "delete"..."""
        return type(self.operation).__name__.lower()

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    def progress(self) -> BackupStreamedProgress:
        return BackupStreamedProgress(
            backup=self.backup,
            percentage=round(self.percentage, 2),
            status=self.status,
            reason=self.reason,
        )

    def status_model(self) -> BackupStatus:
        return BackupStatus(
            backup=self.backup,
            percentage=round(self.percentage, 2),
            value=BackupStatusEnum(self.status.value),
            reason=self.reason,
        )


class JobManager:
    """Job registry, resource-ordered start, cancellation and progress fan-out."""

    def __init__(
        self,
        run: Runner,
        *,
        device_name: Callable[[], str],
        platform: PlatformEnum,
        on_completed: Callable[[Job, OperationResult], None] | None = None,
        max_queued: int = DEFAULT_MAX_QUEUED,
    ) -> None:
        self._run = run
        self.max_queued = max_queued
        self._device_name = device_name
        self._platform = platform
        self._on_completed = on_completed
        self._lock = threading.RLock()
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._by_subject: dict[tuple[type, str], Job] = {}
        self._waiting: list[Job] = []
        self._running: dict[Job, threading.Thread] = {}
        self._watchers: set[Listener] = set()
        self._started = False

    # -- lifecycle ---------------------------------------------------------------
    def start(self) -> None:
        """Start running jobs (those submitted before wait until now)."""
        with self._lock:
            self._started = True
            self._dispatch()

    def stop(self, timeout: float = 30.0) -> None:
        """Cancel everything (the engine leaves no partial backup) and wait for the jobs."""
        with self._lock:
            self._started = False
        self.cancel_all()
        deadline = time.monotonic() + timeout
        with self._lock:
            threads = list(self._running.values())
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    # -- submission --------------------------------------------------------------
    def submit(
        self,
        operation: Operation[OperationResult],
        *,
        subject: WireBackup | None = None,
        listener: Listener | None = None,
    ) -> Job:
        """Queue ``operation``; from any thread. ``listener`` gets every event of the job,
        starting with INITIALIZED. ``subject`` is the wire Backup its events carry
        (default: a provisional one named by the job id)."""
        job_id = f"{JOB_PREFIX}{secrets.token_hex(8)}"
        job = Job(job_id, operation, subject or self._provisional(job_id))
        with self._lock:
            self.check_room()
            if listener is not None:
                job.listeners.add(listener)
                listener(job.progress())
            self._remember(job)
            self._waiting.append(job)
            self._notify_watchers(job)
            self._dispatch()
        return job

    def _provisional(self, job_id: str) -> WireBackup:
        now = datetime.now(UTC)
        return WireBackup(
            id=job_id,
            version=__version__,
            timestamp=str(int(now.timestamp() * 1_000_000)),
            bytes=0,
            created=grouped_timestamp(now),
            device_name=self._device_name(),
            platform=self._platform,
        )

    def check_room(self) -> None:
        """Raise ``TooManyJobs`` if the queue is full (before accepting a WebSocket, say)."""
        with self._lock:
            waiting = len(self._waiting)
            if waiting >= self.max_queued:
                raise TooManyJobs(f"Too many jobs: {waiting} jobs are already waiting to run")

    def _remember(self, job: Job) -> None:
        self._jobs[job.id] = job
        self._by_subject[(type(job.operation), job.backup.id)] = job
        while len(self._jobs) > _HISTORY:
            oldest_id, oldest = next(iter(self._jobs.items()))
            if not oldest.terminal:
                break
            del self._jobs[oldest_id]
            for key in [k for k, v in self._by_subject.items() if v is oldest]:
                del self._by_subject[key]

    # -- lookups -----------------------------------------------------------------
    def find(self, kind: type[Operation[Any]], ident: str) -> Job | None:
        """A job of this kind by job id, or by the id of the backup it acts on (the final
        id of a completed backup)."""
        with self._lock:
            job = self._jobs.get(ident)
            if job is not None and type(job.operation) is kind:
                return job
            return self._by_subject.get((kind, ident))

    def active(self) -> list[Job]:
        with self._lock:
            return [job for job in self._jobs.values() if not job.terminal]

    def progress_all(self, changed: Job | None = None) -> BackupsStreamedProgress:
        """Every job of a progress stream not finished, plus ``changed`` (so listeners see
        how a job ended)."""
        with self._lock:
            jobs = [j for j in self._jobs.values() if not j.terminal or j is changed]
            return BackupsStreamedProgress(
                backups=[j.progress() for j in jobs if j.operation.stream is Stream.CREATIONS],
                restorations=[
                    j.progress() for j in jobs if j.operation.stream is Stream.RESTORATIONS
                ],
            )

    # -- listening ---------------------------------------------------------------
    def listen(self, job: Job, listener: Listener) -> None:
        """``listener`` gets the job's current state now, then every change."""
        with self._lock:
            job.listeners.add(listener)
            listener(job.progress())

    def unlisten(self, job: Job, listener: Listener) -> None:
        with self._lock:
            job.listeners.discard(listener)

    def watch(self, listener: Listener) -> None:
        """Every change of every backup and restore as BackupsStreamedProgress; starts with
        the current state."""
        with self._lock:
            self._watchers.add(listener)
            listener(self.progress_all())

    def unwatch(self, listener: Listener) -> None:
        with self._lock:
            self._watchers.discard(listener)

    # -- control -----------------------------------------------------------------
    def cancel(self, job: Job) -> None:
        """A waiting job ends CANCELED at once; a running one when the engine notices."""
        with self._lock:
            if job.terminal:
                return
            job.cancel.set()
            if job in self._waiting:
                self._waiting.remove(job)
                self._finish(job, Status.CANCELED, reason="canceled on request before it started")
                self._dispatch()

    def cancel_all(self) -> None:
        """Cancel every waiting and running job (the server is stopping)."""
        for job in self.active():
            self.cancel(job)

    # -- running -----------------------------------------------------------------
    def _dispatch(self) -> None:
        """Start every waiting job no running or earlier waiting job shares a resource with
        (called with the lock held)."""
        if not self._started:
            return
        taken: set[Resource] = set()
        for running in self._running:
            taken |= running.operation.uses
        for job in list(self._waiting):
            uses = job.operation.uses
            if uses & taken:
                taken |= uses  # later jobs using these wait behind this one
                continue
            taken |= uses
            self._waiting.remove(job)
            job.status = Status.IN_PROGRESS
            self._publish(job)
            thread = threading.Thread(target=self._execute, args=(job,), name=job.id, daemon=True)
            self._running[job] = thread
            thread.start()

    def _execute(self, job: Job) -> None:
        try:
            self._outcome(job)
        finally:
            with self._lock:
                self._running.pop(job, None)
                self._dispatch()

    def _outcome(self, job: Job) -> None:
        try:
            result = self._run(job.operation, self._progress_callback(job), job.cancel, job.id)
        except Canceled:
            with self._lock:
                self._finish(job, Status.CANCELED, reason="canceled on request")
        except CloudkeepError as exc:
            with self._lock:
                job.error = exc
                self._finish(job, Status.FAILED, reason=str(exc) or type(exc).__name__)
        except Exception:
            trace_id = new_trace_id()
            log.exception("%s %s failed [trace %s]", job.name, job.id, trace_id)
            with self._lock:
                job.trace_id = trace_id
                self._finish(
                    job,
                    Status.FAILED,
                    reason=f"internal error (trace id {trace_id}); see the server log",
                )
        else:
            if self._on_completed is not None:
                try:
                    self._on_completed(job, result)
                except Exception:  # a cache problem must not turn a good job into FAILED
                    log.exception("bookkeeping after %s %s failed", job.name, job.id)
            with self._lock:
                job.result = result
                if result.info is not None:
                    job.backup = backup_from_info(result.info)
                    self._by_subject[(type(job.operation), job.backup.id)] = job
                job.percentage = 100.0
                self._finish(job, Status.COMPLETED)

    def _progress_callback(self, job: Job) -> ProgressFn:
        """Engine progress → monotonic percentage, held below 100 until the job ends.

        Phases may each run from 0 to 100; the percentage shown never goes back.
        """

        def report(progress: Progress) -> None:
            try:
                value = float(progress.percentage)
            except (TypeError, ValueError, ZeroDivisionError):
                return
            value = min(max(value, 0.0), 99.0)
            now = time.monotonic()
            with self._lock:
                if job.terminal or value <= job.percentage:
                    return
                job.percentage = value
                rose = value - job.published_percentage
                if rose >= _MIN_STEP or now - job.published_at >= _MIN_INTERVAL:
                    self._publish(job)

        return report

    def _finish(self, job: Job, status: Status, reason: str | None = None) -> None:
        job.status = status
        job.reason = reason
        self._publish(job)
        job.finished.set()

    def _publish(self, job: Job) -> None:
        """Called with the lock held: one progress event to the job's listeners and the watchers."""
        job.published_at = time.monotonic()
        job.published_percentage = job.percentage
        event = job.progress()
        for listener in list(job.listeners):
            listener(event)
        self._notify_watchers(job)

    def _notify_watchers(self, job: Job) -> None:
        if self._watchers and job.operation.stream is not None:
            progress = self.progress_all(changed=job)
            for listener in list(self._watchers):
                listener(progress)
