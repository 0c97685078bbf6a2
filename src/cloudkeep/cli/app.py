"""The ``cloudkeep`` command group, its global options and what every command shares.

Each command module adds its commands to ``app`` when imported: ``main.py`` always,
the others when one of their commands is named (``COMMANDS``). The global options
resolve the settings once, into ``ctx.obj``.
"""

# No ``from __future__ import annotations``: Typer would compile every option's
# annotation string again each time it builds the commands.
import importlib
from typing import TYPE_CHECKING, Annotated, Any

import typer

from cloudkeep import __version__
from cloudkeep.cli.output import notice
from cloudkeep.cli.params import FastGroup
from cloudkeep.settings import Settings

if TYPE_CHECKING:
    from cloudkeep.workspace import Workspace

#: Every command as ``--help`` lists them, and the module of ``cloudkeep.cli`` adding it.
#: Only the module of the command run is imported: ``cloudkeep backup`` builds one
#: command and imports none of the other modules (docs/performance.md).
COMMANDS = {
    **dict.fromkeys(("ls", "find", "dump"), "browse"),
    "demo": "demo",
    **dict.fromkeys(("forget", "stats"), "forget"),
    "setup": "setup",
    "status": "status",
    "diff": "diff",
    "sql": "sql",
    **dict.fromkeys(
        ("init", "backup", "list", "restore", "delete", "prune", "repair-index", "check"), "main"
    ),
    **dict.fromkeys(("serve", "app-key"), "main"),
    "service": "service",
    "config": "setup",
    "key": "key",
}


class _LazyCommands(FastGroup):
    """The root group: a command is built, and its module imported, when first named."""

    def list_commands(self, ctx: Any) -> list[str]:
        return [*COMMANDS, *(name for name in self.commands if name not in COMMANDS)]

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        module = COMMANDS.get(cmd_name)
        if cmd_name not in self.commands and module is not None:
            importlib.import_module(f"cloudkeep.cli.{module}")
            self._add_registered()
        return self.commands.get(cmd_name)

    def _add_registered(self) -> None:
        """Build the commands and groups added to ``app`` since this group was built."""
        from typer.main import get_command_from_info, get_command_name, get_group_from_info

        for info in app.registered_commands:
            if (info.name or get_command_name(info.callback.__name__)) not in self.commands:  # type: ignore[union-attr]
                self.add_command(
                    get_command_from_info(
                        info,
                        pretty_exceptions_short=app.pretty_exceptions_short,
                        rich_markup_mode=app.rich_markup_mode,
                    )
                )
        for group in app.registered_groups:
            if group.name not in self.commands:
                self.add_command(
                    get_group_from_info(
                        group,
                        pretty_exceptions_short=app.pretty_exceptions_short,
                        rich_markup_mode=app.rich_markup_mode,
                        suggest_commands=app.suggest_commands,
                    )
                )


app = typer.Typer(
    name="cloudkeep",
    cls=_LazyCommands,
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
