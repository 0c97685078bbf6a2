"""Creations and restorations as background jobs, with progress fanned out to listeners.

One worker thread runs the jobs in FIFO order, so backups are serialized and a restore
never overlaps a backup of the same data (a request that arrives while another job
runs is queued, visible as INITIALIZED). The queue is bounded: beyond ``max_queued``
waiting jobs a submission raises ``TooManyJobs`` (HTTP 429). The engine is blocking;
nothing here ever runs it on the event loop. Listeners live on the event loop and
receive immutable snapshots through ``call_soon_threadsafe``; a listener that goes
away does not affect the job: only an explicit cancel does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Protocol

from cloudkeep import __version__
from cloudkeep.errors import Canceled, CloudkeepError, TooManyJobs
from cloudkeep.wire import (
    Backup,
    BackupsStreamedProgress,
    BackupStatus,
    BackupStatusEnum,
    BackupStreamedProgress,
    ModelDownloadProgressStatusEnum,
    PlatformEnum,
    backup_from_info,
    grouped_timestamp,
)

if TYPE_CHECKING:
    from cloudkeep.workspace import BackupInfo, Progress

__all__ = [
    "DEFAULT_MAX_QUEUED",
    "Engine",
    "Job",
    "JobKind",
    "JobManager",
    "Subscription",
    "new_trace_id",
]

log = logging.getLogger("cloudkeep.api")

Status = ModelDownloadProgressStatusEnum
TERMINAL = frozenset({Status.COMPLETED, Status.FAILED, Status.CANCELED})
JOB_PREFIX = "job-"
_HISTORY = 1000
# Jobs waiting behind the running one. Each is a whole backup or restore run in turn,
# so more than this is a client looping, not a user asking.
DEFAULT_MAX_QUEUED = 16
# Publish an IN-PROGRESS event only when the percentage rose by this much, or this long
# passed since the last one: enough for a smooth bar, few enough for slow clients.
_MIN_STEP = 0.5
_MIN_INTERVAL = 0.25


def new_trace_id() -> str:
    """Short id written to the log with a traceback and given to the client."""
    return secrets.token_hex(6)


class Engine(Protocol):
    """The part of ``cloudkeep.workspace.Workspace`` the jobs drive."""

    def backup(
        self,
        progress: Callable[[Progress], None] | None = None,
        cancel: threading.Event | None = None,
    ) -> BackupInfo: ...

    def restore(
        self,
        backup_id: str,
        target: Any = None,
        progress: Callable[[Progress], None] | None = None,
        cancel: threading.Event | None = None,
    ) -> BackupInfo: ...


class JobKind(StrEnum):
    CREATION = "creation"
    RESTORATION = "restoration"


@dataclass
class Job:
    """Mutable state, only changed by the manager under its lock."""

    id: str
    kind: JobKind
    backup: Backup
    status: Status = Status.INITIALIZED
    percentage: float = 0.0
    reason: str | None = None
    error: CloudkeepError | None = None
    trace_id: str | None = None
    cancel: threading.Event = field(default_factory=threading.Event)
    finished: threading.Event = field(default_factory=threading.Event)
    subscribers: set[Subscription] = field(default_factory=set)
    published_at: float = 0.0
    published_percentage: float = 0.0

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


class Subscription:
    """An event-loop-side queue fed from any thread."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._queue: asyncio.Queue[Any] = asyncio.Queue()

    def push(self, item: Any) -> None:
        with contextlib.suppress(RuntimeError):  # loop closed: the listener is gone
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)

    async def get(self) -> Any:
        return await self._queue.get()


class JobManager:
    """Queue, worker thread, job registry and progress fan-out."""

    def __init__(
        self,
        engine: Callable[[], Engine],
        *,
        device_name: Callable[[], str],
        platform: PlatformEnum,
        on_created: Callable[[BackupInfo], None] | None = None,
        max_queued: int = DEFAULT_MAX_QUEUED,
    ) -> None:
        self._engine = engine
        self.max_queued = max_queued
        self._device_name = device_name
        self._platform = platform
        self._on_created = on_created
        self._lock = threading.RLock()
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._by_backup: dict[tuple[JobKind, str], Job] = {}
        self._watchers: set[Subscription] = set()
        self._worker: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------
    def start(self) -> None:
        if self._worker is None:
            self._worker = threading.Thread(target=self._run, name="cloudkeep-jobs", daemon=True)
            self._worker.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Cancel everything (the engine leaves no partial backup) and wait for the worker."""
        self.cancel_all()
        self._queue.put(None)
        if self._worker is not None:
            self._worker.join(timeout)
            self._worker = None

    # -- submission --------------------------------------------------------------
    def submit_creation(self, loop: asyncio.AbstractEventLoop) -> tuple[Job, Subscription]:
        """Queue a backup; its provisional Backup carries the job id until the final id."""
        job_id = f"{JOB_PREFIX}{secrets.token_hex(8)}"
        now = datetime.now(UTC)
        provisional = Backup(
            id=job_id,
            version=__version__,
            timestamp=str(int(now.timestamp() * 1_000_000)),
            bytes=0,
            created=grouped_timestamp(now),
            device_name=self._device_name(),
            platform=self._platform,
        )
        return self._submit(Job(job_id, JobKind.CREATION, provisional), loop)

    def submit_restoration(
        self, backup: Backup, loop: asyncio.AbstractEventLoop
    ) -> tuple[Job, Subscription]:
        job = Job(f"{JOB_PREFIX}{secrets.token_hex(8)}", JobKind.RESTORATION, backup)
        return self._submit(job, loop)

    def check_room(self) -> None:
        """Raise ``TooManyJobs`` if the queue is full (before accepting a WebSocket, say)."""
        with self._lock:
            waiting = sum(1 for j in self._jobs.values() if j.status is Status.INITIALIZED)
            if waiting >= self.max_queued:
                raise TooManyJobs(
                    f"Too many jobs: {waiting} backups and restores are already waiting to run"
                )

    def _submit(self, job: Job, loop: asyncio.AbstractEventLoop) -> tuple[Job, Subscription]:
        subscription = Subscription(loop)
        with self._lock:
            self.check_room()
            job.subscribers.add(subscription)
            self._remember(job)
            subscription.push(job.progress())
            self._notify_watchers(job)
        self._queue.put(job)
        return job, subscription

    def _remember(self, job: Job) -> None:
        self._jobs[job.id] = job
        key_id = job.backup.id if job.kind is JobKind.RESTORATION else job.id
        self._by_backup[(job.kind, key_id)] = job
        while len(self._jobs) > _HISTORY:
            oldest_id, oldest = next(iter(self._jobs.items()))
            if not oldest.terminal:
                break
            del self._jobs[oldest_id]
            for key in [k for k, v in self._by_backup.items() if v is oldest]:
                del self._by_backup[key]

    # -- lookups -----------------------------------------------------------------
    def find(self, kind: JobKind, ident: str) -> Job | None:
        """By job id, or by backup id (final id of a creation, subject of a restoration)."""
        with self._lock:
            job = self._jobs.get(ident)
            if job is not None and job.kind is kind:
                return job
            return self._by_backup.get((kind, ident))

    def active(self) -> list[Job]:
        with self._lock:
            return [job for job in self._jobs.values() if not job.terminal]

    def snapshot_all(self, changed: Job | None = None) -> BackupsStreamedProgress:
        """Every job not finished, plus ``changed`` (so listeners see how a job ended)."""
        with self._lock:
            jobs = [j for j in self._jobs.values() if not j.terminal or j is changed]
            return BackupsStreamedProgress(
                backups=[j.progress() for j in jobs if j.kind is JobKind.CREATION],
                restorations=[j.progress() for j in jobs if j.kind is JobKind.RESTORATION],
            )

    # -- listening ---------------------------------------------------------------
    async def events(
        self, job: Job, subscription: Subscription
    ) -> AsyncIterator[BackupStreamedProgress]:
        """Snapshots of ``job`` from subscription on, ending with the terminal one."""
        try:
            while True:
                event: BackupStreamedProgress = await subscription.get()
                yield event
                if event.status in TERMINAL:
                    return
        finally:
            with self._lock:
                job.subscribers.discard(subscription)

    def watch(self, loop: asyncio.AbstractEventLoop) -> Subscription:
        """Every change of every job, as BackupsStreamedProgress; starts with the current state."""
        subscription = Subscription(loop)
        with self._lock:
            self._watchers.add(subscription)
            subscription.push(self.snapshot_all())
        return subscription

    def unwatch(self, subscription: Subscription) -> None:
        with self._lock:
            self._watchers.discard(subscription)

    # -- control -----------------------------------------------------------------
    def cancel(self, job: Job) -> None:
        """A queued job ends CANCELED at once; a running one when the engine notices."""
        with self._lock:
            if job.terminal:
                return
            job.cancel.set()
            if job.status is Status.INITIALIZED:
                self._finish(job, Status.CANCELED, reason="canceled on request before it started")

    def cancel_all(self) -> None:
        """Cancel every queued and running job (the server is stopping)."""
        for job in self.active():
            self.cancel(job)

    # -- worker ------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            with self._lock:
                if job.terminal:
                    continue
                if job.cancel.is_set():
                    self._finish(job, Status.CANCELED, reason="canceled on request")
                    continue
                job.status = Status.IN_PROGRESS
                self._publish(job)
            self._execute(job)

    def _execute(self, job: Job) -> None:
        try:
            engine = self._engine()
            if job.kind is JobKind.CREATION:
                info = engine.backup(progress=self._progress_callback(job), cancel=job.cancel)
            else:
                info = engine.restore(
                    job.backup.id, None, progress=self._progress_callback(job), cancel=job.cancel
                )
        except Canceled:
            with self._lock:
                self._finish(job, Status.CANCELED, reason="canceled on request")
        except CloudkeepError as exc:
            with self._lock:
                job.error = exc
                self._finish(job, Status.FAILED, reason=str(exc) or type(exc).__name__)
        except Exception:
            trace_id = new_trace_id()
            log.exception("%s %s failed [trace %s]", job.kind.value, job.id, trace_id)
            with self._lock:
                job.trace_id = trace_id
                self._finish(
                    job,
                    Status.FAILED,
                    reason=f"internal error (trace id {trace_id}); see the server log",
                )
        else:
            backup = backup_from_info(info)
            if job.kind is JobKind.CREATION:
                for warning in info.warnings:
                    log.warning("backup %s: %s", backup.id, warning)
            if job.kind is JobKind.CREATION and self._on_created is not None:
                try:
                    self._on_created(info)
                except Exception:  # a cache problem must not turn a good backup into FAILED
                    log.exception("updating the backup list after %s failed", backup.id)
            with self._lock:
                job.backup = backup
                if job.kind is JobKind.CREATION:
                    self._by_backup[(JobKind.CREATION, backup.id)] = job
                job.percentage = 100.0
                self._finish(job, Status.COMPLETED)

    def _progress_callback(self, job: Job) -> Callable[[Progress], None]:
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
        """Called with the lock held: one snapshot to the job's listeners and the watchers."""
        job.published_at = time.monotonic()
        job.published_percentage = job.percentage
        event = job.progress()
        for subscription in job.subscribers:
            subscription.push(event)
        self._notify_watchers(job)

    def _notify_watchers(self, job: Job) -> None:
        if self._watchers:
            snapshot = self.snapshot_all(changed=job)
            for subscription in self._watchers:
                subscription.push(snapshot)
