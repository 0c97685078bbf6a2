"""Scheduled backups in the server: when the next one runs, whether it needs to, and
what follows it.

``Scheduler`` is one thread. It plans each run from the schedule (an interval, or
times of day in local time), moved by a random delay of up to the jitter, and
waits in steps of at most ``TICK`` seconds, comparing the wall clock on every
wake-up: a laptop suspended past a due time backs up once soon after waking (the
next slot follows the run, never each missed slot in turn). A run

- joins a job already using the data (a backup or restore from the API) instead
  of queueing another, and counts its outcome as the run's;
- is skipped, and recorded as skipped, when the data folder's signature equals
  the one taken before this server's last good backup (and the last run did not
  fail: after a failure only a real backup tells the store works again);
- otherwise submits a ``Backup`` to the job manager and waits for it.

A failed run is retried after 30 s, 1 min, 2 min... never later than the next
regular slot; a store that cannot be reached is named in the status. The failure
hooks (``FailureHooks``: the user's command and webhook) run once per run of
failures, and the webhook once more on recovery. Everything is recorded in the
status file (``cloudkeep.status``) that ``cloudkeep status`` reads.

The timing is pure functions of the schedule and a ``Clock`` (wall time, local
calendar, waiting), so tests drive it with a fake clock and no server.
"""

from __future__ import annotations

import json
import logging
import os
import random
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from datetime import time as time_of_day
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from cloudkeep import __version__
from cloudkeep.config import OnFailure, Retention, Schedule
from cloudkeep.errors import CloudkeepError, StoreUnreachable
from cloudkeep.operations import (
    Backup,
    Forget,
    ForgetResult,
    Operation,
    OperationResult,
    Resource,
)
from cloudkeep.status import (
    HEARTBEAT_SECONDS,
    Outcome,
    ScheduleStatus,
    load_status,
    one_line,
    save_status,
    scheduled_data,
    status_path,
)

if TYPE_CHECKING:
    from cloudkeep.api.jobs import Job
    from cloudkeep.api.service import BackupService
    from cloudkeep.settings import Settings

__all__ = [
    "BACKOFF_BASE",
    "TICK",
    "Clock",
    "FailureHooks",
    "Scheduler",
    "backoff_delay",
    "next_time_of_day",
    "regular_due",
    "retry_due",
    "scheduler_for",
]

log = logging.getLogger("cloudkeep.api")

#: The longest single wait: a suspend is noticed at most this long after resuming.
TICK = 30.0
#: The first retry after a failure waits this long; each next one twice as long.
BACKOFF_BASE = 30.0
#: A failure hook's command gets this long, then it is killed.
HOOK_TIMEOUT = 60.0
#: A webhook's server gets this long to answer.
WEBHOOK_TIMEOUT = 10.0
_JOB_POLL = 0.5


class Clock:
    """Wall-clock time, the local calendar, waiting and chance; tests pass a fake one."""

    def time(self) -> float:
        """Seconds since the epoch (the wall clock: it moves on while suspended)."""
        return time.time()

    def local(self, epoch: float) -> datetime:
        """``epoch`` as a naive local date and time."""
        return datetime.fromtimestamp(epoch)

    def epoch(self, local: datetime) -> float:
        """The naive local ``local`` as seconds since the epoch (DST as the OS resolves it)."""
        return local.timestamp()

    def wait(self, event: threading.Event, seconds: float) -> bool:
        """Wait up to ``seconds`` or until ``event`` is set; whether it is set."""
        return event.wait(seconds)

    def random(self) -> float:
        """A uniform number in [0, 1): the share of the jitter a run is delayed by."""
        return random.random()


# ------------------------------------------------------------------------ timing
def next_time_of_day(at: tuple[time_of_day, ...], after: float, clock: Clock) -> float:
    """The first of the local times of day ``at`` strictly after ``after``."""
    day = clock.local(after).date()
    for offset in range(3):  # today, tomorrow; one more day for a DST gap at the end
        for moment in at:
            candidate = clock.epoch(datetime.combine(day + timedelta(days=offset), moment))
            if candidate > after:
                return candidate
    raise AssertionError("a time of day recurs within two days")


def regular_due(
    schedule: Schedule, last_slot: float | None, last_run: float | None, clock: Clock
) -> float:
    """When the next regular run is due (before jitter): at once when nothing ran yet;
    else the slot after ``last_slot``, or, when that passed before the last run ended
    (``last_run``: a run caught up after a suspend), the slot after the run."""
    if last_slot is None or last_run is None:
        return float("-inf")
    if schedule.every is not None:
        every = schedule.every.total_seconds()
        following = last_slot + every
        return following if following > last_run else last_run + every
    return next_time_of_day(schedule.at, max(last_slot, last_run), clock)


def backoff_delay(failures: int, base: float = BACKOFF_BASE) -> float:
    """Seconds before retry number ``failures`` (1, 2, ...): ``base``, twice, four times..."""
    return base * 2.0 ** min(max(failures - 1, 0), 40)


def retry_due(
    schedule: Schedule, failures: int, failed_at: float, clock: Clock, base: float = BACKOFF_BASE
) -> float:
    """When to retry after ``failures`` failures in a row, the last at ``failed_at``:
    growing delays, never later than the next regular slot."""
    regular = regular_due(schedule, failed_at, failed_at, clock)
    return min(failed_at + backoff_delay(failures, base), regular)


def _utc(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


def _epoch(moment: datetime | None) -> float | None:
    return None if moment is None else moment.timestamp()


# ------------------------------------------------------------------------- hooks
@dataclass(frozen=True)
class FailureHooks:
    """The user's ``on_failure`` command and webhook.

    Each runs in a thread of its own, bounded in time; its own failure is logged and
    never reaches the scheduler. The command runs without a shell, with the failure
    in ``CLOUDKEEP_*`` variables and without the repository passphrase or the store
    credentials the configuration file supplied. Nothing secret is in the webhook's
    body, and the webhook URL (which often is a secret) is never logged whole.
    """

    on_failure: OnFailure
    store: str
    data: str
    device_name: str
    hidden_variables: frozenset[str] = frozenset()
    command_timeout: float = HOOK_TIMEOUT

    def failed(
        self, reason: str, when: datetime, failures: int, status: ScheduleStatus
    ) -> list[threading.Thread]:
        """Run the command and POST the webhook for the first failure of an episode."""
        variables = {
            "CLOUDKEEP_EVENT": "backup_failed",
            "CLOUDKEEP_FAILURE_REASON": reason,
            "CLOUDKEEP_BACKUP_TIME": when.isoformat(),
            "CLOUDKEEP_CONSECUTIVE_FAILURES": str(failures),
            "CLOUDKEEP_STORE": self.store,
            "CLOUDKEEP_DATA": self.data,
            "CLOUDKEEP_DEVICE_NAME": self.device_name,
            "CLOUDKEEP_LAST_BACKUP_ID": status.last_good_id or "",
            "CLOUDKEEP_LAST_BACKUP_TIME": (
                status.last_good_time.isoformat() if status.last_good_time else ""
            ),
        }
        body = {
            "event": "backup_failed",
            "text": f"cloudkeep: the scheduled backup of {self.data} on {self.device_name} "
            f"failed: {reason}",
            "reason": reason,
            "time": when.isoformat(),
            "consecutive_failures": failures,
            **self._common(status),
        }
        threads = []
        if self.on_failure.command:
            threads.append(self._spawn(self._run_command, variables))
        if self.on_failure.webhook:
            threads.append(self._spawn(self._post, body))
        return threads

    def recovered(
        self, backup_id: str, when: datetime, status: ScheduleStatus
    ) -> list[threading.Thread]:
        """POST the webhook once when backups work again after failures (the command is
        for failures only: it may well say "backup failed")."""
        if not self.on_failure.webhook:
            return []
        body = {
            "event": "backup_recovered",
            "text": f"cloudkeep: scheduled backups of {self.data} on {self.device_name} "
            f"work again (backup {backup_id})",
            "backup_id": backup_id,
            "time": when.isoformat(),
            **self._common(status),
        }
        return [self._spawn(self._post, body)]

    def _common(self, status: ScheduleStatus) -> dict[str, Any]:
        return {
            "device_name": self.device_name,
            "data": self.data,
            "store": self.store,
            "last_backup": (
                {"id": status.last_good_id, "time": status.last_good_time.isoformat()}
                if status.last_good_id and status.last_good_time
                else None
            ),
            "cloudkeep_version": __version__,
        }

    @staticmethod
    def _spawn(
        target: Callable[[dict[str, Any]], None], argument: dict[str, Any]
    ) -> threading.Thread:
        thread = threading.Thread(
            target=target, args=(argument,), name="cloudkeep-hook", daemon=True
        )
        thread.start()
        return thread

    def _run_command(self, variables: dict[str, str]) -> None:
        env = {
            name: value
            for name, value in os.environ.items()
            if name not in self.hidden_variables and name != "CLOUDKEEP_PASSPHRASE"
        }
        env.update(variables)
        program = self.on_failure.command[0]
        try:
            done = subprocess.run(
                list(self.on_failure.command),
                env=env,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=self.command_timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            log.warning(
                "the on_failure command %s ran longer than %gs and was stopped",
                program,
                self.command_timeout,
            )
            return
        except OSError as exc:
            log.warning("cannot run the on_failure command %s: %s", program, exc.strerror or exc)
            return
        if done.returncode != 0:
            said = one_line(done.stderr.decode("utf-8", "replace"), 200)
            log.warning(
                "the on_failure command %s exited with %d%s",
                program,
                done.returncode,
                f": {said}" if said else "",
            )

    def _post(self, body: dict[str, Any]) -> None:
        url = self.on_failure.webhook
        assert url is not None
        parts = urlsplit(url)
        shown = f"{parts.scheme}://{parts.hostname}"  # the path or query may be a token
        request = urllib.request.Request(
            url,
            data=json.dumps(body).encode("utf-8"),
            headers={
                "Content-Type": "application/json",
                "User-Agent": f"cloudkeep/{__version__}",
            },
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=WEBHOOK_TIMEOUT) as response:
                response.read(65536)
        except OSError as exc:  # URLError, HTTPError, timeouts, refused connections
            reason = getattr(exc, "reason", None) or getattr(exc, "code", None) or exc
            log.warning(
                "the on_failure webhook at %s failed: %s", shown, one_line(str(reason), 200)
            )


# --------------------------------------------------------------------- scheduler
class Scheduler:
    """Runs scheduled backups through the job manager; ``start``/``stop`` with the server.

    ``submit`` queues an operation (``JobManager.submit``) and ``active`` lists the
    unfinished jobs (``JobManager.active``); ``signature`` is the data folder's
    signature (``Workspace.data_signature``). ``step`` does one iteration of the
    thread's loop and says how long to wait before the next: tests call it directly.
    """

    def __init__(
        self,
        schedule: Schedule | None,
        *,
        submit: Callable[[Operation[OperationResult]], Job],
        active: Callable[[], list[Job]],
        signature: Callable[[], str | None],
        status_file: Path,
        data: str,
        store: str,
        device_name: str,
        retention: Retention | None = None,
        hooks: FailureHooks | None = None,
        clock: Clock | None = None,
        backoff_base: float = BACKOFF_BASE,
        store_shown: str | None = None,
    ) -> None:
        self._schedule = schedule
        #: The store as messages show it (``Storage.describe()``).
        self.store_shown = store_shown or store
        self.retention = retention or Retention()
        self._submit = submit
        self._active = active
        self._signature = signature
        self._path = status_file
        self._hooks = hooks
        self._clock = clock or Clock()
        self._backoff_base = backoff_base
        self._lock = threading.RLock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._planned: float | None = None  # when the next run starts (jitter included)
        self._slot = 0.0  # the schedule's slot that run serves
        self._last_heartbeat = float("-inf")
        self.running = False
        #: The pid of another server that runs this schedule while this one waits.
        self.standing_by: int | None = None
        #: The hooks' threads of the last notification (tests join them).
        self.hook_threads: list[threading.Thread] = []
        recorded = load_status(status_file)
        self.status = (
            recorded if (recorded.data, recorded.store) == (data, store) else ScheduleStatus()
        )
        self.status.data = data
        self.status.store = store
        self.status.device_name = device_name
        self.status.schedule = str(schedule) if schedule else None

    # -- lifecycle ---------------------------------------------------------------
    def start(self) -> None:
        """Start the thread (the first run is planned at once)."""
        with self._lock:
            self._claim(self._clock.time())
        self._thread = threading.Thread(target=self._loop, name="cloudkeep-scheduler", daemon=True)
        self._thread.start()

    def halt(self) -> None:
        """Stop planning and waiting at once (from any thread, a signal handler's too)."""
        self._stopping.set()
        self._wake.set()

    def stop(self, timeout: float = 10.0) -> None:
        """Halt, wait for the thread, and record that no server runs the schedule."""
        self.halt()
        if self._thread is not None:
            self._thread.join(timeout)
        with self._lock:
            if self.standing_by is None:  # the schedule's record is this server's to close
                self.status.server_pid = None
                self.status.next_run = None
                self._save()

    # -- settings ----------------------------------------------------------------
    @property
    def schedule(self) -> Schedule | None:
        return self._schedule

    def set_schedule(self, schedule: Schedule | None) -> None:
        """Use ``schedule`` from now on (None: no scheduled backups); replanned at once."""
        with self._lock:
            self._schedule = schedule
            self.status.schedule = str(schedule) if schedule else None
            self._planned = None
            self.status.next_run = None
            if schedule is not None:
                self._slot, self._planned = self._plan(schedule, self._clock.time())
                self.status.next_run = _utc(self._planned)
            self._save()
        self._wake.set()

    def set_retention(self, retention: Retention) -> None:
        with self._lock:
            self.retention = retention

    def snapshot(self) -> ScheduleStatus:
        """A copy of the current status (for the API): the other server's record while
        this one stands by."""
        with self._lock:
            if self.standing_by is not None:
                return load_status(self._path)
            return replace(self.status)

    def _claim(self, now: float) -> bool:
        """Whether this server runs the schedule. Another live server already running
        it for the same data folder and store (its pid and heartbeat in the status
        file) keeps it, and this one stands by until that one stops."""
        recorded = load_status(self._path)
        other = recorded.server_pid
        if other not in (None, os.getpid()) and recorded.server_running(_utc(now)):
            if self.standing_by != other:
                log.warning(
                    "another server (pid %d) runs the scheduled backups of %s to %s; "
                    "this one stands by until it stops",
                    other,
                    self.status.data,
                    self.store_shown,
                )
            self.standing_by = other
            return False
        if self.standing_by is not None:  # it stopped: carry on from its record
            log.info("the server with pid %d stopped; this one runs the schedule", self.standing_by)
            if (recorded.data, recorded.store) == (self.status.data, self.status.store):
                recorded.device_name = self.status.device_name
                recorded.schedule = self.status.schedule
                self.status = recorded
            self.standing_by = None
            self._planned = None
        if other != os.getpid():
            self.status.server_pid = os.getpid()
            self._heartbeat(now, force=True)
        return True

    # -- the loop ----------------------------------------------------------------
    def _loop(self) -> None:
        while not self._stopping.is_set():
            try:
                delay = self.step()
            except Exception:  # the scheduler must outlive any one bad run
                log.exception("scheduled backup: unexpected error; retrying in %gs", TICK)
                delay = TICK
            if delay > 0:
                self._clock.wait(self._wake, delay)
            if not self._stopping.is_set():
                self._wake.clear()

    def step(self) -> float:
        """Plan, or run when due; the seconds to wait before the next step."""
        now = self._clock.time()
        with self._lock:
            if self._stopping.is_set() or not self._claim(now):
                return TICK
            self._heartbeat(now)
            if self._schedule is None:
                return TICK
            if self._planned is None:
                self._slot, self._planned = self._plan(self._schedule, now)
                self.status.next_run = _utc(self._planned)
                self._save()
            if now < self._planned:
                return min(self._planned - now, TICK)
            slot = self._slot
            self._planned = None
            self.running = True
        try:
            self._run(slot)
        finally:
            with self._lock:
                self.running = False
        return 0.0

    def _plan(self, schedule: Schedule, now: float) -> tuple[float, float]:
        """The next run's slot and its time: a retry after failures, else the regular
        slot, run after a random share of the jitter; an overdue run (nothing ran yet,
        the server was off, the machine asleep) is now, once. The next regular slot
        follows the slot, not the jittered time, so jitter never drifts the cadence."""
        status = self.status
        last_run = _epoch(status.last_run_time)
        last_slot = _epoch(status.last_slot)
        if last_run is not None and last_run > now:  # the wall clock was set back
            last_run = last_slot = now
        if status.consecutive_failures and last_run is not None:
            due = retry_due(
                schedule, status.consecutive_failures, last_run, self._clock, self._backoff_base
            )
            return max(due, now), max(due, now)
        due = regular_due(schedule, last_slot, last_run, self._clock)
        if due <= now:  # overdue (first run, server was off, machine asleep): now
            return now, now
        return due, due + self._clock.random() * schedule.jitter.total_seconds()

    def _heartbeat(self, now: float, force: bool = False) -> None:
        if force or now - self._last_heartbeat >= HEARTBEAT_SECONDS:
            self._last_heartbeat = now
            self.status.heartbeat = _utc(now)
            self._save()

    def _save(self) -> None:
        try:
            save_status(self._path, self.status)
        except OSError as exc:
            log.warning("cannot write the status file %s: %s", self._path, exc.strerror or exc)

    # -- one run -----------------------------------------------------------------
    def _run(self, slot: float) -> None:
        busy = [job for job in self._active() if Resource.DATA in job.operation.uses]
        if busy:
            self._join(busy, slot)
            return
        try:
            signature = self._signature()
        except (CloudkeepError, OSError):
            signature = None
        status = self.status
        if (
            signature is not None
            and signature == status.last_good_signature
            and status.last_good_id is not None
            and status.consecutive_failures == 0
        ):
            self._record(
                slot, Outcome.SKIPPED, f"nothing changed since backup {status.last_good_id}"
            )
            return
        try:
            job = self._submit(Backup())
        except CloudkeepError as exc:  # the queue is full
            self._failed(slot, str(exc), store=False)
            return
        if self._wait_for(job):
            self._ended(job, slot, signature)

    def _join(self, busy: list[Job], slot: float) -> None:
        """Another job uses the data: wait for it and count it as this run."""
        for job in busy:
            if not self._wait_for(job):
                return
        backups = [job for job in busy if isinstance(job.operation, Backup)]
        if backups:
            self._ended(backups[-1], slot, None)  # its signature is unknown: never skips
        else:
            self._record(slot, Outcome.SKIPPED, "a restore of the data ran at the time")

    def _wait_for(self, job: Job) -> bool:
        """Wait until ``job`` ended; False when the server stops first."""
        while not job.finished.wait(_JOB_POLL):
            if self._stopping.is_set():
                return False
            with self._lock:
                self._heartbeat(self._clock.time())
        return not self._stopping.is_set()

    def _ended(self, job: Job, slot: float, signature: str | None) -> None:
        from cloudkeep.api.jobs import Status

        if job.status is Status.COMPLETED:
            self._after_backup(job, slot, signature)
        elif job.status is Status.CANCELED:
            self._record(slot, Outcome.CANCELED, job.reason or "canceled")
        else:
            store = isinstance(job.error, StoreUnreachable)
            self._failed(slot, job.reason or "the backup failed", store=store)

    def _after_backup(self, job: Job, slot: float, signature: str | None) -> None:
        """After a scheduled backup succeeded: record it (ending a run of failures,
        which the webhook hears about), then apply the retention policy."""
        now = self._clock.time()
        with self._lock:
            status = self.status
            status.last_good_id = job.backup.id
            status.last_good_time = _utc(now)
            if job.result is not None and job.result.info is not None:
                status.last_good_time = job.result.info.created.astimezone(UTC)
            status.last_good_signature = signature
            recovered = status.consecutive_failures > 0
            status.consecutive_failures = 0
            status.failure_notified = False
            status.store_unreachable_since = None
            self._record(slot, Outcome.BACKED_UP, f"backup {job.backup.id}")
            log.info("scheduled backup %s done", job.backup.id)
            if recovered and self._hooks is not None:
                self.hook_threads = self._hooks.recovered(job.backup.id, _utc(now), replace(status))
        self._forget(f"backup {job.backup.id}")

    def _forget(self, done: str) -> None:
        """Apply the configured retention policy to this device's backups, pruning once
        if it removed any (restic's ``forget --prune`` after each backup).

        A failure is logged and shown in the last run's detail; the backup stays good.
        """
        from cloudkeep.api.jobs import Status
        from cloudkeep.backups.retention import effective

        policy = self.retention
        if not effective(policy):
            return
        try:
            job = self._submit(Forget(policy, prune=True, device=self.status.device_name))
        except CloudkeepError as exc:  # the queue is full: the next run applies it
            outcome = f"forget postponed: {exc}"
        else:
            if not self._wait_for(job):
                return
            result = job.result
            if job.status is Status.COMPLETED and isinstance(result, ForgetResult):
                outcome = _forgotten(result)
            else:
                outcome = f"forget failed: {job.reason or job.status.value}"
                log.warning("the retention policy (%s) failed: %s", policy, job.reason)
        with self._lock:
            self.status.last_run_detail = one_line(f"{done}; {outcome}")
            self._save()

    def _failed(self, slot: float, reason: str, *, store: bool) -> None:
        now = self._clock.time()
        reason = one_line(reason)
        with self._lock:
            status = self.status
            status.consecutive_failures += 1
            status.last_failure_time = _utc(now)
            status.last_failure_reason = reason
            if store and status.store_unreachable_since is None:
                status.store_unreachable_since = _utc(now)
            first = not status.failure_notified
            status.failure_notified = True
            self._record(slot, Outcome.FAILED, reason)
            retry = self._plan(self._schedule, now)[1] if self._schedule else None
            log.warning(
                "scheduled backup failed (%d in a row): %s%s",
                status.consecutive_failures,
                reason,
                f"; retrying at {_utc(retry).isoformat()}" if retry is not None else "",
            )
            if first and self._hooks is not None:
                failures = status.consecutive_failures
                self.hook_threads = self._hooks.failed(reason, _utc(now), failures, replace(status))

    def _record(self, slot: float, outcome: Outcome, detail: str) -> None:
        now = self._clock.time()
        with self._lock:
            self.status.last_run_time = _utc(now)
            self.status.last_run_outcome = outcome
            self.status.last_run_detail = detail
            self.status.last_slot = _utc(slot)
            self.status.next_run = None
            self._save()


def _forgotten(result: ForgetResult) -> str:
    """What a forget after a backup did, in a few words."""
    if not result.deleted:
        return "the retention policy removed nothing"
    removed = f"the retention policy removed {len(result.deleted)} backups"
    if result.pruned is not None:
        return f"{removed}, freed {result.pruned.bytes_freed:,} bytes"
    if result.prune_postponed:
        return f"{removed}; other clients held the repository: a later prune frees the space"
    return removed


def scheduler_for(
    service: BackupService, settings: Settings, schedule: Schedule | None
) -> Scheduler:
    """The scheduler of a server: its jobs, its data folder's signature, its status file."""
    store = _shown_store(service)
    # Without a data folder yet, where Pieces OS will make it (looked for on each run).
    data = scheduled_data(settings.data, settings.data_candidates)
    config = settings.config
    # The store credentials of the configuration file are not the failure command's
    # business (a variable holding the same value is taken to be the file's).
    hidden = frozenset(
        name for name, value in config.credentials.items() if os.environ.get(name) == value
    )
    hooks = (
        FailureHooks(config.on_failure, store, data, settings.device_name, hidden)
        if config.on_failure.command or config.on_failure.webhook
        else None
    )
    return Scheduler(
        schedule,
        submit=service.jobs.submit,
        active=service.jobs.active,
        signature=lambda: service.workspace().data_signature(),
        status_file=status_path(settings.cache_dir, data, settings.store),
        data=data,
        store=settings.store,
        device_name=settings.device_name,
        retention=config.retention,
        hooks=hooks,
        store_shown=store,
    )


def _shown_store(service: BackupService) -> str:
    """The store as messages show it (no secret): the URL without userinfo or secret
    query values when it cannot be opened yet (a password in it is why, and the
    webhook's body and the command's environment carry this text off the machine)."""
    try:
        return service.workspace().storage.describe()
    except CloudkeepError:
        from cloudkeep.storage.url import describe_store_url

        return describe_store_url(service.settings.store)
