"""The ``cloudkeep`` command group, its global options and what every command shares.

Each command module (``main.py`` and the modules it imports) adds its commands to
``app``; the global options resolve the settings once, into ``ctx.obj``.
"""

# No ``from __future__ import annotations``: Typer would compile every option's
# annotation string again each time it builds the commands.
from typing import TYPE_CHECKING, Annotated

import typer

from cloudkeep import __version__
from cloudkeep.cli.output import notice
from cloudkeep.cli.params import FastGroup
from cloudkeep.settings import Settings

if TYPE_CHECKING:
    from cloudkeep.workspace import Workspace

app = typer.Typer(
    name="cloudkeep",
    cls=FastGroup,
    help="Keep a local database backed up to storage you own.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app_key = typer.Typer(
    cls=FastGroup, help="Manage the application keys the server accepts.", no_args_is_help=True
)
app.add_typer(app_key, name="app-key")


def _version(value: bool) -> None:
    if value:
        print(f"cloudkeep {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    ctx: typer.Context,
    data: Annotated[
        str | None,
        typer.Option(
            envvar="CLOUDKEEP_DATA", help="The local database: a folder or one SQLite file."
        ),
    ] = None,
    store: Annotated[
        str | None,
        typer.Option(
            envvar="CLOUDKEEP_STORE",
            help="Where backups go, e.g. file:///path, s3://bucket/prefix.",
        ),
    ] = None,
    passphrase_file: Annotated[
        str | None,
        typer.Option(
            envvar="CLOUDKEEP_PASSPHRASE_FILE",
            help="File holding the repository passphrase (or put the passphrase "
            "itself in CLOUDKEEP_PASSPHRASE).",
        ),
    ] = None,
    device_name: Annotated[
        str | None,
        typer.Option(
            envvar="CLOUDKEEP_DEVICE_NAME",
            help="Name of this device in the backup list (default: host name).",
        ),
    ] = None,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version.")
    ] = False,
) -> None:
    """Keep a local database backed up to storage you own."""
    if ctx.invoked_subcommand == "demo":  # self-contained: reads none of the user's settings
        return
    # setup, config and key repair a lost passphrase file: they start without it.
    repairing = ctx.invoked_subcommand in ("setup", "config", "key")
    ctx.obj = Settings.resolve(
        data, store, passphrase_file, device_name, passphrase_optional=repairing
    )


def workspace(ctx: typer.Context) -> "Workspace":
    """Imported here: --help and --version need none of the engine."""
    from cloudkeep.workspace import Workspace

    return Workspace(ctx.obj, notice=notice)


JsonOption = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]


DryRunOption = Annotated[
    bool, typer.Option("--dry-run", help="Show what would be freed; change nothing.")
]
