"""``cloudkeep service install|uninstall|status``: run ``cloudkeep serve`` at login, as you.

Linux gets a systemd user unit, macOS a launchd agent, Windows a Task Scheduler
task; the service reads the configuration file (``cloudkeep setup``), never a
secret from the service's own file. Exit codes: 0 done, 1 an error (a system
without a login service, the service manager refused), 4 the file was written
(or removed) but no service manager answered (a container, a shell outside the
login session): one line says which command finishes the job.
"""

# No ``from __future__ import annotations``: Typer would compile every option's
# annotation string again each time it builds the commands.
import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from cloudkeep.cli.app import JsonOption, app
from cloudkeep.cli.output import notice, one_line, print_json
from cloudkeep.cli.params import FastCommand, FastGroup

if TYPE_CHECKING:
    from cloudkeep.platform.service import ServiceManager, ServiceSpec
    from cloudkeep.settings import Settings

service_app = typer.Typer(
    cls=FastGroup,
    help="Start the server at login (systemd user unit, launchd agent, Task Scheduler).",
    no_args_is_help=True,
)
app.add_typer(service_app, name="service")

#: Exit code: the file is in place (or gone) but no service manager could be told.
NOT_STARTED = 4
#: The log file (in the cache folder) where the service manager keeps none itself.
LOG_NAME = "service.log"
#: A log file past this size is renamed to ``service.log.1`` when the service starts.
LOG_ROTATE_BYTES = 8 * 1024 * 1024
#: Variables the service passes on so that it reads the same configuration.
FORWARDED = ("CLOUDKEEP_CONFIG_DIR", "CLOUDKEEP_CACHE_DIR")
#: Global options (and their variables) the service does not see: it reads the file.
_UNSEEN_OPTIONS = {
    "data": "--data/CLOUDKEEP_DATA",
    "store": "--store/CLOUDKEEP_STORE",
    "passphrase_file": "--passphrase-file/CLOUDKEEP_PASSPHRASE_FILE",
    "device_name": "--device-name/CLOUDKEEP_DEVICE_NAME",
}


@contextlib.contextmanager
def _service_errors() -> Iterator[None]:
    """A service manager's refusal as a user error: one line, exit 1."""
    from cloudkeep.errors import UserError
    from cloudkeep.platform.service import ServiceError

    try:
        yield
    except ServiceError as exc:
        raise UserError(str(exc)) from None
    except OSError as exc:
        raise UserError(
            f"cannot write the service's file {exc.filename or ''}: {exc.strerror or exc}"
        ) from None


def _log_file(settings: "Settings") -> Path:
    return settings.cache_dir.absolute() / LOG_NAME


def _spec(settings: "Settings", manager: "ServiceManager", serve: list[str]) -> "ServiceSpec":
    """What the service runs: this very Python (no symlink resolved: a virtual
    environment's ``bin/python`` is what finds cloudkeep) with ``-m cloudkeep serve``,
    this shell's PATH (launchd's own is bare). Where the service manager sets no
    environment or keeps no output (Windows: the task inherits the user's PATH),
    ``service run`` in front does both."""
    from cloudkeep.errors import UserError
    from cloudkeep.platform.service import ServiceSpec

    if not sys.executable:
        raise UserError("cannot tell which Python runs cloudkeep (sys.executable is empty)")
    python = manager.interpreter(os.path.abspath(sys.executable))
    environment = {
        name: os.path.abspath(os.path.expanduser(os.environ[name]))
        for name in FORWARDED
        if os.environ.get(name)
    }
    log_file = _log_file(settings)
    if manager.carries_environment and manager.keeps_output:
        argv = [python, "-m", "cloudkeep", "serve", *serve]
        if os.environ.get("PATH"):  # a failure hook's command is found as in this shell
            environment["PATH"] = os.environ["PATH"]
        environment["PYTHONUNBUFFERED"] = "1"  # each line reaches the log as it is written
    else:
        argv = [python, "-m", "cloudkeep", "service", "run", "--log-file", str(log_file)]
        for name, value in environment.items():
            argv += ["--env", f"{name}={value}"]
        argv += ["--", "serve", *serve]
        environment = {}
    return ServiceSpec(tuple(argv), environment, Path.home(), log_file)


def _serve_options(
    host: str | None,
    port: int | None,
    require_app_key: bool,
    allow_origin: list[str] | None,
    tls_cert: str | None,
    tls_key: str | None,
) -> list[str]:
    """``serve``'s options as the service passes them (files as absolute paths: the
    service starts in the home folder)."""
    options: list[str] = []
    if host:
        options += ["--host", host]
    if port is not None:
        options += ["--port", str(port)]
    if require_app_key:
        options.append("--require-app-key")
    for origin in allow_origin or []:
        options += ["--allow-origin", origin]
    for name, value in (("--tls-cert", tls_cert), ("--tls-key", tls_key)):
        if value:
            options += [name, os.path.abspath(os.path.expanduser(value))]
    return options


def _unseen_settings(ctx: typer.Context) -> list[str]:
    """Warnings for what is set here but not in the configuration file the service reads."""
    from cloudkeep.config import CREDENTIAL_VARIABLES, config_path

    settings: Settings = ctx.obj
    path = config_path(settings.config_dir)
    warnings = []
    root = ctx.find_root().params
    given = [label for name, label in _UNSEEN_OPTIONS.items() if root.get(name)]
    if os.environ.get("CLOUDKEEP_PASSPHRASE"):
        given.append("CLOUDKEEP_PASSPHRASE")
    given += sorted(
        name
        for name in CREDENTIAL_VARIABLES
        if os.environ.get(name) and name not in settings.config.credentials
    )
    if given:
        warnings.append(
            f"warning: the service reads its settings from {path}, not {', '.join(given)} "
            "set here; `cloudkeep setup` saves them there"
        )
    if not path.exists():
        warnings.append(
            f"warning: {path} does not exist yet: the service uses the defaults until "
            "`cloudkeep setup` writes it"
        )
    return warnings


@service_app.command("install", cls=FastCommand)
def install(
    ctx: typer.Context,
    host: Annotated[str | None, typer.Option(help="serve's --host.")] = None,
    port: Annotated[int | None, typer.Option(min=1, max=65535, help="serve's --port.")] = None,
    require_app_key: Annotated[
        bool, typer.Option("--require-app-key", help="serve's --require-app-key.")
    ] = False,
    allow_origin: Annotated[
        list[str] | None, typer.Option(help="serve's --allow-origin (repeatable).")
    ] = None,
    tls_cert: Annotated[str | None, typer.Option(help="serve's --tls-cert.")] = None,
    tls_key: Annotated[str | None, typer.Option(help="serve's --tls-key.")] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the file it would write; change nothing.")
    ] = False,
) -> None:
    """Run `cloudkeep serve` now and at every login, as you (never system-wide).

    Exit code 4: the file is written but no service manager answered (a container,
    a shell outside the login session); the line printed says how to start it.
    """
    from cloudkeep.platform.service import login_service

    serve = _serve_options(host, port, require_app_key, allow_origin, tls_cert, tls_key)
    with _service_errors():
        manager = login_service()
        spec = _spec(ctx.obj, manager, serve)
        if dry_run:
            text = manager.render(spec)
            notice(f"would write the {manager.kind} {manager.location}:")
            sys.stdout.write(text if text.endswith("\n") else text + "\n")
            return
        for warning in _unseen_settings(ctx):
            notice(warning)
        outcome = manager.install(spec)
    what = f"the {manager.kind} {outcome.path}"
    if outcome.pending is not None:
        print(f"wrote {what}; not started")
        notice(outcome.pending)
        raise typer.Exit(NOT_STARTED)
    done = "installed" if outcome.changed else "kept (unchanged)"
    print(f"{done} {what}: `cloudkeep serve` runs now and at every login")
    notice("'cloudkeep service status' shows its state and log")


@service_app.command("uninstall", cls=FastCommand)
def uninstall(ctx: typer.Context) -> None:
    """Stop the service and remove it (nothing to do when it is not installed)."""
    from cloudkeep.platform.service import login_service

    with _service_errors():
        manager = login_service()
        outcome = manager.uninstall()
    what = f"the {manager.kind} {outcome.path}"
    if not outcome.changed:
        print(f"no service installed ({what} does not exist): nothing to remove")
    elif outcome.pending is not None:
        print(f"removed {what}")
        notice(outcome.pending)
        raise typer.Exit(NOT_STARTED)
    else:
        print(f"stopped and removed {what}")


@service_app.command("status", cls=FastCommand)
def status(
    ctx: typer.Context,
    lines: Annotated[
        int, typer.Option("--lines", "-n", min=0, help="How many log lines to show.")
    ] = 10,
    json: JsonOption = False,
) -> None:
    """Whether the service is installed and running, where its file is, its last log lines."""
    from cloudkeep.platform.service import login_service

    with _service_errors():
        manager = login_service()
        state = manager.status(_log_file(ctx.obj), lines)
    if json:
        import json as json_text

        print_json(
            json_text.dumps(
                {
                    "kind": manager.kind,
                    "location": state.path,
                    "installed": state.installed,
                    "running": state.running,
                    "state": state.state,
                    "log_source": state.log_source,
                    "log": list(state.log_lines),
                }
            )
        )
        return
    if not state.installed:
        print(f"not installed ({manager.kind} {state.path}); 'cloudkeep service install' adds it")
    else:
        print(f"installed: {manager.kind} {state.path}")
    running = {True: "running", False: "not running", None: "unknown"}[state.running]
    print(one_line(f"{running}: {state.state}"))
    if state.log_lines:
        print(f"last log lines ({state.log_source}):")
        for line in state.log_lines:
            print("  " + one_line(line))


@service_app.command(
    "run",
    cls=FastCommand,
    hidden=True,
    context_settings={"allow_interspersed_args": False},
)
def run_(
    command: Annotated[list[str], typer.Argument(help="The cloudkeep command to run.")],
    log_file: Annotated[
        str | None, typer.Option(help="Append stdout and stderr to this file.")
    ] = None,
    env: Annotated[
        list[str] | None, typer.Option(help="NAME=VALUE to set first (repeatable).")
    ] = None,
) -> None:
    """Run a cloudkeep command the way the Windows task does: set variables, send the
    output to a log file (pythonw.exe has none), then run it in this process."""
    from cloudkeep.errors import UserError

    for item in env or []:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise UserError(f"--env takes NAME=VALUE, not {item!r}")
        os.environ[name] = value
    if log_file:
        _log_to(Path(log_file))
    code = app(args=command, prog_name="cloudkeep", standalone_mode=False)
    if isinstance(code, int) and code:
        raise typer.Exit(code)


def _log_to(path: Path) -> None:
    """Send this process's output (Python's and its children's) to ``path``, appended;
    a file grown past ``LOG_ROTATE_BYTES`` becomes ``<name>.1`` first."""
    import logging

    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(OSError):
        if path.stat().st_size > LOG_ROTATE_BYTES:
            os.replace(path, path.with_name(path.name + ".1"))
    stream = open(path, "a", encoding="utf-8", errors="backslashreplace", buffering=1)  # noqa: SIM115
    for fd in (1, 2):
        with contextlib.suppress(OSError):
            os.dup2(stream.fileno(), fd)
    sys.stdout = sys.stderr = stream
    for handler in logging.getLogger().handlers:
        if type(handler) is logging.StreamHandler:
            handler.setStream(stream)
