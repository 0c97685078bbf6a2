"""``cloudkeep ls``, ``find`` and ``dump``: look into backups without restoring them.

``ls`` and ``find`` read manifests only; ``dump`` fetches the chunks of one file.
Names and paths are a backup's text: printed through ``one_line`` (control
characters escaped), never used as local paths.
"""

# No ``from __future__ import annotations``: Typer would compile every option's
# annotation string again each time it builds the commands.
from typing import TYPE_CHECKING, Annotated

import typer

from cloudkeep.cli.app import JsonOption, app, workspace
from cloudkeep.cli.output import notice, one_line, print_json, size_text
from cloudkeep.cli.params import FastCommand

if TYPE_CHECKING:
    from cloudkeep.backups.manifest import FileEntry

BackupArgument = Annotated[
    str,
    typer.Argument(metavar="ID", help="The backup: its id, a unique beginning of it, or 'latest'."),
]
LatestDeviceOption = Annotated[
    str | None,
    typer.Option(
        "--device",
        metavar="NAME",
        help="With 'latest': the newest backup of this device (default: this "
        "device's, or the only device's).",
    ),
]
DEFAULT_FIND_LIMIT = 1000


def _time(entry: "FileEntry") -> str:
    from cloudkeep.wire_browse import entry_time

    moment = entry_time(entry)
    return "-" if moment is None else moment.strftime("%Y-%m-%d %H:%M:%S")


def _line(entry: "FileEntry", size_width: int) -> str:
    from cloudkeep.wire_browse import entry_mode

    name = entry.path + ("/" if entry.type == "dir" else "")
    if entry.type == "symlink":
        name += f" -> {entry.target}"
    size = "" if entry.type == "dir" else size_text(entry.size)
    return one_line(f"{entry_mode(entry)}  {size:>{size_width}}  {_time(entry)}  {name}")


@app.command("ls", cls=FastCommand)
def ls(
    ctx: typer.Context,
    backup_id: BackupArgument,
    path: Annotated[
        str,
        typer.Argument(
            metavar="[PATH]", help="A folder (or file) of the backup; default: its top."
        ),
    ] = "",
    device: LatestDeviceOption = None,
    recursive: Annotated[
        bool, typer.Option("--recursive", "-R", help="List the whole subtree.")
    ] = False,
    json: JsonOption = False,
) -> None:
    """List the files of a backup: type and mode, size, time (UTC), path.

    Paths are printed from the top of the backup, as 'restore --include' and
    'dump' take them. Reads the backup's manifest only: nothing is downloaded.
    """
    ws = workspace(ctx)
    listing = ws.ls(ws.resolve(backup_id, device), path, recursive)
    if json:
        import json as json_text

        from cloudkeep.wire_browse import listing_to_json

        print_json(json_text.dumps(listing_to_json(listing)))
        return
    width = max((len(size_text(e.size)) for e in listing.entries), default=0)
    for entry in listing.entries:
        print(_line(entry, width))


@app.command("find", cls=FastCommand)
def find(
    ctx: typer.Context,
    pattern: Annotated[
        str,
        typer.Argument(
            metavar="PATTERN",
            help="A shell pattern (*, ?, [...]) matched against each name, or against "
            "the whole path from the top of the backup when it holds a '/' "
            "(there * stays within a name and ** spans folders): '*.db', "
            "'notes/*.sqlite', '**/cache/*'.",
        ),
    ],
    device: Annotated[
        str | None,
        typer.Option("--device", metavar="NAME", help="Only the backups of this device."),
    ] = None,
    backup: Annotated[
        str | None,
        typer.Option(
            "--backup", metavar="ID", help="Only this backup (an id, a beginning, or 'latest')."
        ),
    ] = None,
    kind: Annotated[
        str | None,
        typer.Option("--type", metavar="file|dir|symlink", help="Only entries of this type."),
    ] = None,
    limit: Annotated[
        int,
        typer.Option("--limit", metavar="N", min=0, help="Stop after N matches (0: no limit)."),
    ] = DEFAULT_FIND_LIMIT,
    json: JsonOption = False,
) -> None:
    """Find files in every backup by name or path, newest backup first.

    Matching is case-sensitive, as restic's find. Reads manifests only (kept in
    the local metadata cache): nothing is downloaded.
    """
    from cloudkeep.errors import UserError

    ws = workspace(ctx)
    backup_id = None
    if backup is not None:
        if device is not None and backup != "latest":
            raise UserError("--device chooses among the backups for --backup latest")
        backup_id = ws.resolve(backup, device)
        device = None
    groups, truncated = ws.find(pattern, device, backup_id, kind, limit or None)
    if json:
        import json as json_text

        from cloudkeep.wire_browse import found_to_json

        print_json(json_text.dumps(found_to_json(groups, truncated)))
        return
    if not groups:
        print(f"no entry matches {one_line(pattern)!r}")
        return
    for number, group in enumerate(groups):
        manifest = group.manifest
        created = manifest.created_at.strftime("%Y-%m-%d %H:%M:%S")
        if number:
            print()
        print(one_line(f"backup {manifest.id} ({created} UTC, device {manifest.device_name})"))
        width = max(len(size_text(e.size)) for e in group.entries)
        for entry in group.entries:
            print("  " + _line(entry, width))
    if truncated:
        matches = "match" if limit == 1 else "matches"
        notice(f"stopped after {limit:,} {matches}: --limit N shows more (0: all)")


@app.command("dump", cls=FastCommand)
def dump(
    ctx: typer.Context,
    backup_id: BackupArgument,
    path: Annotated[
        str, typer.Argument(metavar="PATH", help="A file of the backup (as 'ls' prints it).")
    ],
    device: LatestDeviceOption = None,
    archive: Annotated[
        str | None,
        typer.Option(
            "--archive",
            metavar="tar",
            help="Write PATH and everything beneath it (a folder, or '/' for all) as a tar stream.",
        ),
    ] = None,
) -> None:
    """Write a file of a backup to stdout, as it was backed up (restic's dump).

    Only that file's chunks are fetched, every one verified; memory stays bounded
    whatever its size: 'cloudkeep dump latest notes.db > notes.db'.
    """
    import os
    import sys

    from cloudkeep.errors import UserError

    if sys.stdout.isatty():  # as restic: a backup's bytes would reach the terminal as commands
        raise UserError(
            "dump writes a file's bytes to standard output, and stdout is a terminal: "
            "redirect it ('> FILE') or pipe it ('| less')"
        )
    ws = workspace(ctx)
    resolved = ws.resolve(backup_id, device)
    out = sys.stdout.buffer
    try:
        ws.dump(resolved, path, out, archive)
        out.flush()
    except BrokenPipeError:  # the reader left (| head): not an error of ours
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        raise typer.Exit(0) from None
