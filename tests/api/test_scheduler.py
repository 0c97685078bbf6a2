"""The scheduler's timing and decisions, driven by a fake clock and the real job manager.

The job manager runs an engine stand-in (``Engine``) that a test tells how a backup
ends: done, store unreachable, or held until released. Everything else is real:
the status file, the failure hooks' command (a Python process writing a file) and
webhook (a local HTTP server), the data folder signature.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
from contextlib import closing
from datetime import UTC, datetime, timedelta, timezone
from datetime import time as time_of_day
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from cloudkeep.api.jobs import JobManager, Status
from cloudkeep.api.scheduler import (
    TICK,
    Clock,
    FailureHooks,
    Scheduler,
    backoff_delay,
    next_time_of_day,
    regular_due,
    retry_due,
)
from cloudkeep.backups.sources import SIGNATURE_RACY_NS, data_signature
from cloudkeep.config import OnFailure, Schedule
from cloudkeep.errors import DataSourceError
from cloudkeep.operations import (
    Backup,
    BackupResult,
    Operation,
    OperationResult,
    ProgressFn,
    Restore,
)
from cloudkeep.status import Outcome, load_status, status_path
from cloudkeep.storage.base import StorageUnavailable
from cloudkeep.wire import PlatformEnum
from cloudkeep.workspace import BackupInfo

WAIT = 60.0  # seconds; only ever reached when something is broken
HOUR = 3600.0
# 2026-03-02 12:00 UTC: a Monday, far from any DST change (fixed offsets anyway).
START = datetime(2026, 3, 2, 12, 0, tzinfo=UTC).timestamp()


class FakeClock(Clock):
    """Time stands still until a test moves it; the local zone is a fixed offset."""

    def __init__(self, now: float = START, offset_hours: float = 0, roll: float = 0.5) -> None:
        self.now = now
        self.zone = timezone(timedelta(hours=offset_hours))
        self.roll = roll

    def time(self) -> float:
        return self.now

    def local(self, epoch: float) -> datetime:
        return datetime.fromtimestamp(epoch, self.zone).replace(tzinfo=None)

    def epoch(self, local: datetime) -> float:
        return local.replace(tzinfo=self.zone).timestamp()

    def wait(self, event: threading.Event, seconds: float) -> bool:
        self.now += seconds
        return event.is_set()

    def random(self) -> float:
        return self.roll


class Engine:
    """Stands in for the engine process: each backup ends as ``outcome`` says."""

    def __init__(self) -> None:
        self.outcome = "done"  # "done", "unreachable" or "hold"
        self.release = threading.Event()
        self.started = threading.Event()
        self.operations: list[Operation[OperationResult]] = []
        self._count = 0

    def __call__(
        self,
        operation: Operation[OperationResult],
        progress: ProgressFn | None,
        cancel: threading.Event,
        job_id: str,
    ) -> OperationResult:
        self.operations.append(operation)
        self.started.set()
        if self.outcome == "hold":
            assert self.release.wait(WAIT)
        if self.outcome == "unreachable":
            raise StorageUnavailable("store unreachable after 3 attempts over 3 s: refused")
        if isinstance(operation, Restore):
            return OperationResult()
        self._count += 1
        stamp = int(START * 1e6) + self._count
        info = BackupInfo(
            id=f"0.1.0_{stamp}",
            version="0.1.0",
            timestamp=str(stamp),
            bytes=10,
            created=datetime.fromtimestamp(stamp / 1e6, UTC),
            device_name="laptop",
            platform="LINUX",
        )
        return BackupResult(info=info)

    @property
    def backups(self) -> int:
        return sum(isinstance(op, Backup) for op in self.operations)


@pytest.fixture
def engine() -> Engine:
    return Engine()


@pytest.fixture
def jobs(engine: Engine) -> JobManager:
    manager = JobManager(engine, device_name=lambda: "laptop", platform=PlatformEnum.LINUX)
    manager.start()
    yield manager
    engine.release.set()
    manager.stop()


def make_scheduler(
    tmp_path: Path,
    jobs: JobManager,
    schedule: Schedule | None,
    clock: FakeClock,
    *,
    signature: list[str | None] | None = None,
    hooks: FailureHooks | None = None,
) -> Scheduler:
    current = signature if signature is not None else [None]
    return Scheduler(
        schedule,
        submit=jobs.submit,
        active=jobs.active,
        signature=lambda: current[0],
        status_file=status_path(tmp_path / "cache", tmp_path / "data", "s3://bucket/x"),
        data=str(tmp_path / "data"),
        store="s3://bucket/x",
        device_name="laptop",
        hooks=hooks,
        clock=clock,
    )


def every(text: str, jitter: str = "0s") -> Schedule:
    schedule = Schedule.parse(f"every {text}", jitter)
    assert schedule is not None
    return schedule


def run_until_idle(scheduler: Scheduler, clock: FakeClock) -> int:
    """Steps until the scheduler waits; the runs it made."""
    runs = 0
    while (delay := scheduler.step()) == 0:
        runs += 1
    assert 0 < delay <= TICK
    return runs


# ----------------------------------------------------------------- pure timing
def test_times_of_day_are_local_and_cross_midnight() -> None:
    clock = FakeClock(offset_hours=5)
    at = (time_of_day(0, 15), time_of_day(23, 30))
    late = clock.epoch(datetime(2026, 3, 2, 23, 45))
    assert clock.local(next_time_of_day(at, late, clock)) == datetime(2026, 3, 3, 0, 15)
    early = clock.epoch(datetime(2026, 3, 3, 0, 15))  # strictly after: the next one
    assert clock.local(next_time_of_day(at, early, clock)) == datetime(2026, 3, 3, 23, 30)
    # 23:30 local at +05:00 is 18:30 UTC.
    noon = clock.epoch(datetime(2026, 3, 2, 12, 0))
    assert datetime.fromtimestamp(next_time_of_day(at, noon, clock), UTC).hour == 18


def test_regular_due_follows_the_slot_or_the_late_run() -> None:
    clock = FakeClock()
    hourly = every("1h")
    assert regular_due(hourly, None, None, clock) == float("-inf")  # nothing ran: now
    assert regular_due(hourly, START, START + 60, clock) == START + HOUR
    # Ran ten hours late (suspended): the next slot follows the run, not the old slots.
    assert regular_due(hourly, START, START + 10 * HOUR, clock) == START + 11 * HOUR
    daily_at = Schedule.parse("at 02:00")
    assert daily_at is not None
    late_run = START + 20 * HOUR  # 08:00 next day
    due = regular_due(daily_at, START, late_run, clock)
    assert clock.local(due) == datetime(2026, 3, 4, 2, 0)


def test_backoff_grows_and_is_bounded_by_the_interval() -> None:
    clock = FakeClock()
    assert [backoff_delay(n, 30) for n in (1, 2, 3, 4)] == [30, 60, 120, 240]
    hourly = every("1h")
    delays = [retry_due(hourly, n, START, clock, 30) - START for n in range(1, 12)]
    assert delays[:4] == [30, 60, 120, 240]
    assert delays == sorted(delays) and max(delays) == HOUR
    at_two = Schedule.parse("at 02:00")
    assert at_two is not None
    # Times of day: never later than the next slot (02:00 tomorrow, 14 h after noon).
    assert retry_due(at_two, 30, START, clock, 30) - START == 14 * HOUR


# ------------------------------------------------------------------ the loop
def test_first_run_is_at_once_then_every_interval_with_jitter_in_bounds(
    tmp_path: Path, jobs: JobManager, engine: Engine
) -> None:
    clock = FakeClock(roll=0.0)
    schedule = every("1h", "10m")
    scheduler = make_scheduler(tmp_path, jobs, schedule, clock)
    assert run_until_idle(scheduler, clock) == 1  # nothing ran before: at once
    assert engine.backups == 1
    slot = scheduler.status.last_slot
    assert slot is not None
    for roll in (0.0, 0.999):
        clock.roll = roll
        scheduler.set_schedule(schedule)  # replan with this roll
        scheduler.step()
        planned = scheduler.status.next_run
        assert planned is not None
        offset = (planned - slot).total_seconds() - HOUR
        assert 0 <= offset < 600, offset
        assert offset == pytest.approx(roll * 600)
    # Waits come in steps of at most TICK, and the run happens once the time is reached.
    waited = 0.0
    while engine.backups == 1:
        delay = scheduler.step()
        clock.now += delay
        waited += delay
    assert HOUR <= waited <= HOUR + 600 + TICK
    # The next slot follows the slot, not the jittered start: no drift.
    assert scheduler.status.last_slot == slot + timedelta(hours=1)


def test_a_suspend_past_many_slots_catches_up_once(
    tmp_path: Path, jobs: JobManager, engine: Engine
) -> None:
    clock = FakeClock()
    scheduler = make_scheduler(tmp_path, jobs, every("1h", "0s"), clock)
    run_until_idle(scheduler, clock)
    clock.now += 10 * HOUR + 17  # suspended: no wake-up for ten hours
    assert run_until_idle(scheduler, clock) == 1
    assert engine.backups == 2
    woke = clock.now
    next_run = scheduler.status.next_run
    assert next_run is not None and next_run.timestamp() == pytest.approx(woke + HOUR)


def test_a_restarted_server_keeps_the_cadence(
    tmp_path: Path, jobs: JobManager, engine: Engine
) -> None:
    clock = FakeClock()
    first = make_scheduler(tmp_path, jobs, every("1h", "0s"), clock)
    run_until_idle(first, clock)
    clock.now += 600
    again = make_scheduler(tmp_path, jobs, every("1h", "0s"), clock)
    assert run_until_idle(again, clock) == 0  # the last run was 10 min ago
    assert again.status.next_run is not None
    assert again.status.next_run.timestamp() == pytest.approx(START + HOUR)


def test_unchanged_data_is_skipped_and_recorded_as_skipped(
    tmp_path: Path, jobs: JobManager, engine: Engine
) -> None:
    clock = FakeClock()
    signature: list[str | None] = ["v1"]
    scheduler = make_scheduler(tmp_path, jobs, every("1h", "0s"), clock, signature=signature)
    run_until_idle(scheduler, clock)
    clock.now += HOUR
    run_until_idle(scheduler, clock)
    recorded = load_status(scheduler._path)
    assert engine.backups == 1
    assert recorded.last_run_outcome is Outcome.SKIPPED
    assert recorded.last_good_id is not None and recorded.consecutive_failures == 0
    signature[0] = "v2"
    clock.now += HOUR
    run_until_idle(scheduler, clock)
    assert engine.backups == 2
    signature[0] = None  # cannot vouch (changed moments ago): backs up
    clock.now += HOUR
    run_until_idle(scheduler, clock)
    assert engine.backups == 3


def test_store_outage_backs_off_notifies_once_and_recovers(
    tmp_path: Path, jobs: JobManager, engine: Engine
) -> None:
    clock = FakeClock()
    marker = tmp_path / "hook-ran"
    command = (
        sys.executable,
        "-c",
        "import os, sys; open(sys.argv[1], 'a').write(os.environ['CLOUDKEEP_FAILURE_REASON'] "
        "+ '|' + os.environ['CLOUDKEEP_STORE'] + '|' + os.environ['CLOUDKEEP_BACKUP_TIME'] "
        "+ '|' + os.environ.get('CLOUDKEEP_PASSPHRASE', 'no-passphrase') + '\\n')",
        str(marker),
    )
    hooks = FailureHooks(OnFailure(command=command), "s3://bucket/x", "/data", "laptop")
    os.environ["CLOUDKEEP_PASSPHRASE"] = "secret"
    try:
        signature: list[str | None] = ["same"]
        scheduler = make_scheduler(
            tmp_path, jobs, every("1h", "0s"), clock, signature=signature, hooks=hooks
        )
        engine.outcome = "unreachable"
        delays = []
        for _ in range(9):
            run_until_idle(scheduler, clock)
            for thread in scheduler.hook_threads:
                thread.join(WAIT)
            planned = scheduler.status.next_run
            assert planned is not None
            delays.append(planned.timestamp() - clock.now)
            clock.now = planned.timestamp()
    finally:
        del os.environ["CLOUDKEEP_PASSPHRASE"]
    status = load_status(scheduler._path)
    assert status.consecutive_failures == 9
    assert status.store_unreachable_since == datetime.fromtimestamp(START, UTC)
    assert status.last_failure_reason is not None and "unreachable" in status.last_failure_reason
    assert delays[:4] == [30, 60, 120, 240] and max(delays) == HOUR
    lines = marker.read_text().splitlines()
    assert len(lines) == 1, lines  # once per episode, not per retry
    reason, store, when, passphrase = lines[0].split("|")
    assert "unreachable" in reason and store == "s3://bucket/x" and passphrase == "no-passphrase"
    assert datetime.fromisoformat(when) == datetime.fromtimestamp(START, UTC)
    # Recovery: a real backup (not a skip, though the signature is unchanged) ends it.
    engine.outcome = "done"
    run_until_idle(scheduler, clock)
    status = load_status(scheduler._path)
    assert status.last_run_outcome is Outcome.BACKED_UP
    assert status.consecutive_failures == 0 and status.store_unreachable_since is None
    assert status.last_failure_time is not None  # the last failure stays on record
    # A new episode (the data changed, the store is down again) notifies again.
    signature[0] = "changed"
    engine.outcome = "unreachable"
    clock.now += HOUR
    run_until_idle(scheduler, clock)
    for thread in scheduler.hook_threads:
        thread.join(WAIT)
    assert len(marker.read_text().splitlines()) == 2


def test_a_job_using_the_data_is_joined_not_overlapped(
    tmp_path: Path, jobs: JobManager, engine: Engine
) -> None:
    clock = FakeClock()
    scheduler = make_scheduler(tmp_path, jobs, every("1h", "0s"), clock)
    engine.outcome = "hold"
    api_job = jobs.submit(Backup())  # a backup the API started
    assert engine.started.wait(WAIT)
    step = threading.Thread(target=scheduler.step)
    step.start()
    while not scheduler.running:
        time.sleep(0.01)
    assert len(jobs.active()) == 1  # the scheduler queued nothing beside it
    engine.release.set()
    step.join(WAIT)
    assert api_job.status is Status.COMPLETED
    assert engine.backups == 1
    status = load_status(scheduler._path)
    assert status.last_run_outcome is Outcome.BACKED_UP
    assert status.last_good_id == api_job.backup.id
    # A restore in progress is waited for and the run skipped (the data is a backup).
    engine.release.clear()
    restore = jobs.submit(Restore("0.1.0_1"))
    clock.now += HOUR
    step = threading.Thread(target=scheduler.step)
    step.start()
    while not scheduler.running:
        time.sleep(0.01)
    engine.release.set()
    step.join(WAIT)
    assert restore.status is Status.COMPLETED and engine.backups == 1
    assert load_status(scheduler._path).last_run_outcome is Outcome.SKIPPED


def test_stop_cancels_the_wait_at_once_and_records_no_server(
    tmp_path: Path, jobs: JobManager
) -> None:
    scheduler = make_scheduler(tmp_path, jobs, every("1d", "0s"), FakeClock())
    scheduler._clock = Clock()  # real waiting
    scheduler.status.last_slot = scheduler.status.last_run_time = datetime.now(UTC)
    scheduler.start()
    while scheduler.status.next_run is None:
        time.sleep(0.01)
    assert load_status(scheduler._path).server_pid == os.getpid()
    scheduler.stop(timeout=WAIT)
    assert scheduler._thread is not None and not scheduler._thread.is_alive()
    recorded = load_status(scheduler._path)
    assert recorded.server_pid is None and recorded.next_run is None


def test_no_schedule_runs_nothing_until_one_is_set(
    tmp_path: Path, jobs: JobManager, engine: Engine
) -> None:
    clock = FakeClock()
    scheduler = make_scheduler(tmp_path, jobs, None, clock)
    assert scheduler.step() == TICK and engine.backups == 0
    scheduler.set_schedule(every("2s", "0s"))
    assert run_until_idle(scheduler, clock) == 1 and engine.backups == 1


# ------------------------------------------------------------------- the hooks
def test_webhook_gets_failure_and_recovery_without_secrets(tmp_path: Path) -> None:
    received: list[dict[str, object]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers["Content-Length"])
            received.append(json.loads(self.rfile.read(length)))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/hook/SECRET-TOKEN"
        hooks = FailureHooks(OnFailure(webhook=url), "s3://bucket/x", "/data", "laptop")
        from cloudkeep.status import ScheduleStatus

        when = datetime.fromtimestamp(START, UTC)
        for thread in hooks.failed("store unreachable", when, 1, ScheduleStatus()):
            thread.join(WAIT)
        for thread in hooks.recovered("0.1.0_1", when, ScheduleStatus()):
            thread.join(WAIT)
    finally:
        server.shutdown()
    assert [body["event"] for body in received] == ["backup_failed", "backup_recovered"]
    assert received[0]["reason"] == "store unreachable" and received[0]["store"] == "s3://bucket/x"
    assert "SECRET-TOKEN" not in json.dumps(received)


def test_a_failing_or_hanging_hook_is_logged_and_bounded(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    when = datetime.fromtimestamp(START, UTC)
    from cloudkeep.status import ScheduleStatus

    cases = {
        "missing": OnFailure(command=(str(tmp_path / "no-such-program"),)),
        "exit 3": OnFailure(command=(sys.executable, "-c", "import sys; sys.exit(3)")),
        "hangs": OnFailure(command=(sys.executable, "-c", "import time; time.sleep(60)")),
        "no server": OnFailure(webhook="http://127.0.0.1:9/"),
    }
    for on_failure in cases.values():
        hooks = FailureHooks(on_failure, "s3://b/x", "/data", "laptop", command_timeout=1.0)
        for thread in hooks.failed("boom", when, 1, ScheduleStatus()):
            thread.join(WAIT)
            assert not thread.is_alive()
    text = caplog.text
    assert "cannot run the on_failure command" in text
    assert "exited with 3" in text
    assert "ran longer than 1s" in text
    assert "the on_failure webhook at http://127.0.0.1 failed" in text


# ------------------------------------------------------------- the signature
def _settle() -> None:
    """Let every entry fall out of the signature's racy window."""
    time.sleep(SIGNATURE_RACY_NS / 1e9 + 0.1)


def test_data_signature_sees_every_change_but_the_shm(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    db = data / "notes.db"
    with closing(sqlite3.connect(db)) as conn, conn:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("CREATE TABLE notes(body TEXT)")
    (data / "sub").mkdir()
    (data / "sub" / "file.txt").write_text("hello")
    assert data_signature(data) is None  # just written: cannot vouch yet
    _settle()
    first = data_signature(data)
    assert first is not None and data_signature(data) == first
    shm = data / "notes.db-shm"
    shm.write_bytes(b"\0" * 32768)  # readers write it; no backup holds it
    (data / ".notes.db.cloudkeep-undo").mkdir()  # our own restore's leftovers
    _settle()
    assert data_signature(data) == first
    (data / "notes.db-wal").write_bytes(b"x" * 100)  # committed pages may live here
    _settle()
    second = data_signature(data)
    assert second not in (None, first)
    os.utime(data / "sub" / "file.txt", ns=(1, 1))  # metadata speaks, not content
    _settle()
    assert data_signature(data) not in (None, second)
    assert data_signature(tmp_path / "missing") is None


def test_an_unreadable_data_folder_fails_the_run_not_the_scheduler(
    tmp_path: Path, jobs: JobManager, engine: Engine
) -> None:
    clock = FakeClock()
    scheduler = make_scheduler(tmp_path, jobs, every("1h", "0s"), clock)

    def broken() -> str | None:
        raise DataSourceError("the data path /nowhere does not exist")

    scheduler._signature = broken
    assert run_until_idle(scheduler, clock) == 1
    assert engine.backups == 1  # the backup itself judges (and reports) the data


def test_a_second_server_stands_by_while_the_first_runs_the_schedule(
    tmp_path: Path, jobs: JobManager, engine: Engine
) -> None:
    from cloudkeep.status import ScheduleStatus, save_status

    clock = FakeClock()
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        path = status_path(tmp_path / "cache", tmp_path / "data", "s3://bucket/x")
        recorded = ScheduleStatus(
            data=str(tmp_path / "data"),
            store="s3://bucket/x",
            server_pid=other.pid,
            heartbeat=datetime.fromtimestamp(START, UTC),
            last_good_id="0.1.0_7",
        )
        save_status(path, recorded)
        scheduler = make_scheduler(tmp_path, jobs, every("1h", "0s"), clock)
        assert scheduler.step() == TICK and engine.backups == 0
        assert scheduler.standing_by == other.pid
        assert load_status(path).server_pid == other.pid  # its record is left alone
        assert scheduler.snapshot().last_good_id == "0.1.0_7"
    finally:
        other.kill()
        other.wait()
    assert run_until_idle(scheduler, clock) == 1 and engine.backups == 1
    assert scheduler.standing_by is None
    assert load_status(path).server_pid == os.getpid()
