"""What the routes talk to: the engine (opened lazily), the list cache and the jobs.

Reads (list, get) use an in-process Workspace from a thread pool; every operation
(backup, restore, delete) is a job, run in the engine process (see ``runner``) so it
never slows the event loop.

The Workspace is opened on first use, not at startup, so a server whose store or
passphrase is not usable yet still starts and answers every request with a 511
that says what to fix, instead of refusing to run.
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from starlette.concurrency import run_in_threadpool

from cloudkeep import operations
from cloudkeep.api.cache import BackupListCache
from cloudkeep.api.errors import ApiError
from cloudkeep.api.jobs import (
    DEFAULT_MAX_QUEUED,
    JOB_PREFIX,
    TERMINAL,
    Job,
    JobManager,
    Listener,
    Runner,
    Status,
)
from cloudkeep.api.runner import ProcessEngine
from cloudkeep.api.streaming import Subscription
from cloudkeep.errors import (
    BackupNotFound,
    CloudkeepError,
    InvalidBackupId,
    RepositoryNotFound,
)
from cloudkeep.operations import Operation, OperationResult, ProgressFn
from cloudkeep.wire import Backup, backup_from_info, current_platform

if TYPE_CHECKING:
    from cloudkeep.backups.browse import Found, Listing
    from cloudkeep.backups.manifest import FileEntry
    from cloudkeep.settings import Settings
    from cloudkeep.workspace import BackupInfo, Workspace

__all__ = ["BackupService", "validate_id"]

log = logging.getLogger("cloudkeep.api")
T = TypeVar("T")

# Backup ids are ``version_timestamp``; job ids ``job-<hex>``. Anything else (slashes,
# dots-only, control characters, absurd lengths) is refused before it reaches storage.
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$")


def validate_id(value: str) -> str:
    """The id, or ApiError 404 (an id that cannot exist is simply not found)."""
    if not _ID.fullmatch(value) or ".." in value:
        raise ApiError(
            404,
            f"No backup with id {value[:80]!r}: ids look like "
            "<version>_<timestamp> (see GET /backups).",
        )
    return value


_DELETE_POLL = 0.1  # seconds between checks that a deleted backup's manifest is gone


def _log_late_failure(backup_id: str) -> Listener:
    """After the answer was sent, a failure of the delete's prune can only be logged."""

    def report(event: Any) -> None:
        if event.status is Status.FAILED:
            log.warning("prune after deleting %s failed: %s", backup_id, event.reason)

    return report


def _taken(target: Path) -> bool:
    """Whether ``target`` holds anything (a restore goes into a new or empty folder only)."""
    return target.exists() and (not target.is_dir() or any(target.iterdir()))


def _not_found(backup_id: str) -> ApiError:
    return ApiError(404, f"No backup with id {backup_id!r} in the store (see GET /backups).")


class BackupService:
    """One per app; owns the jobs and the engine process (``start``/``stop`` from the lifespan)."""

    def __init__(
        self,
        settings: Settings,
        *,
        list_ttl: float = 30.0,
        jobs_in_subprocess: bool = True,
        max_queued_jobs: int = DEFAULT_MAX_QUEUED,
    ) -> None:
        self.settings = settings
        self._workspace: Workspace | None = None
        self._workspace_lock = threading.Lock()
        self.cache = BackupListCache(self._load_list, ttl=list_ttl)
        # The engine's BackupInfo of every backup the cache lists (sizes, bytes added,
        # entries: the dashboard's timeline), kept in step with the cache.
        self._details: dict[str, BackupInfo] = {}
        run: Runner = self._run_here
        self._process_engine: ProcessEngine | None = None
        if jobs_in_subprocess:
            self._process_engine = ProcessEngine(settings)
            run = self._process_engine.run
        self.jobs = JobManager(
            run,
            device_name=self._device_name,
            platform=current_platform(),
            on_completed=self._completed,
            max_queued=max_queued_jobs,
        )

    # -- engine ------------------------------------------------------------------
    def workspace(self) -> Workspace:
        """Open on first use; a failure is not kept, so fixing the config needs no restart."""
        with self._workspace_lock:
            if self._workspace is None:
                from cloudkeep.workspace import Workspace

                self._workspace = Workspace(self.settings)
            return self._workspace

    def _run_here(
        self,
        operation: Operation[OperationResult],
        progress: ProgressFn | None,
        cancel: threading.Event,
        job_id: str,
    ) -> OperationResult:
        return operations.run(operation, self.workspace(), progress, cancel)

    def _completed(self, job: Job, result: OperationResult) -> None:
        """Keep the list cache in step with what a job changed (before it says COMPLETED)."""
        listed = result.listed
        if listed is not None:
            for warning in listed.warnings:
                log.warning("backup %s: %s", listed.id, warning)
            self._details[listed.id] = listed
            self.cache.add(backup_from_info(listed))
        for backup_id in result.unlisted:
            self.cache.remove(backup_id)
            self._details.pop(backup_id, None)

    def _device_name(self) -> str:
        name: Any = getattr(self.settings, "device_name", None)
        if name:
            return str(name)
        import socket

        return socket.gethostname()

    def _load_list(self) -> list[Backup]:
        infos = self.workspace().list()
        self._details.update((info.id, info) for info in infos)
        return [backup_from_info(info) for info in infos]

    # -- lifecycle ---------------------------------------------------------------
    def start(self) -> None:
        if self._process_engine is not None:
            self._process_engine.start()  # imports and spawn overlap with startup
        self.jobs.start()
        self.cache.refresh_in_background()  # warm: the first GET /backups is then instant

    def stop(self) -> None:
        self.jobs.stop()
        if self._process_engine is not None:
            self._process_engine.stop()

    # -- reads -------------------------------------------------------------------
    async def list_body(self) -> bytes:
        """The Backups JSON; from cache when possible, never blocking the loop."""
        listing = self.cache.peek()
        if listing is not None:
            if not self.cache.is_fresh():
                self.cache.refresh_in_background()
            return listing.body
        return (await run_in_threadpool(self.cache.load)).body

    async def details(self) -> list[BackupInfo]:
        """The listed backups' BackupInfo, newest first, from the same cache as ``list_body``."""
        listing = self.cache.peek()
        if listing is None:
            listing = await run_in_threadpool(self.cache.load)
        elif not self.cache.is_fresh():
            self.cache.refresh_in_background()
        details = self._details
        return [details[b.id] for b in listing.entries if b.id in details]

    async def get(self, backup_id: str) -> Backup:
        """A stored backup (cache first, then the store: it may come from another process)."""
        validate_id(backup_id)
        listing = self.cache.peek()
        if listing is not None and backup_id in listing.by_id:
            return listing.by_id[backup_id]
        if backup_id.startswith(JOB_PREFIX):
            raise _not_found(backup_id)
        try:
            info: BackupInfo = await run_in_threadpool(self._get_info, backup_id)
        except (BackupNotFound, InvalidBackupId, RepositoryNotFound) as exc:
            # No repository yet means no backups: the id is simply unknown (as GET /backups
            # answers an empty list rather than an error).
            raise _not_found(backup_id) from exc
        self.cache.refresh_in_background()  # made elsewhere (CLI, another device): catch up
        return backup_from_info(info)

    def _get_info(self, backup_id: str) -> BackupInfo:
        return self.workspace().get(backup_id)

    # -- changes -----------------------------------------------------------------
    def _submit(
        self, operation: Operation[OperationResult], subject: Backup | None = None
    ) -> tuple[Job, Subscription]:
        subscription = Subscription(asyncio.get_running_loop())
        job = self.jobs.submit(operation, subject=subject, listener=subscription.push)
        return job, subscription

    async def delete(self, backup_id: str) -> None:
        """Queue a Delete job and answer as soon as the backup is gone from the store.

        The job (queued on the packs: behind a running prune, check or delete, never
        behind a backup) removes the manifest and then reclaims space under the
        exclusive repository lock, which waits (up to 30 s) for a running backup. The
        backup is deleted the moment its manifest is gone, so the request is answered
        then and the prune finishes in the background.
        """
        subject = await self.get(backup_id)  # 404 now for an id that does not exist
        job, subscription = self._submit(operations.Delete(backup_id), subject)
        try:
            ended = await self._until_deleted(backup_id, subscription)
        finally:
            self.jobs.unlisten(job, subscription.push)
        if not ended:
            self.jobs.listen(job, _log_late_failure(backup_id))
        elif job.status is Status.CANCELED:
            raise ApiError(409, f"The deletion of {backup_id} was canceled.")
        elif job.status is Status.FAILED:
            if isinstance(job.error, BackupNotFound | InvalidBackupId | RepositoryNotFound):
                raise _not_found(backup_id) from job.error
            if job.error is not None:
                raise job.error
            raise ApiError(500, job.reason or f"Deleting {backup_id} failed.")
        self.cache.remove(backup_id)

    async def _until_deleted(self, backup_id: str, subscription: Subscription) -> bool:
        """Wait until the job ended (True) or the backup's manifest is gone (False)."""
        while True:
            try:
                event = await asyncio.wait_for(subscription.get(), _DELETE_POLL)
            except TimeoutError:
                if await run_in_threadpool(self._is_gone, backup_id):
                    return False
                continue
            if event.status in TERMINAL:
                return True

    def _is_gone(self, backup_id: str) -> bool:
        try:
            self.workspace().get(backup_id)
        except (BackupNotFound, InvalidBackupId):
            return True
        except CloudkeepError:
            return False
        return False

    def create(self) -> tuple[Job, Subscription]:
        """Queue a backup; the subscription starts with its INITIALIZED event."""
        return self._submit(operations.Backup())

    async def restore(self, backup_id: str) -> tuple[Job, Subscription]:
        """Check the backup exists (404 now rather than FAILED later), then queue."""
        backup = await self.get(backup_id)
        return self._submit(operations.Restore(backup_id), backup)

    async def queue_restore(
        self,
        backup_id: str,
        include: Sequence[str] = (),
        target: Path | None = None,
        force: bool = False,
    ) -> Job:
        """Queue a restore of the whole backup or of ``include`` (into ``target``, else in
        place), answered at once: 404 now for an unknown backup or path, 400 for a bad
        path or a target that is taken; its progress shows on the restorations stream."""
        backup = await self.get(backup_id)
        if include:
            await run_in_threadpool(self._check_include, backup_id, include)
        if target is not None and await run_in_threadpool(_taken, target):
            raise ApiError(
                400,
                f"The restore target {target} exists and is not empty: choose a new or "
                "empty folder.",
            )
        operation = operations.Restore(backup_id, target, force=force, include=tuple(include))
        return self.jobs.submit(operation, subject=backup)

    def _check_include(self, backup_id: str, include: Sequence[str]) -> None:
        from cloudkeep.backups.browse import select

        select(self.workspace().manifest(backup_id), include)

    async def undo_restore(self, force: bool = False) -> str:
        """Put back what the last in-place restore replaced (a job on the data, waited
        for); where the state it took away is kept now."""
        subscription = Subscription(asyncio.get_running_loop())
        job = self.jobs.submit(operations.UndoRestore(force), listener=subscription.push)
        try:
            while (await subscription.get()).status not in TERMINAL:
                pass
        finally:
            self.jobs.unlisten(job, subscription.push)
        if isinstance(job.result, operations.UndoRestoreResult):
            return job.result.kept
        if job.error is not None:
            raise job.error
        raise ApiError(409 if job.status is Status.CANCELED else 500, job.reason or "Undo failed.")

    async def pending_undo(self) -> tuple[Path, str, str | None] | None:
        return await run_in_threadpool(self.workspace().pending_undo)

    # -- browsing (reads: the engine in a thread, never a job) ---------------------
    async def read_backup(self, backup_id: str, read: Callable[[], T]) -> T:
        """Run ``read`` (of the backup ``backup_id``) in the thread pool. A store with no
        repository yet holds no backups, so the id is simply unknown: 404, as
        ``get`` answers, not the 511 that says the server's store is misconfigured."""
        try:
            return await run_in_threadpool(read)
        except RepositoryNotFound as exc:
            raise _not_found(backup_id) from exc

    async def ls(self, backup_id: str, path: str, recursive: bool) -> Listing:
        validate_id(backup_id)
        return await self.read_backup(
            backup_id, lambda: self.workspace().ls(backup_id, path, recursive)
        )

    async def file_entry(self, backup_id: str, path: str) -> FileEntry:
        validate_id(backup_id)
        return await self.read_backup(
            backup_id, lambda: self.workspace().file_entry(backup_id, path)
        )

    def file_stream(self, backup_id: str, path: str) -> Iterator[bytes | memoryview]:
        """The file's bytes, fetched as they are consumed (iterate in a thread)."""
        return self.workspace().file_stream(backup_id, path)

    async def find(
        self,
        pattern: str,
        device: str | None,
        backup_id: str | None,
        kind: str | None,
        limit: int | None,
    ) -> tuple[list[Found], bool]:
        if backup_id is not None:
            validate_id(backup_id)
        try:
            return await run_in_threadpool(
                self.workspace().find, pattern, device, backup_id, kind, limit
            )
        except RepositoryNotFound as exc:
            # No repository yet means no backups, as GET /backups answers: nothing is
            # found, and a named backup is simply unknown.
            if backup_id is not None:
                raise _not_found(backup_id) from exc
            return [], False

    # -- job lookups -------------------------------------------------------------
    def creation_job(self, ident: str) -> Job | None:
        validate_id(ident)
        return self.jobs.find(operations.Backup, ident)

    def restoration_job(self, ident: str) -> Job | None:
        validate_id(ident)
        return self.jobs.find(operations.Restore, ident)
