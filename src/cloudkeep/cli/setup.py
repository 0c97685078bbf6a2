"""``cloudkeep setup`` (choose once, check, save) and ``cloudkeep config show|path``.

Setup asks on a terminal and takes flags for scripts (``--yes`` never asks). The
store is checked before anything is saved: it is listed, then its repository is
joined (the passphrase must open it) or created; only then are a typed passphrase
and the configuration file written.
"""

# No ``from __future__ import annotations``: Typer would compile every option's
# annotation string again each time it builds the commands.
import os
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from cloudkeep.cli.app import JsonOption, app
from cloudkeep.cli.output import error, notice, print_json
from cloudkeep.cli.params import FastCommand, FastGroup
from cloudkeep.errors import CloudkeepError, UserError

if TYPE_CHECKING:
    from cloudkeep.config import OnFailure, Retention, Schedule, UserConfig
    from cloudkeep.settings import Settings

app_config = typer.Typer(
    cls=FastGroup,
    help="Show the configuration file and where each setting comes from.",
    no_args_is_help=True,
)
app.add_typer(app_config, name="config")

#: What a first setup proposes: every hour, and a bounded store.
DEFAULT_SCHEDULE = "hourly"
DEFAULT_RETENTION = "keep-hourly 24, keep-daily 7, keep-weekly 4, keep-monthly 12"
_GLOBAL_OPTIONS = ("data", "store", "passphrase_file", "device_name")


def _given(ctx: typer.Context, name: str) -> str | None:
    """A global option's value when an option or the environment gave it."""
    root = ctx.find_root()
    source = root.get_parameter_source(name)
    if source is None or source.name not in ("COMMANDLINE", "ENVIRONMENT"):
        return None
    value = root.params.get(name)
    return str(value) if value else None


def _source(ctx: typer.Context, name: str, variable: str) -> str | None:
    """ "option" or "environment (VARIABLE)" when the global option came from there."""
    source = ctx.find_root().get_parameter_source(name)
    if source is not None and source.name == "COMMANDLINE":
        return "option"
    if source is not None and source.name == "ENVIRONMENT":
        return f"environment ({variable})"
    return None


def default_data_folder(settings: "Settings") -> str | None:
    """The data folder setup proposes: the configured one, else the one the settings
    resolve to (the Pieces OS folder found on this system), if it exists."""
    if settings.config.data:
        return settings.config.data
    return str(settings.data) if settings.data is not None and settings.data.exists() else None


# ------------------------------------------------------------------------ setup
@dataclass(frozen=True)
class _Key:
    """The passphrase setup uses: how it was chosen, and the text or file."""

    kind: str  # generated, file, typed, kept
    passphrase: str | None = None
    file: Path | None = None


@app.command(cls=FastCommand)
def setup(
    ctx: typer.Context,
    data: Annotated[str | None, typer.Option(help="The data folder (or SQLite file).")] = None,
    store: Annotated[str | None, typer.Option(help="The store URL (checked first).")] = None,
    passphrase_file: Annotated[
        str | None, typer.Option(help="Use the passphrase in this file (it stays there).")
    ] = None,
    generate_key: Annotated[
        bool,
        typer.Option(
            "--generate-key", help="A random passphrase, kept in the config dir (mode 0600)."
        ),
    ] = False,
    schedule: Annotated[
        str | None,
        typer.Option(help="hourly, daily, 'every 30m', 'at 02:00,14:30' or off."),
    ] = None,
    keep_last: Annotated[
        str | None, typer.Option(metavar="N", help="Keep the last N backups. (or unlimited).")
    ] = None,
    keep_hourly: Annotated[
        str | None, typer.Option(metavar="N", help="Keep N hourly backups. (or unlimited).")
    ] = None,
    keep_daily: Annotated[
        str | None, typer.Option(metavar="N", help="Keep N daily backups. (or unlimited).")
    ] = None,
    keep_weekly: Annotated[
        str | None, typer.Option(metavar="N", help="Keep N weekly backups. (or unlimited).")
    ] = None,
    keep_monthly: Annotated[
        str | None, typer.Option(metavar="N", help="Keep N monthly backups. (or unlimited).")
    ] = None,
    keep_yearly: Annotated[
        str | None, typer.Option(metavar="N", help="Keep N yearly backups. (or unlimited).")
    ] = None,
    keep_within: Annotated[
        str | None, typer.Option(help="Keep every backup within this time, e.g. 30d, 1y6m.")
    ] = None,
    on_failure_command: Annotated[
        str | None,
        typer.Option(help="Run this command when a scheduled backup fails ('' for none)."),
    ] = None,
    on_failure_webhook: Annotated[
        str | None,
        typer.Option(help="POST to this http(s) URL when a scheduled backup fails ('' for none)."),
    ] = None,
    credential: Annotated[
        list[str] | None,
        typer.Option(
            help="Save this store credential (e.g. AWS_SECRET_ACCESS_KEY) from the "
            "environment into the config file (mode 0600). Repeatable."
        ),
    ] = None,
    device_name: Annotated[
        str | None, typer.Option(help="This device's name in the backup list.")
    ] = None,
    yes: Annotated[
        bool,
        typer.Option(
            "--yes",
            "-y",
            help="Never ask: use the flags, the current settings "
            "and the defaults; fail if something required is missing.",
        ),
    ] = False,
) -> None:
    """Set up once: data folder, store (checked), key, schedule and retention.

    Saved to the configuration file every command reads; run it again to change it.
    """
    from cloudkeep.config import config_path, save_config

    settings: Settings = ctx.obj
    current = settings.config
    first = not config_path(settings.config_dir).exists()
    ask = not yes and sys.stdin.isatty()
    if passphrase_file and generate_key:
        raise UserError("give --passphrase-file or --generate-key, not both")
    credentials = _credentials(current.credentials, credential or [])
    data_path = _choose_data(ask, data or _given(ctx, "data") or default_data_folder(settings))
    url, exists = _choose_store(ask, store or _given(ctx, "store") or current.store, settings)
    key = _choose_key(ctx, ask, exists, passphrase_file, generate_key, settings)
    chosen_schedule = _choose_schedule(ask, schedule, current.schedule, first)
    retention = _choose_retention(
        ask,
        current.retention,
        first,
        {
            **_counts(
                last=keep_last,
                hourly=keep_hourly,
                daily=keep_daily,
                weekly=keep_weekly,
                monthly=keep_monthly,
                yearly=keep_yearly,
            ),
            "within": keep_within,
        },
    )
    on_failure = _on_failure(current.on_failure, on_failure_command, on_failure_webhook)
    # Everything is chosen and valid: only now is the repository joined or created.
    key, created, repository_id = _connect(ask, exists, key, settings, data_path, url)
    saved_key = _save_key(key, settings)
    config = current.with_changes(
        data=str(data_path),
        store=url,
        passphrase_file=str(saved_key) if saved_key else None,
        device_name=device_name or _given(ctx, "device_name") or current.device_name,
        schedule=chosen_schedule,
        retention=retention,
        on_failure=on_failure,
        credentials=credentials,
    )
    path = save_config(settings.config_dir, config)
    _summary(path, config, key, saved_key or settings.default_key_file, created, repository_id)


def _credentials(current: dict[str, str], names: list[str]) -> dict[str, str]:
    from cloudkeep.config import CREDENTIAL_VARIABLES

    saved = dict(current)
    for name in names:
        if name not in CREDENTIAL_VARIABLES:
            raise UserError(
                f"--credential {name[:40]!r} is not a store credential "
                f"(one of: {', '.join(sorted(CREDENTIAL_VARIABLES))})"
            )
        value = os.environ.get(name)
        if not value:
            raise UserError(f"--credential {name}: {name} is not set in the environment")
        saved[name] = value
    return saved


def _choose_data(ask: bool, proposed: str | None) -> Path:
    while True:
        text = proposed
        if ask:
            text = typer.prompt("Data folder to back up", default=proposed or None)
        if not text:
            raise UserError("no data folder given or found: pass --data PATH")
        path = Path(text).expanduser().absolute()
        if path.exists():
            return path
        if not ask:
            raise UserError(f"the data folder {path} does not exist")
        error(f"cloudkeep: {path} does not exist")
        proposed = None


def _choose_store(ask: bool, proposed: str | None, settings: "Settings") -> tuple[str, bool]:
    """The store URL and whether it holds a repository, once it was listed."""
    from cloudkeep.settings import default_store_dir
    from cloudkeep.workspace import Workspace

    if proposed is None and ask:
        proposed = default_store_dir().as_uri()
    while True:
        url = typer.prompt("Store URL", default=proposed) if ask else proposed
        if not url:
            raise UserError("no store given: pass --store URL (file:///path, s3://bucket/prefix…)")
        url = _absolute(url)
        try:
            return url, Workspace(replace(settings, store=url), notice).probe_store()
        except CloudkeepError as exc:
            failure = _store_failure(url, exc)
            if not ask:
                raise failure from None
            error(f"cloudkeep: error: {failure}")
            proposed = url


def _absolute(url: str) -> str:
    """A plain folder path as the ``file:`` URL of its absolute path: the configuration
    is read from any working folder."""
    from cloudkeep.storage.url import file_url, supported_schemes

    if "://" in url or url.split(":", 1)[0].lower() in (*supported_schemes(), "memory"):
        return url  # a URL, or a mistyped one that opening it explains

    return file_url(os.path.abspath(os.path.expanduser(url.strip())))


def _store_failure(url: str, exc: CloudkeepError) -> CloudkeepError:
    """``exc`` naming what to do when the store's credentials are plainly missing."""
    gcs: tuple[str, ...] = ("GOOGLE_APPLICATION_CREDENTIALS",)
    if os.environ.get("GOOGLE_OAUTH_ACCESS_TOKEN") or "anonymous=true" in url.lower():
        gcs = ()  # a static token, or an emulator that needs none
    needed = {
        "s3": ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"),
        "azblob": ("AZURE_STORAGE_ACCOUNT",),
        "gcs": gcs,
        "gs": gcs,
    }.get(url.split("://", 1)[0].lower(), ())
    missing = [name for name in needed if not os.environ.get(name)]
    if not missing:
        return exc
    return type(exc)(
        f"{exc} ({', '.join(missing)} not set: set the store's credentials in the "
        "environment, and add --credential NAME to save them)"
    )


def _choose_key(
    ctx: typer.Context,
    ask: bool,
    exists: bool,
    passphrase_file: str | None,
    generate_key: bool,
    settings: "Settings",
) -> _Key:
    from cloudkeep.cli.key import read_passphrase_file

    given_file = passphrase_file or _given(ctx, "passphrase_file")
    if given_file:
        path = Path(given_file).expanduser().absolute()
        return _Key("file", read_passphrase_file(str(path)), path)
    default_key = settings.default_key_file
    if generate_key:
        if exists and not default_key.exists():
            raise UserError(
                "the store already holds a repository, which a new key cannot open: give "
                "its passphrase (--passphrase-file, or type it), or 'cloudkeep key recover'"
            )
        return _Key("generated")
    if settings.passphrase and settings.passphrase_file is None:  # CLOUDKEEP_PASSPHRASE
        return _Key("typed", settings.passphrase)
    configured = settings.config.passphrase_file
    kept = None
    if configured and settings.passphrase_problem is None:
        kept = _Key("kept", settings.passphrase, Path(configured).expanduser().absolute())
    elif default_key.exists():
        kept = _Key("generated")
    if not ask:
        return kept or _Key("generated")
    return _ask_key(exists, kept, default_key)


def _ask_key(exists: bool, kept: "_Key | None", default_key: Path) -> _Key:
    from cloudkeep.cli.key import ask_new_passphrase

    choices = {}
    if kept is not None:
        choices["keep"] = f"keep the current one ({kept.file or default_key})"
    if not exists and kept is None:
        choices["generate"] = f"a random passphrase, kept in {default_key} (recommended)"
    choices["type"] = "type a passphrase"
    for name, meaning in choices.items():
        notice(f"{name}: {meaning}")
    answer = ""
    while answer not in choices:
        answer = str(typer.prompt(f"Key ({', '.join(choices)})", default=next(iter(choices))))
    if answer == "keep" and kept is not None:
        return kept
    if answer == "generate":
        return _Key("generated")
    if exists:
        return _Key("typed", str(typer.prompt("Passphrase of the repository", hide_input=True)))
    return _Key("typed", ask_new_passphrase("Passphrase"))


def _connect(
    ask: bool, exists: bool, key: _Key, settings: "Settings", data: Path, url: str
) -> tuple[_Key, bool, str]:
    """Join or create the repository with ``key``: (the key that opened it, whether it
    was created, its id). On a terminal a wrong passphrase is asked again."""
    from cloudkeep.errors import KeyMissing, WrongPassphrase
    from cloudkeep.workspace import Workspace

    while True:
        chosen = replace(
            settings,
            data=data,
            store=url,
            data_found_at="",
            passphrase=key.passphrase,
            passphrase_file=key.file if key.kind in ("file", "kept") else None,
            passphrase_problem=None,
        )
        try:
            created, repository_id = Workspace(chosen, notice).set_up_repository()
            return key, created, repository_id
        except (WrongPassphrase, KeyMissing) as exc:
            if not ask or not exists:
                raise
            error(f"cloudkeep: error: {exc}")
            key = _Key("typed", str(typer.prompt("Passphrase of the repository", hide_input=True)))


def _choose_schedule(
    ask: bool, given: str | None, current: "Schedule | None", first: bool
) -> "Schedule | None":
    from cloudkeep.config import Schedule

    if given is not None:
        return Schedule.parse(given)
    proposed = str(current) if current else (DEFAULT_SCHEDULE if first else "off")
    if not ask:
        return current if current or not first else Schedule.parse(proposed)
    while True:
        text = typer.prompt(
            "Schedule (hourly, daily, every 30m, at 02:00,14:30, off)", default=proposed
        )
        if current is not None and text == proposed:
            return current  # its jitter too
        try:
            return Schedule.parse(text)
        except UserError as exc:
            error(f"cloudkeep: error: {exc}")


def _counts(**texts: str | None) -> dict[str, int | None]:
    """The keep counts given as options (whole numbers or ``unlimited``); None if not."""
    from cloudkeep.cli.forget import keep_count

    return {
        rule: None if text is None else keep_count(f"--keep-{rule}", text)
        for rule, text in texts.items()
    }


def _choose_retention(
    ask: bool, current: "Retention", first: bool, flags: dict[str, Any]
) -> "Retention":
    from cloudkeep.config import Retention

    policy = Retention.parse(DEFAULT_RETENTION) if first else current
    changes: dict[str, Any] = {
        name: value or (None if name == "within" else 0)
        for name, value in flags.items()
        if value is not None
    }
    if changes:  # the rules given are the policy, as forget's flags are
        return Retention(**changes)
    if not ask:
        return policy
    while True:
        text = typer.prompt(
            "Retention (keep-last/-hourly/-daily/-weekly/-monthly/-yearly N, "
            "keep-within 30d; or: keep everything)",
            default=str(policy),
        )
        try:
            return Retention.parse(text)
        except UserError as exc:
            error(f"cloudkeep: error: {exc}")


def _on_failure(current: "OnFailure", command: str | None, webhook: str | None) -> "OnFailure":
    import shlex

    from cloudkeep.config import OnFailure

    words = current.command
    if command is not None:
        try:
            words = tuple(shlex.split(command, posix=os.name != "nt"))
        except ValueError as exc:
            raise UserError(f"--on-failure-command: {exc}") from None
    hook = current.webhook if webhook is None else (webhook or None)
    return OnFailure(command=words, webhook=hook)


def _save_key(key: _Key, settings: "Settings") -> Path | None:
    """The passphrase file the configuration names (None: the default key file); a typed
    passphrase is saved first, so scheduled backups can run unattended."""
    from cloudkeep.workspace import save_passphrase

    if key.kind == "typed" and key.passphrase:
        path = save_passphrase(settings.config_dir, key.passphrase)
        notice(
            f"saved the passphrase to {path} (mode 0600), so that scheduled backups run unattended"
        )
        return path
    return key.file


def _summary(
    path: Path,
    config: "UserConfig",
    key: _Key,
    key_path: Path,
    created: bool,
    repository_id: str,
) -> None:
    what = "created" if created else "joined"
    rows = [
        ("data", config.data or ""),
        ("store", f"{config.store} ({what} repository {repository_id[:12]}…)"),
        ("key", f"{key_path} ({'generated' if key.kind == 'generated' else 'passphrase file'})"),
        ("schedule", _schedule_text(config.schedule)),
        ("retention", str(config.retention)),
    ]
    if config.device_name:
        rows.append(("device name", config.device_name))
    if config.on_failure.command:
        rows.append(("on failure", " ".join(config.on_failure.command)))
    if config.on_failure.webhook:  # its path is often the token: never printed whole
        from cloudkeep.config import masked_webhook

        rows.append(("on failure", f"POST {masked_webhook(config.on_failure.webhook)}"))
    if config.credentials:
        rows.append(("credentials", ", ".join(sorted(config.credentials))))
    print(f"saved {path}:")
    for name, value in rows:
        print(f"  {name:<12} {value}")
    print("keep safe: the key file (or the passphrase) and the recovery text; without them")
    print("nobody, you included, can read the backups")
    print("next:")
    print("  cloudkeep backup                  back up now")
    print("  cloudkeep service install         back up on the schedule, from login")
    print("  cloudkeep key export --output recovery.txt   then print it, keep it offline")


def _schedule_text(schedule: "Schedule | None") -> str:
    if schedule is None:
        return "off (back up with 'cloudkeep backup')"
    from cloudkeep.config import format_duration

    return f"{schedule} (jitter {format_duration(schedule.jitter)})"


# ----------------------------------------------------------------------- config
@app_config.command("path", cls=FastCommand)
def config_path_command(ctx: typer.Context) -> None:
    """Print the configuration file's path."""
    from cloudkeep.config import config_path

    print(config_path(ctx.obj.config_dir))


@app_config.command("show", cls=FastCommand)
def config_show(ctx: typer.Context, json: JsonOption = False) -> None:
    """The configuration file's settings (no secrets), and where each value in effect comes from."""
    from cloudkeep.config import config_path

    settings: Settings = ctx.obj
    path = config_path(settings.config_dir)
    shown = settings.config.shown()
    effective = _effective(ctx, settings)
    if json:
        import json as json_text

        print_json(
            json_text.dumps(
                {
                    "path": str(path),
                    "exists": path.exists(),
                    "settings": shown,
                    "effective": {
                        name: {"value": value, "source": source}
                        for name, (value, source) in effective.items()
                    },
                }
            )
        )
        return
    import tomli_w

    if path.exists():
        print(f"# {path}")
        print(tomli_w.dumps(shown).rstrip() or "# (empty)")
    else:
        print(f"# {path} does not exist yet: run 'cloudkeep setup'")
    print()
    print("# in effect")
    for name, (value, source) in effective.items():
        print(f"{name:<12} {value}  ({source})")


def _effective(ctx: typer.Context, settings: "Settings") -> dict[str, tuple[str, str]]:
    """(value, where it comes from) of data, store, passphrase and device name."""
    config = settings.config
    found: dict[str, tuple[str, str]] = {}
    for name, variable, configured, default in (
        ("data", "CLOUDKEEP_DATA", config.data, "default"),
        ("store", "CLOUDKEEP_STORE", config.store, "default"),
        ("device name", "CLOUDKEEP_DEVICE_NAME", config.device_name, "default: the host name"),
    ):
        option = name.replace(" ", "_")
        value = str(getattr(settings, option))
        if option == "store":  # no password or token a hand-written URL may hold
            from cloudkeep.storage.url import describe_store_url

            value = describe_store_url(value)
        source = _source(ctx, option, variable)
        found[name] = (value, source or ("file" if configured else default))
    found["passphrase"] = _passphrase_source(ctx, settings)
    return found


def _passphrase_source(ctx: typer.Context, settings: "Settings") -> tuple[str, str]:
    """Where the passphrase is read from (never the passphrase itself)."""
    source = _source(ctx, "passphrase_file", "CLOUDKEEP_PASSPHRASE_FILE")
    if settings.passphrase_file is not None:
        state = " (cannot be read)" if settings.passphrase_problem else ""
        return f"file {settings.passphrase_file}{state}", source or "file"
    if settings.passphrase is not None:
        return "the passphrase itself (not shown)", "environment (CLOUDKEEP_PASSPHRASE)"
    key_file = settings.default_key_file
    state = "" if key_file.exists() else " (made by the first backup or setup)"
    return f"file {key_file}{state}", "default"
