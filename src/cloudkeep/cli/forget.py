"""``cloudkeep forget`` (restic's retention policy) and ``cloudkeep stats``."""

# No ``from __future__ import annotations``: Typer would compile every option's
# annotation string again each time it builds the commands.
import re
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any

import typer

from cloudkeep.cli.app import JsonOption, app, workspace
from cloudkeep.cli.output import notice, one_line, print_json
from cloudkeep.cli.params import FastCommand
from cloudkeep.errors import UserError

if TYPE_CHECKING:
    from cloudkeep.backups.retention import BackupRecord, GroupDecision
    from cloudkeep.backups.stats import StoreStats
    from cloudkeep.config import Retention
    from cloudkeep.operations import ForgetResult

_RESTIC_TIME = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}$")


def parse_time(text: str) -> datetime:
    """``backup --time``: restic's ``2006-01-02 15:04:05`` (local time) or ISO 8601,
    with an offset or without (then local time)."""
    value = text.strip()
    try:
        if _RESTIC_TIME.fullmatch(value):
            return datetime.strptime(value, "%Y-%m-%d %H:%M:%S")
        return datetime.fromisoformat(value)
    except ValueError:
        raise UserError(
            f"--time {one_line(text[:40])!r} is not a time: write 2026-01-02 15:04:05 "
            "(local time) or ISO 8601 such as 2026-01-02T15:04:05+01:00"
        ) from None


def keep_count(option: str, text: str | None) -> int:
    """A keep count option: a whole number, or ``unlimited``; 0 when not given."""
    from cloudkeep.config import parse_count

    return 0 if text is None else parse_count(text, option)


@app.command(cls=FastCommand)
def forget(
    ctx: typer.Context,
    keep_last: Annotated[
        str | None,
        typer.Option("--keep-last", "-l", metavar="N", help="Keep the N newest backups."),
    ] = None,
    keep_hourly: Annotated[
        str | None,
        typer.Option(
            "--keep-hourly", "-H", metavar="N", help="Keep the newest backup of each of N hours."
        ),
    ] = None,
    keep_daily: Annotated[
        str | None,
        typer.Option(
            "--keep-daily", "-d", metavar="N", help="Keep the newest backup of each of N days."
        ),
    ] = None,
    keep_weekly: Annotated[
        str | None,
        typer.Option(
            "--keep-weekly", "-w", metavar="N", help="Keep the newest backup of each of N weeks."
        ),
    ] = None,
    keep_monthly: Annotated[
        str | None,
        typer.Option(
            "--keep-monthly", "-m", metavar="N", help="Keep the newest backup of each of N months."
        ),
    ] = None,
    keep_yearly: Annotated[
        str | None,
        typer.Option(
            "--keep-yearly", "-y", metavar="N", help="Keep the newest backup of each of N years."
        ),
    ] = None,
    keep_within: Annotated[
        str | None,
        typer.Option(
            metavar="DURATION",
            help="Keep the backups younger than DURATION (e.g. 30d, 1y6m, 12h) before the "
            "newest one.",
        ),
    ] = None,
    device: Annotated[
        str | None, typer.Option(help="Only this device's backups (default: every device's).")
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", "-n", help="Show what would be removed; change nothing.")
    ] = False,
    prune: Annotated[
        bool, typer.Option("--prune", help="Then free the space no backup uses (one prune).")
    ] = False,
    json: JsonOption = False,
) -> None:
    """Remove the backups a retention policy does not keep (restic's forget).

    Backups are grouped per device and data folder; in each group a backup is kept
    when it is the newest of one of the last N hours, days, weeks (ISO), months or
    years (local time), one of the N newest, or within DURATION of the newest. Every
    count is a number or "unlimited". With no --keep option the configured policy
    (the retention table of config.toml) applies; with none configured, nothing is
    removed.
    """
    from cloudkeep.config import Retention
    from cloudkeep.errors import ConfigurationError
    from cloudkeep.operations import Forget, run

    try:
        policy = Retention(
            last=keep_count("--keep-last", keep_last),
            hourly=keep_count("--keep-hourly", keep_hourly),
            daily=keep_count("--keep-daily", keep_daily),
            weekly=keep_count("--keep-weekly", keep_weekly),
            monthly=keep_count("--keep-monthly", keep_monthly),
            yearly=keep_count("--keep-yearly", keep_yearly),
            within=keep_within.strip() if keep_within is not None else None,
        )
    except ConfigurationError as exc:
        raise UserError(f"--{exc}") from None
    if policy.empty:
        policy = ctx.obj.config.retention
    result = run(Forget(policy, dry_run=dry_run, prune=prune, device=device), workspace(ctx))
    for name, reason in sorted(result.unreadable.items()):
        notice(f"warning: kept backup {name}, which does not read: {reason}")
    if json:
        import json as json_text

        print_json(json_text.dumps(_forget_json(result)))
        return
    _print_forget(policy, result)


def _when(backup: "BackupRecord") -> str:
    return backup.time.astimezone().strftime("%Y-%m-%d %H:%M:%S")


def _print_forget(policy: "Retention", result: "ForgetResult") -> None:
    print(f"applying policy: {policy}")
    for group in result.groups:
        print()
        print(one_line(f"device {group.device}, data {group.source}:"))
        print(f"keep {_backups(len(group.keep))}:")
        for kept in group.keep:
            reasons = ", ".join(kept.reasons)
            print(one_line(f"  {kept.backup.id}  {_when(kept.backup)}  {reasons}"))
        if group.remove:
            print(f"remove {_backups(len(group.remove))}:")
            for backup in group.remove:
                print(f"  {backup.id}  {_when(backup)}")
    removed = sum(len(group.remove) for group in result.groups)
    print()
    if result.dry_run:
        print(f"would remove {_backups(removed)} (dry run: nothing was changed)")
        if result.pruned is not None:
            print(f"then the prune {result.pruned.plan_summary}")
        elif result.prune_postponed:
            notice("other clients are using the repository: the prune could not be planned")
        return
    print(f"removed {_backups(len(result.deleted))}")
    if result.prune_postponed:
        notice("other clients are using the repository: a later prune frees the space")
    elif result.pruned is not None:
        pruned = result.pruned
        if pruned.stopped:
            notice(f"prune stopped early ({pruned.stopped}): a later prune finishes")
        print(
            f"freed {pruned.bytes_freed:,} bytes ({pruned.packs_deleted} packs, "
            f"{pruned.packs_repacked} repacked)"
        )


def _backups(count: int) -> str:
    return f"{count} backup{'' if count == 1 else 's'}"


def _forget_json(result: "ForgetResult") -> dict[str, Any]:
    """Per group restic's ``forget --json`` fields in our words: keep, remove, reasons."""

    def backup(record: "BackupRecord") -> dict[str, str]:
        return {"id": record.id, "time": record.time.astimezone().isoformat()}

    def group(decision: "GroupDecision") -> dict[str, Any]:
        return {
            "device": decision.device,
            "source": decision.source,
            "keep": [backup(kept.backup) for kept in decision.keep],
            "remove": [backup(record) for record in decision.remove],
            "reasons": [
                {"backup": backup(kept.backup), "matches": list(kept.reasons)}
                for kept in decision.keep
            ],
        }

    pruned: dict[str, Any] | None = None
    if result.pruned is not None:  # as ``prune --json`` prints it
        summary = result.pruned
        pruned = {"dry_run": summary.dry_run, "plan": summary.figures}
        if not summary.dry_run:
            pruned |= {
                "packs_deleted": summary.packs_deleted,
                "packs_repacked": summary.packs_repacked,
                "bytes_freed": summary.bytes_freed,
                "stopped": summary.stopped,
            }
    return {
        "dry_run": result.dry_run,
        "groups": [group(decision) for decision in result.groups],
        "deleted": list(result.deleted),
        "pruned": pruned,
        "prune_postponed": result.prune_postponed,
        "unreadable": sorted(result.unreadable),
    }


@app.command(cls=FastCommand)
def stats(ctx: typer.Context, json: JsonOption = False) -> None:
    """Store size, bytes per device and the dedup ratio (reads no pack)."""
    figures: StoreStats = workspace(ctx).stats()
    for name in figures.unreadable:
        notice(f"warning: backup {name} does not read: not counted")
    if json:
        import json as json_text

        print_json(json_text.dumps(figures.figures()))
        return
    print(
        f"store: {figures.store_bytes:,} bytes ({figures.packs} packs {figures.pack_bytes:,}, "
        f"index {figures.index_bytes:,}, backups {figures.backup_bytes:,})"
    )
    ratio = figures.dedup_ratio
    print(
        f"{_backups(figures.backups)} holding {figures.logical_bytes:,} bytes of data; "
        f"dedup ratio {'-' if ratio is None else f'{ratio:.2f}'}"
    )
    for device in figures.devices:
        print(
            one_line(
                f"device {device.device}: {_backups(device.backups)}, "
                f"{device.added_bytes:,} bytes added; latest {device.latest_id} "
                f"({device.latest_bytes:,} bytes)"
            )
        )
