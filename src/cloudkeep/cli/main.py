"""``cloudkeep``: restic-style commands over the Workspace.

Exit codes: 0 success, 1 user error, 2 repository damage found by check,
3 storage unreachable, 4 ``service`` wrote its file but no service manager answered
(``service.py``). Expected failures print one line, never a traceback.
"""

# No ``from __future__ import annotations``: Typer would compile every option's
# annotation string again each time it builds the commands.
import gc
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from cloudkeep.cli.app import DryRunOption, JsonOption, app, app_key, workspace
from cloudkeep.cli.errors import exit_code_for
from cloudkeep.cli.output import error, notice, one_line, print_json, progress_bar, size_text
from cloudkeep.cli.params import FastCommand
from cloudkeep.errors import CloudkeepError
from cloudkeep.platform import keep_freed_memory

if TYPE_CHECKING:
    pass


@app.command(cls=FastCommand)
def init(ctx: typer.Context) -> None:
    """Create the repository in the store."""
    ws = workspace(ctx)
    ws.init()
    notice(f"created a repository at {ws.storage.describe()}")


@app.command(cls=FastCommand)
def backup(
    ctx: typer.Context,
    json: JsonOption = False,
    time: Annotated[
        str | None,
        typer.Option(
            "--time",
            metavar="TIME",
            help="Record this as the backup's time: '2026-01-02 15:04:05' (local time) "
            "or ISO 8601 with an offset (as restic's --time).",
        ),
    ] = None,
) -> None:
    """Back up the data folder now (creating the repository if needed)."""
    from cloudkeep.operations import Backup, run

    ws = workspace(ctx)
    if time is None:
        operation = Backup(time=None)
    else:
        from cloudkeep.cli.forget import parse_time

        operation = Backup(time=parse_time(time))
    with progress_bar("backup") as progress:
        info = run(operation, ws, progress).info
    for warning in info.warnings:
        notice(f"warning: {warning}")
    if json:
        from cloudkeep.wire import backup_from_info

        print_json(backup_from_info(info).to_json())
    else:
        print(
            f"backup {info.id} of {info.source} ({info.bytes:,} bytes) saved to "
            f"{ws.storage.describe()} as device {info.device_name}; "
            f"{info.added_bytes:,} bytes added to the store{_warned(info.warnings)}"
        )


def _warned(warnings: tuple[str, ...]) -> str:
    """The end of a backup's summary line: how many warnings were printed above it."""
    if not warnings:
        return ""
    count = len(warnings)
    return f"; {count} warning{'s' if count > 1 else ''} (see above)"


DeviceOption = Annotated[
    str | None,
    typer.Option("--device", metavar="NAME", help="Only the backups of this device."),
]


@app.command("list", cls=FastCommand)
def list_(ctx: typer.Context, device: DeviceOption = None, json: JsonOption = False) -> None:
    """Every backup in the store, all devices, newest first."""
    infos = workspace(ctx).list(device)
    if json:
        from cloudkeep.wire import backups_from_infos

        print_json(backups_from_infos(infos).to_json())
        return
    if not infos:
        print("no backups yet" if device is None else f"no backups of device {device!r} yet")
        return
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table(box=None)
    for name in ("id", "created (UTC)", "device", "data folder"):
        # Ids and dates are never cut; long device names and folders wrap on a terminal.
        table.add_column(name, no_wrap=name in ("id", "created (UTC)"), overflow="fold")
    table.add_column("size", justify="right", no_wrap=True)
    table.add_column("added", justify="right", no_wrap=True)
    for info in infos:
        table.add_row(
            info.id,
            info.created.strftime("%Y-%m-%d %H:%M:%S"),
            # A backup's device and folder are a key holder's text: shown, never markup.
            Text(_cut(one_line(info.device_name), 100)),
            Text(_cut(one_line(info.source), 300)),
            size_text(info.bytes),
            size_text(info.added_bytes),
        )
    # A pipe gets whole lines (for grep and awk), not the 80 columns of no terminal.
    Console(highlight=False, width=None if sys.stdout.isatty() else 1000).print(table)


def _cut(text: str, limit: int) -> str:
    """At most ``limit`` characters: a longer text keeps its end (a path's telling part)."""
    return text if len(text) <= limit else "..." + text[-(limit - 3) :]


@app.command(cls=FastCommand)
def restore(
    ctx: typer.Context,
    backup_id: Annotated[
        str | None,
        typer.Argument(
            metavar="[ID]",
            help="The backup to restore: its id, a unique beginning of it, or 'latest'.",
        ),
    ] = None,
    device: Annotated[
        str | None,
        typer.Option(
            "--device",
            metavar="NAME",
            help="With 'latest': the newest backup of this device (default: this "
            "device's, or the only device's).",
        ),
    ] = None,
    target: Annotated[
        str | None,  # not Path: Typer would build a pydantic adapter for it
        typer.Option(help="Restore into this new or empty folder instead of the live data."),
    ] = None,
    fetch_all: Annotated[
        bool,
        typer.Option(
            "--fetch-all",
            help="Fetch every chunk from the store, even those the live data still holds.",
        ),
    ] = False,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Restore in place even while another program holds a database open.",
        ),
    ] = False,
    undo: Annotated[
        bool,
        typer.Option(
            "--undo",
            help="Put back the data the last in-place restore replaced (again to redo).",
        ),
    ] = False,
    include: Annotated[
        list[str] | None,
        typer.Option(
            "--include",
            metavar="PATH",
            help="Restore only this file or folder of the backup (as 'cloudkeep ls' "
            "prints it); repeatable. In place, each file is replaced atomically.",
        ),
    ] = None,
    json: JsonOption = False,
) -> None:
    """Restore a backup into the live data path (atomically), or into --target.

    Chunks the live data still holds unchanged (checked against the backup) are
    taken from it; only the others are fetched from the store. What an in-place
    restore replaces is kept beside the data as <name>.cloudkeep-undo. Without a
    data path, a backup of a Pieces OS folder goes to this system's Pieces OS folder.

    With --include, only those paths (and the folders leading to them) are
    restored, fetching only their chunks; a database comes with its -wal/-shm as
    backed up, and stale ones beside it are moved out with what it replaces
    (kept in <name>.cloudkeep-undo-files for --undo).
    """
    from cloudkeep.errors import UserError
    from cloudkeep.operations import Restore, run

    ws = workspace(ctx)
    if undo:
        if backup_id or target or fetch_all or json or device or include:
            raise UserError(
                "--undo takes no backup id, --target, --device, --include, --fetch-all or --json"
            )
        kept = ws.undo_restore(force=force)
        print(f"put back the data the last restore replaced into {ws.data_path()}")
        notice(f"the restored data is now kept in {kept}; 'cloudkeep restore --undo' again redoes")
        return
    if not backup_id:
        raise UserError(
            "Missing argument 'ID': name the backup to restore (see 'cloudkeep list'), "
            "'latest', or --undo"
        )
    operation = Restore(
        ws.resolve(backup_id, device),
        Path(target).absolute() if target else None,
        force=force,
        reuse_local=not fetch_all,
        include=tuple(include or ()),
    )
    with progress_bar("restore") as progress:
        info = run(operation, ws, progress).info
    for warning in info.warnings:
        notice(f"warning: {warning}")
    if json:
        from cloudkeep.wire import backup_from_info

        print_json(backup_from_info(info).to_json())
    else:
        print(f"restored backup {info.id} into {info.restored_to}")
        if info.reused_bytes:
            notice(
                f"{info.reused_bytes:,} bytes came from the live data, "
                f"{info.fetched_bytes:,} from the store"
            )
    if info.undo_path:
        what = "the entries it replaced are" if include else "the data it replaced is"
        notice(
            f"{what} kept in {info.undo_path} until the next restore; "
            f"'cloudkeep restore --undo' puts {'them' if include else 'it'} back"
        )


@app.command(cls=FastCommand)
def delete(
    ctx: typer.Context,
    backup_ids: Annotated[
        list[str],
        typer.Argument(
            metavar="ID...", help="The backups to delete: ids or unique beginnings of them."
        ),
    ],
) -> None:
    """Delete backups and free the space no other backup uses (one prune).

    Every id is checked first: an unknown one deletes none.
    """
    from cloudkeep.operations import Delete, run

    ws = workspace(ctx)
    resolved = [ws.resolve(backup_id) for backup_id in backup_ids]
    first, *others = resolved
    pruned = run(Delete(first, tuple(others)), ws).pruned
    for backup_id in dict.fromkeys(resolved):
        print(f"deleted backup {backup_id}")
    if pruned is None:
        notice("other clients are using the repository: a later prune frees the space")
    elif pruned.bytes_freed:
        notice(f"freed {pruned.bytes_freed:,} bytes ({pruned.packs_deleted} packs)")


def _prune(ctx: typer.Context, dry_run: bool, json: bool) -> None:
    with progress_bar("prune") as progress:
        # Busy (exit 1) if other clients hold the repository past the lock timeout.
        from cloudkeep.operations import Prune, run

        report = run(Prune(dry_run), workspace(ctx), progress).summary
    if json:
        done = {
            "packs_deleted": report.packs_deleted,
            "packs_repacked": report.packs_repacked,
            "bytes_freed": report.bytes_freed,
            "stopped": report.stopped,
        }
        import json as json_text

        figures = {"dry_run": dry_run, "plan": report.figures, **({} if dry_run else done)}
        print_json(json_text.dumps(figures))
        return
    for pack_id in report.unreadable:
        notice(f"warning: data/ holds {pack_id[:16]}..., not a readable pack: left alone")
    if dry_run:
        print(report.plan_summary)
        return
    if report.stopped:
        notice(f"stopped early ({report.stopped}): a later prune finishes")
    print(
        f"freed {report.bytes_freed:,} bytes ({report.packs_deleted} packs, "
        f"{report.packs_repacked} repacked)"
    )


@app.command(cls=FastCommand)
def prune(ctx: typer.Context, dry_run: DryRunOption = False, json: JsonOption = False) -> None:
    """Free the space no backup uses (finishes an interrupted delete)."""
    _prune(ctx, dry_run, json)


@app.command(cls=FastCommand, hidden=True)
def reclaim(ctx: typer.Context, dry_run: DryRunOption = False, json: JsonOption = False) -> None:
    """The former name of prune."""
    _prune(ctx, dry_run, json)


@app.command("repair-index", cls=FastCommand)
def repair_index(ctx: typer.Context) -> None:
    """Rebuild the index from the packs' headers (after index files were lost or damaged)."""
    report = workspace(ctx).repair_index()
    for pack_id in report.unreadable_packs:
        notice(f"warning: pack {pack_id[:16]} has no readable header and was not indexed")
    print(
        f"indexed {report.blobs_indexed:,} blobs in {report.packs_indexed} packs; "
        f"replaced {report.index_files_removed} unreadable index files"
    )
    print("run 'cloudkeep check --read-data' to see which backups are complete")


@app.command(cls=FastCommand)
def check(
    ctx: typer.Context,
    read_data: Annotated[
        bool, typer.Option("--read-data", help="Download and verify every stored byte.")
    ] = False,
) -> None:
    """Verify the repository's structure, and with --read-data every byte."""
    from cloudkeep.operations import Check, run

    with progress_bar("check") as progress:
        report = run(Check(read_data), workspace(ctx), progress).report
    for warning in report.warnings:
        notice(f"warning: {warning}")
    for problem in report.errors:
        error(f"error: {problem}")
    scope = f"{report.bytes_read:,} bytes read" if read_data else "structure only"
    print(f"checked {report.backups} backups, {report.packs} packs, {report.blobs} blobs ({scope})")
    if not report.ok:
        for backup_id in report.damaged_backups:
            print(f"damaged backup: {backup_id}")
        print("the repository is damaged")
        raise typer.Exit(2)
    print("no errors were found")


@app.command(cls=FastCommand)
def serve(
    ctx: typer.Context,
    host: Annotated[str | None, typer.Option(help="Address to bind (default localhost).")] = None,
    port: Annotated[
        int | None, typer.Option(help="Port (default 1000, else the first free of 39300-39333).")
    ] = None,
    require_app_key: Annotated[
        bool, typer.Option(help="Require X-Application-ID on every request.")
    ] = False,
    allow_origin: Annotated[
        list[str] | None, typer.Option(help="A browser origin allowed to call the API.")
    ] = None,
    tls_cert: Annotated[
        str | None,
        typer.Option(help="PEM certificate chain: serve HTTPS (needed off loopback)."),
    ] = None,
    tls_key: Annotated[str | None, typer.Option(help="PEM private key of --tls-cert.")] = None,
    request_timeout: Annotated[
        float, typer.Option(help="Seconds a client has to send a whole request.")
    ] = 10.0,
    max_queued_jobs: Annotated[
        int, typer.Option(help="Backups and restores allowed to wait; more get 429.")
    ] = 16,
    schedule: Annotated[
        str | None,
        typer.Option(
            help="Back up on this schedule instead of the configuration file's: hourly, "
            "daily, 'every 30m', 'at 02:00,14:30' or off."
        ),
    ] = None,
) -> None:
    """Run the Pieces OS Backups API server, and the scheduled backups."""
    from cloudkeep.api.server import serve as run_server

    run_server(
        ctx.obj,
        host=host,
        port=port,
        require_app_key=require_app_key,
        allowed_origins=allow_origin or [],
        request_timeout=request_timeout,
        max_queued_jobs=max_queued_jobs,
        tls_cert=tls_cert,
        tls_key=tls_key,
        schedule=schedule,
    )


@app_key.command("create", cls=FastCommand)
def app_key_create(
    ctx: typer.Context,
    label: Annotated[
        str, typer.Option(help="A name to tell the key apart in 'app-key list'.")
    ] = "",
) -> None:
    """Issue a new application key (shown once) for X-Application-ID."""
    from cloudkeep.api.appkeys import create_app_key

    print(create_app_key(ctx.obj.config_dir, label=label))


@app_key.command("list", cls=FastCommand)
def app_key_list(ctx: typer.Context) -> None:
    """The issued application keys: id, creation time and label (never the key)."""
    from cloudkeep.api.appkeys import list_app_keys

    keys = list_app_keys(ctx.obj.config_dir)
    if not keys:
        print("no application keys; 'cloudkeep app-key create' issues one")
        return
    for key in keys:
        created = _utc(key.get("created", ""))
        print(one_line(f"{key.get('id', '?'):<10} {created:<24} {key.get('label', '')}".rstrip()))


def _utc(stamp: str) -> str:
    """An ISO timestamp as ``YYYY-MM-DD HH:MM:SS UTC``; anything else as it is."""
    from datetime import UTC, datetime

    try:
        return datetime.fromisoformat(stamp).astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    except ValueError:
        return stamp


@app_key.command("revoke", cls=FastCommand)
def app_key_revoke(
    ctx: typer.Context,
    key_id: Annotated[str, typer.Argument(metavar="ID", help="The key's id (see 'app-key list').")],
) -> None:
    """Revoke an application key: a running server refuses it from its next request."""
    from cloudkeep.api.appkeys import revoke_app_key
    from cloudkeep.errors import UserError

    if not revoke_app_key(ctx.obj.config_dir, key_id):
        raise UserError(f"no application key with id {key_id!r} (see 'cloudkeep app-key list')")
    print(f"revoked application key {key_id}")


def run() -> None:
    """Console-script entry: map expected failures to one line and an exit code."""
    try:
        _run()
    finally:
        # The process is ending: spare the interpreter's final garbage collections a
        # walk over every object of start-up; the OS
        # frees the memory. Exit handlers and module teardown still run.
        gc.freeze()


def _run() -> None:
    keep_freed_memory()
    logging.basicConfig(
        level=os.environ.get("CLOUDKEEP_LOG_LEVEL", "WARNING"),
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        code = app(standalone_mode=False)  # click returns Exit codes in this mode
        sys.exit(code if isinstance(code, int) else 0)
    except CloudkeepError as exc:
        error(f"cloudkeep: error: {exc}")
        sys.exit(exit_code_for(exc))
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        error("cloudkeep: interrupted")
        sys.exit(130)
    except typer.Abort:
        sys.exit(130)
    except typer.TyperException as exc:  # usage errors (Typer carries its own click)
        if type(exc).__name__ == "NoArgsIsHelpError":  # as Typer itself tells it apart
            sys.exit(0)  # the help was printed: plain `cloudkeep` is a request for it
        show = getattr(exc, "show", None)
        if show is not None:
            show()
        else:
            error(f"cloudkeep: error: {exc}")
        code = getattr(exc, "exit_code", 1)
        sys.exit(1 if code == 2 else code)
    except Exception as exc:
        if os.environ.get("CLOUDKEEP_DEBUG"):
            raise
        error(
            f"cloudkeep: internal error: {type(exc).__name__}: {exc} "
            "(set CLOUDKEEP_DEBUG=1 for details)"
        )
        sys.exit(70)
