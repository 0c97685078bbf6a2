"""``cloudkeep status``: how old this device's last good backup is, when the next
scheduled one runs, and the last failure with its reason.

The last backup comes from the store's listing when the store answers (within a
short retry budget), else from the status file the server's scheduler keeps
(``cloudkeep.status``), saying so. Whether a server with a schedule runs is told
by that file's pid and heartbeat.
"""

# No ``from __future__ import annotations``: Typer would compile every option's
# annotation string again each time it builds the commands.
import os
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any

import typer

from cloudkeep.cli.app import JsonOption, app, workspace
from cloudkeep.cli.output import one_line, print_json
from cloudkeep.cli.params import FastCommand

if TYPE_CHECKING:
    from cloudkeep.status import ScheduleStatus

#: Exit code of ``status --max-age`` when the last good backup is older (or missing).
STALE_EXIT_CODE = 4
# A status check should answer within seconds, not the backups' 5-minute budget;
# the environment still overrides.
_STATUS_RETRY_DEADLINE = "15"
_STATUS_RETRIES = "3"


def age_text(seconds: float) -> str:
    """``3d 4h``, ``2h 5m``, ``4m 10s``, ``12s``: the two largest units."""
    whole = max(int(seconds), 0)
    parts: list[str] = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if whole >= size or (unit == "s" and not parts):
            parts.append(f"{whole // size}{unit}")
            whole %= size
        if len(parts) == 2:
            break
    return " ".join(parts)


def _utc_text(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _stamp(moment: datetime | None) -> str | None:
    return None if moment is None else moment.astimezone(UTC).isoformat()


@app.command(cls=FastCommand)
def status(
    ctx: typer.Context,
    json: JsonOption = False,
    offline: Annotated[
        bool,
        typer.Option("--offline", help="Do not ask the store; use this device's status file only."),
    ] = False,
    max_age: Annotated[
        str | None,
        typer.Option(
            help="Exit with code 4 when this device's last good backup is older than "
            "this (e.g. 26h, 2d), or there is none: for monitoring."
        ),
    ] = None,
) -> None:
    """The age of this device's last good backup, the next scheduled one, the last failure."""
    from cloudkeep.config import parse_duration
    from cloudkeep.status import load_status, scheduled_data, status_path

    settings = ctx.obj
    limit = parse_duration(max_age, "--max-age") if max_age else None
    # The server's name for it: no data folder yet is no error (nor a crash) here.
    data = scheduled_data(settings.data, settings.data_candidates)
    recorded = load_status(status_path(settings.cache_dir, data, settings.store))
    now = datetime.now(UTC)
    store_shown, listed, store_error = _from_store(ctx, offline)
    last = _last_backup(listed, recorded, now)
    running = recorded.server_running(now)
    schedule = recorded.schedule if running else _configured_schedule(settings)
    report: dict[str, Any] = {
        "data": data,
        "store": store_shown,
        "device_name": settings.device_name,
        "last_backup": last,
        "store_error": store_error,
        "schedule": schedule,
        "server": (
            {"pid": recorded.server_pid, "heartbeat": _stamp(recorded.heartbeat)}
            if running
            else None
        ),
        "next_run": _stamp(recorded.next_run) if running else None,
        "last_run": (
            {
                "time": _stamp(recorded.last_run_time),
                "outcome": recorded.last_run_outcome.value,
                "detail": recorded.last_run_detail,
            }
            if recorded.last_run_time and recorded.last_run_outcome
            else None
        ),
        "last_failure": (
            {
                "time": _stamp(recorded.last_failure_time),
                "reason": recorded.last_failure_reason,
                "consecutive_failures": recorded.consecutive_failures,
            }
            if recorded.last_failure_time
            else None
        ),
        "store_unreachable_since": _stamp(recorded.store_unreachable_since),
    }
    if json:
        import json as json_text

        print_json(json_text.dumps(report, indent=2))
    else:
        _print(report, recorded, now)
    if limit is not None and (last is None or last["age_seconds"] > limit.total_seconds()):
        raise typer.Exit(STALE_EXIT_CODE)


def _from_store(
    ctx: typer.Context, offline: bool
) -> tuple[str, list[tuple[str, datetime]] | None, str | None]:
    """The store as shown, this device's backups (id, time) in it, and why they could
    not be listed (None when they were, or ``offline``). A store without a repository
    holds none yet (the first backup creates it)."""
    from cloudkeep.errors import CloudkeepError, RepositoryNotFound
    from cloudkeep.storage.url import describe_store_url

    settings = ctx.obj
    shown = describe_store_url(settings.store)  # no password a hand-written URL holds
    if offline:
        return shown, None, None
    os.environ.setdefault("CLOUDKEEP_STORE_RETRY_DEADLINE", _STATUS_RETRY_DEADLINE)
    os.environ.setdefault("CLOUDKEEP_STORE_RETRIES", _STATUS_RETRIES)
    try:
        ws = workspace(ctx)
        shown = ws.storage.describe()
        infos = ws.list()
    except RepositoryNotFound:
        return shown, [], None
    except CloudkeepError as exc:
        return shown, None, one_line(str(exc) or type(exc).__name__)
    mine = [(i.id, i.created) for i in infos if i.device_name == settings.device_name]
    return shown, mine, None


def _last_backup(
    listed: list[tuple[str, datetime]] | None, recorded: "ScheduleStatus", now: datetime
) -> dict[str, Any] | None:
    if listed is not None:
        if not listed:
            return None
        backup_id, created = max(listed, key=lambda item: item[1])
        source = "store"
    elif recorded.last_good_id and recorded.last_good_time:
        backup_id, created, source = recorded.last_good_id, recorded.last_good_time, "status"
    else:
        return None
    return {
        "id": backup_id,
        "time": _stamp(created),
        "age_seconds": round((now - created).total_seconds(), 3),
        "source": source,
    }


def _configured_schedule(settings: Any) -> str | None:
    schedule = settings.config.schedule
    return str(schedule) if schedule else None


def _print(report: dict[str, Any], recorded: "ScheduleStatus", now: datetime) -> None:
    rows = [("data folder", report["data"]), ("store", report["store"])]
    rows.append(("device", report["device_name"]))
    last = report["last_backup"]
    if last is not None:
        line = (
            f"{age_text(last['age_seconds'])} ago: {last['id']} "
            f"({_utc_text(datetime.fromisoformat(last['time']))})"
        )
        if last["source"] == "status":
            error = report["store_error"]
            said = f"; cannot list the store: {error}" if error else ""
            line += f" (from this device's status file{said})"
    elif report["store_error"]:
        line = f"unknown: cannot list the store: {report['store_error']}"
    else:
        line = "none yet"
    rows.append(("last backup", line))
    rows.append(("next backup", _next_text(report, recorded, now)))
    run = report["last_run"]
    if run is not None:
        when = datetime.fromisoformat(run["time"])
        outcome = run["outcome"].replace("_", " ")
        detail = f" ({run['detail']})" if run["detail"] else ""
        rows.append(
            ("last run", f"{age_text((now - when).total_seconds())} ago: {outcome}{detail}")
        )
    failure = report["last_failure"]
    if failure is None:
        rows.append(("last failure", "none"))
    else:
        when = datetime.fromisoformat(failure["time"])
        ongoing = failure["consecutive_failures"]
        tail = f" ({ongoing} in a row, still failing)" if ongoing else " (recovered since)"
        rows.append(
            (
                "last failure",
                f"{age_text((now - when).total_seconds())} ago: {failure['reason']}{tail}",
            )
        )
    if report["store_unreachable_since"]:
        since = datetime.fromisoformat(report["store_unreachable_since"])
        rows.append(("store", f"unreachable since {_utc_text(since)}"))
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(one_line(f"{name:<{width}}  {value}"))


def _next_text(report: dict[str, Any], recorded: "ScheduleStatus", now: datetime) -> str:
    schedule = report["schedule"]
    server = report["server"]
    if server is None:
        if schedule:
            return (
                f"none: the schedule is {schedule}, but no server runs it (start `cloudkeep serve`)"
            )
        return "none: no schedule is set (config.toml's schedule, or `serve --schedule`)"
    if not schedule:
        return f"none: the server (pid {server['pid']}) has no schedule"
    if recorded.next_run is None:
        return f"{schedule}: running now, or being planned (server pid {server['pid']})"
    wait = (recorded.next_run - now).total_seconds()
    when = "now" if wait <= 0 else f"in {age_text(wait)}"
    return (
        f"{when} ({_utc_text(recorded.next_run)}); {schedule}, by the server (pid {server['pid']})"
    )


__all__ = ["STALE_EXIT_CODE", "age_text", "status"]
