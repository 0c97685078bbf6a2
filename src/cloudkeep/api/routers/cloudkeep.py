"""cloudkeep's own endpoints for a dashboard, under ``/cloudkeep/`` (the Pieces OS
paths stay exactly as the SDKs know them): the status of scheduled backups, the
schedule and the retention policy. A PUT validates with the configuration's own
types, saves the configuration file (every other setting kept) and takes effect
at once. The same guard as every route applies (Host, Origin, application key).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Literal

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.concurrency import run_in_threadpool
from starlette.requests import HTTPConnection

from cloudkeep.api.deps import Service
from cloudkeep.api.errors import ApiError
from cloudkeep.api.routers._responses import COMMON, errors
from cloudkeep.api.scheduler import Scheduler
from cloudkeep.config import (
    MAX_KEEP,
    UNLIMITED,
    Retention,
    Schedule,
    format_duration,
    load_config,
    save_config,
)
from cloudkeep.errors import ConfigurationError
from cloudkeep.status import ScheduleStatus
from cloudkeep.wire import Backup

router = APIRouter(prefix="/cloudkeep", tags=["cloudkeep"])

_TIME = r"([01][0-9]|2[0-3]):[0-5][0-9]"
SCHEDULE_PATTERN = rf"^(off|hourly|daily|every [0-9]{{1,7}}[smhd]|at {_TIME}(,{_TIME}){{0,47}})$"
DURATION_PATTERN = r"^[0-9]{1,7}[smhd]$"
RESTIC_DURATION_PATTERN = r"^([0-9]{1,4}y)?([0-9]{1,5}m)?([0-9]{1,6}d)?([0-9]{1,7}h)?$"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ScheduleSettings(_Model):
    """When the server backs up on its own (the configuration file's ``schedule``)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    schedule: str | None = Field(
        description="hourly, daily, every <n>s|m|h|d, at HH:MM[,HH:MM...] (local time), "
        "or off; null is off.",
        pattern=SCHEDULE_PATTERN,
        examples=["every 30m", "at 02:00,14:30", "off"],
    )
    jitter: str | None = Field(
        None,
        description="The most a run is moved by a random delay (e.g. 5m); null: the "
        "schedule's default (a twelfth of the interval, at most 10 min; 5 min for times "
        "of day). At most the interval.",
        pattern=DURATION_PATTERN,
    )


class ScheduleView(_Model):
    """The schedule in effect and when it next runs."""

    schedule: str | None = Field(description="The schedule's text form; null: none.")
    jitter: str | None = Field(description="The most a run is moved by a random delay.")
    next_run: datetime | None = Field(description="When the next scheduled backup runs (UTC).")


_UNLIMITED_TOO = "How many to keep; -1 keeps every one (restic's unlimited, as in the file)."


class RetentionPolicy(_Model):
    """Which backups ``forget`` keeps after each scheduled backup (restic's rules, per
    device and data folder); all zero and no ``keep_within`` keeps everything."""

    keep_last: int = Field(0, ge=UNLIMITED, le=MAX_KEEP, description=_UNLIMITED_TOO)
    keep_hourly: int = Field(0, ge=UNLIMITED, le=MAX_KEEP, description=_UNLIMITED_TOO)
    keep_daily: int = Field(0, ge=UNLIMITED, le=MAX_KEEP, description=_UNLIMITED_TOO)
    keep_weekly: int = Field(0, ge=UNLIMITED, le=MAX_KEEP, description=_UNLIMITED_TOO)
    keep_monthly: int = Field(0, ge=UNLIMITED, le=MAX_KEEP, description=_UNLIMITED_TOO)
    keep_yearly: int = Field(0, ge=UNLIMITED, le=MAX_KEEP, description=_UNLIMITED_TOO)
    keep_within: str | None = Field(
        None,
        description="Keep every backup this recent: restic's duration, e.g. 30d, 1y6m, 12h.",
        pattern=RESTIC_DURATION_PATTERN,
        min_length=2,
    )

    @field_validator(
        "keep_last",
        "keep_hourly",
        "keep_daily",
        "keep_weekly",
        "keep_monthly",
        "keep_yearly",
        mode="before",
    )
    @classmethod
    def _not_a_flag(cls, value: object) -> object:
        if isinstance(value, bool):  # JSON true would otherwise count as 1
            raise ValueError("must be a whole number, not true or false")
        return value

    @classmethod
    def of(cls, retention: Retention) -> RetentionPolicy:
        return cls(
            keep_last=retention.last,
            keep_hourly=retention.hourly,
            keep_daily=retention.daily,
            keep_weekly=retention.weekly,
            keep_monthly=retention.monthly,
            keep_yearly=retention.yearly,
            keep_within=retention.within,
        )

    def retention(self) -> Retention:
        return Retention(
            last=self.keep_last,
            hourly=self.keep_hourly,
            daily=self.keep_daily,
            weekly=self.keep_weekly,
            monthly=self.keep_monthly,
            yearly=self.keep_yearly,
            within=self.keep_within,
        )


class LastBackup(_Model):
    id: str
    time: datetime
    age_seconds: float
    source: Literal["store", "status"] = Field(
        description="store: the server's listing of the store; status: this server's own "
        "record (the listing is not loaded yet)."
    )


class LastRun(_Model):
    time: datetime
    outcome: Literal["backed_up", "skipped", "failed", "canceled"]
    detail: str | None


class LastFailure(_Model):
    time: datetime
    reason: str
    consecutive_failures: int = Field(description="Failed runs in a row; 0 once one succeeds.")


class Status(_Model):
    """Scheduled backups as they stand."""

    data: str
    store: str
    device_name: str
    schedule: str | None
    next_run: datetime | None
    running: bool = Field(description="A scheduled backup is running now.")
    last_backup: LastBackup | None = Field(description="This device's newest backup.")
    last_run: LastRun | None
    last_failure: LastFailure | None
    store_unreachable_since: datetime | None


def get_scheduler(connection: HTTPConnection) -> Scheduler:
    scheduler: Scheduler = connection.app.state.scheduler
    return scheduler


SchedulerDep = Annotated[Scheduler, Depends(get_scheduler)]


def _schedule_view(scheduler: Scheduler) -> ScheduleView:
    schedule = scheduler.schedule
    return ScheduleView(
        schedule=str(schedule) if schedule else None,
        jitter=format_duration(schedule.jitter) if schedule else None,
        next_run=scheduler.snapshot().next_run,
    )


@router.get(
    "/status",
    operation_id="cloudkeep_status",
    summary="Scheduled backups: last good backup, next run, last failure",
    responses=errors(*COMMON),
)
async def status(service: Service, scheduler: SchedulerDep) -> Status:
    recorded = scheduler.snapshot()
    listing = service.cache.peek()
    now = datetime.now(UTC)
    return Status(
        data=recorded.data,
        store=scheduler.store_shown,
        device_name=recorded.device_name,
        schedule=recorded.schedule,
        next_run=recorded.next_run,
        running=scheduler.running,
        last_backup=_last_backup(listing.entries if listing else None, recorded, now),
        last_run=(
            LastRun(
                time=recorded.last_run_time,
                outcome=recorded.last_run_outcome.value,
                detail=recorded.last_run_detail,
            )
            if recorded.last_run_time and recorded.last_run_outcome
            else None
        ),
        last_failure=(
            LastFailure(
                time=recorded.last_failure_time,
                reason=recorded.last_failure_reason or "",
                consecutive_failures=recorded.consecutive_failures,
            )
            if recorded.last_failure_time
            else None
        ),
        store_unreachable_since=recorded.store_unreachable_since,
    )


def _last_backup(
    backups: Sequence[Backup] | None, recorded: ScheduleStatus, now: datetime
) -> LastBackup | None:
    """This device's newest backup in the cached listing; the status file's record
    while no listing is loaded."""
    if backups is not None:
        mine = [b for b in backups if b.device_name == recorded.device_name]
        if not mine:
            return None
        newest = max(mine, key=lambda b: int(b.timestamp))
        created = datetime.fromtimestamp(int(newest.timestamp) / 1e6, UTC)
        return LastBackup(
            id=newest.id,
            time=created,
            age_seconds=round((now - created).total_seconds(), 3),
            source="store",
        )
    if recorded.last_good_id is None or recorded.last_good_time is None:
        return None
    return LastBackup(
        id=recorded.last_good_id,
        time=recorded.last_good_time,
        age_seconds=round((now - recorded.last_good_time).total_seconds(), 3),
        source="status",
    )


@router.get(
    "/schedule",
    operation_id="cloudkeep_get_schedule",
    summary="The schedule of backups in effect",
    responses=errors(*COMMON),
)
async def get_schedule(scheduler: SchedulerDep) -> ScheduleView:
    return _schedule_view(scheduler)


@router.put(
    "/schedule",
    operation_id="cloudkeep_put_schedule",
    summary="Change the schedule of backups (saved; in effect at once)",
    responses=errors(*COMMON, 422, 511),
)
async def put_schedule(
    body: ScheduleSettings, service: Service, scheduler: SchedulerDep
) -> ScheduleView:
    try:
        schedule = Schedule.parse(body.schedule or "off", body.jitter)
    except ConfigurationError as exc:
        raise ApiError(422, f"Invalid schedule: {exc}.") from None
    config_dir = service.settings.config_dir
    await run_in_threadpool(
        _save, config_dir, lambda: scheduler.set_schedule(schedule), schedule=schedule
    )
    return _schedule_view(scheduler)


@router.get(
    "/retention",
    operation_id="cloudkeep_get_retention",
    summary="The retention policy applied after each scheduled backup",
    responses=errors(*COMMON),
)
async def get_retention(scheduler: SchedulerDep) -> RetentionPolicy:
    return RetentionPolicy.of(scheduler.retention)


@router.put(
    "/retention",
    operation_id="cloudkeep_put_retention",
    summary="Change the retention policy (saved; in effect from the next backup)",
    responses=errors(*COMMON, 422, 511),
)
async def put_retention(
    body: RetentionPolicy, service: Service, scheduler: SchedulerDep
) -> RetentionPolicy:
    try:
        retention = body.retention()
    except ConfigurationError as exc:
        raise ApiError(422, f"Invalid retention policy: {exc}.") from None
    await run_in_threadpool(
        _save,
        service.settings.config_dir,
        lambda: scheduler.set_retention(retention),
        retention=retention,
    )
    return RetentionPolicy.of(retention)


#: One change of the configuration at a time: each re-reads the file, so a schedule
#: and a retention change at once lost one of them (and the server used the other).
_CHANGING = threading.Lock()


def _save(config_dir: Path, apply: Callable[[], None], **changes: object) -> None:
    """Re-read the configuration file (it may have changed since the server started),
    change only ``changes``, write it back atomically, then ``apply`` it to the server."""
    with _CHANGING:
        save_config(config_dir, load_config(config_dir).with_changes(**changes))
        apply()
