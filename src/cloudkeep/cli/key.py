"""``cloudkeep key``: the repository's key files (restic's ``key`` commands) and its
recovery text. The workspace and the repository do the work; this module asks for
passphrases and prints."""

# No ``from __future__ import annotations``: Typer would compile every option's
# annotation string again each time it builds the commands.
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from cloudkeep.cli.app import JsonOption, app, workspace
from cloudkeep.cli.output import notice, one_line, print_json
from cloudkeep.cli.params import FastCommand, FastGroup
from cloudkeep.errors import UserError

if TYPE_CHECKING:
    from cloudkeep.workspace import KeyChange, NewPassphrase

app_keys = typer.Typer(
    cls=FastGroup,
    help="Manage the repository's passphrases (key files) and its recovery text.",
    no_args_is_help=True,
)
app.add_typer(app_keys, name="key")

NewPassphraseFileOption = Annotated[
    str | None,
    typer.Option(
        "--new-passphrase-file",
        help="Read the new passphrase from this file (default: ask twice, hidden).",
    ),
]


def read_passphrase_file(path: str, what: str = "passphrase file") -> str:
    """The passphrase in ``path`` (the trailing newline dropped); one line if unusable."""
    try:
        text = Path(path).read_text(encoding="utf-8").rstrip("\r\n")
    except FileNotFoundError:
        raise UserError(f"the {what} {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read the {what} {path}: {exc}") from None
    if not text:
        raise UserError(f"the {what} {path} is empty")
    return text


def ask_new_passphrase(prompt: str = "New passphrase") -> str:
    """A passphrase typed twice, hidden; ``UserError`` without a terminal to ask on."""
    if not sys.stdin.isatty():
        raise UserError("no terminal to ask for the new passphrase on: give --new-passphrase-file")
    while True:
        first = typer.prompt(prompt, hide_input=True)
        if not first.strip():
            notice("the passphrase is empty: type one")
            continue
        if typer.prompt("Type it again", hide_input=True) == first:
            return str(first)
        notice("the two passphrases differ: try again")


def new_passphrase(file: str | None) -> "NewPassphrase":
    from cloudkeep.workspace import NewPassphrase

    if file:
        return NewPassphrase(read_passphrase_file(file), Path(file).expanduser().absolute())
    return NewPassphrase(ask_new_passphrase())


def _short(name: str | None) -> str:
    return (name or "").removeprefix("keys/")[:8]


@app_keys.command("list", cls=FastCommand)
def key_list(ctx: typer.Context, json: JsonOption = False) -> None:
    """The key files: id, when and on which host each was made, and the one this device uses."""
    infos, unread, current = workspace(ctx).list_keys()
    if json:
        import json as json_text

        print_json(
            json_text.dumps(
                {
                    "keys": [
                        {
                            "id": info.id,
                            "created": info.created,
                            "host": info.host,
                            "current": info.name == current,
                            "usable": info.usable,
                        }
                        for info in infos
                    ],
                    "not_read": unread,
                }
            )
        )
        return
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    table = Table(" ", "id", "created (UTC)", "host", box=None)
    for info in infos:  # created and host are the store's text: never markup
        table.add_row(
            "*" if info.name == current else "",
            info.id[:8],
            escape(_utc(info.created)) if info.usable else "(not a usable key file)",
            escape(one_line(info.host)),
        )
    Console(highlight=False).print(table)
    if unread:
        notice(f"{unread} more key files were not read (the first 64 are shown)")
    print("* the key this device opens the repository with")


def _utc(stamp: str) -> str:
    from datetime import UTC, datetime

    try:
        return datetime.fromisoformat(stamp).astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")
    except ValueError:
        return one_line(stamp) or "?"


@app_keys.command("add", cls=FastCommand)
def key_add(ctx: typer.Context, new_passphrase_file: NewPassphraseFileOption = None) -> None:
    """Add a passphrase: a new key file for the same repository key."""
    ws = workspace(ctx)
    new = new_passphrase(new_passphrase_file)
    name = ws.add_key(new.text)
    print(f"added key {_short(name)}: the repository now also opens with the new passphrase")


@app_keys.command("remove", cls=FastCommand)
def key_remove(
    ctx: typer.Context,
    key_id: Annotated[
        str, typer.Argument(metavar="ID", help="The key's id or a unique prefix (key list).")
    ],
) -> None:
    """Remove a key file (never this device's own, nor the last one)."""
    name = workspace(ctx).remove_key(key_id)
    print(f"removed key {_short(name)}: its passphrase no longer opens the repository")


@app_keys.command("passwd", cls=FastCommand)
def key_passwd(ctx: typer.Context, new_passphrase_file: NewPassphraseFileOption = None) -> None:
    """Change this device's passphrase: add the new one, then remove the old one."""
    ws = workspace(ctx)
    new = new_passphrase(new_passphrase_file)
    change = ws.change_passphrase(new)
    print(
        f"changed the passphrase: key {_short(change.key_file)} replaces "
        f"{_short(change.old_key_file)}"
    )
    _said_where(change, new)
    if change.not_removed:
        notice(
            f"the old key {_short(change.old_key_file)} is still in the store "
            f"({change.not_removed}); remove it with 'cloudkeep key remove "
            f"{_short(change.old_key_file)}'"
        )
    notice("other devices that used the old passphrase need the new one")


def _said_where(change: "KeyChange", new: "NewPassphrase") -> None:
    if change.saved_to is not None and change.saved_to != new.file:
        notice(f"saved the new passphrase to {change.saved_to} (mode 0600)")
    if change.saved_to is not None:
        notice(f"this device reads the passphrase from {change.saved_to} from now on")
    else:
        notice(
            "this device does not keep this store's passphrase (an option or the "
            "environment gave it, or the store is not the configured one): give the new "
            "one from now on"
        )


@app_keys.command("export", cls=FastCommand)
def key_export(
    ctx: typer.Context,
    output: Annotated[
        str | None,
        typer.Option(help="Write it to this new file (mode 0600) instead of the output."),
    ] = None,
) -> None:
    """Print the recovery text: the repository key itself, to keep offline."""
    ws = workspace(ctx)
    repository_id, lines = ws.recovery_text()
    text = _recovery_document(repository_id, ws.storage.describe(), lines)
    if output is None:
        sys.stdout.write(text)
        return
    from cloudkeep.platform import write_private_file

    path = Path(output).expanduser().absolute()
    if path.exists() or path.is_symlink():
        raise UserError(f"{path} exists: give a new file name")
    try:
        write_private_file(path, text.encode("utf-8"))
    except OSError as exc:
        raise UserError(f"cannot write {path}: {exc.strerror or exc}") from None
    print(f"wrote the recovery text of repository {repository_id[:12]}… to {path} (mode 0600)")
    notice("print it or copy it to a drive you keep offline, then delete this file")


def _recovery_document(repository_id: str, store: str, lines: list[str]) -> str:
    from datetime import UTC, datetime

    written = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return "\n".join(
        [
            "cloudkeep recovery text",
            "",
            "This is the key of the cloudkeep repository below. Whoever holds it can read",
            "every backup in it; without it, or a passphrase that opens the repository,",
            "nobody can: not you, not anyone. Keep it offline (printed, or on a drive in",
            "a drawer), never in the store and never beside the backups.",
            "",
            f"repository  {repository_id}",
            f"store       {one_line(store)}",
            f"written     {written}",
            "",
            *lines,
            "",
            "To get back in with it (every passphrase lost, or the key files deleted):",
            "  cloudkeep --store URL key recover --recovery-file THIS-FILE",
            "",
        ]
    )


def _read_recovery_text(recovery_file: str | None) -> str:
    if recovery_file and recovery_file != "-":
        try:
            return Path(recovery_file).read_text(encoding="utf-8", errors="replace")[: 64 * 1024]
        except OSError as exc:
            raise UserError(
                f"cannot read the recovery file {recovery_file}: {exc.strerror or exc}"
            ) from None
    if recovery_file == "-" or not sys.stdin.isatty():
        return sys.stdin.read(64 * 1024)
    notice("type or paste the recovery text's numbered lines, then an empty line")
    lines: list[str] = []
    for line in sys.stdin:
        if not line.strip() and lines:
            break
        lines.append(line)
    return "".join(lines)


def key_recover(
    ctx: typer.Context,
    recovery_file: Annotated[
        str | None,
        typer.Option(
            "--recovery-file",
            help="The recovery text ('-' for standard input; default: ask for it).",
        ),
    ] = None,
    new_passphrase_file: NewPassphraseFileOption = None,
) -> None:
    """Get back in with the recovery text: a new key file with a new passphrase."""
    ws = workspace(ctx)
    if new_passphrase_file is None and (recovery_file == "-" or not sys.stdin.isatty()):
        raise UserError("no terminal to ask for the new passphrase on: give --new-passphrase-file")
    text = _read_recovery_text(recovery_file)
    new = new_passphrase(new_passphrase_file)
    change = ws.recover(text, new)
    print(
        f"recovered: key {_short(change.key_file)} opens the repository at "
        f"{ws.storage.describe()} with the new passphrase"
    )
    _said_where(change, new)


app_keys.command("recover", cls=FastCommand)(key_recover)
app_keys.command("import", cls=FastCommand, help="The same as 'key recover'.")(key_recover)
