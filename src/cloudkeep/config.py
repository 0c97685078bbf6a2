"""The user's configuration file: what ``cloudkeep setup`` saves and every command reads.

``<config dir>/config.toml`` (TOML, mode 0600: it may hold store credentials).
Options and ``CLOUDKEEP_*`` variables override each value; a missing file is an
empty configuration. Every value is validated when the file is read, so a typo
is one line naming the file and the setting, never a failure at 3 a.m. in the
middle of a scheduled backup.

This module holds the data types of the settings (``Schedule``, ``Retention``,
``OnFailure``) and their text forms; what is done with them lives elsewhere
(the scheduler, ``forget``).
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field, fields, replace
from datetime import time, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cloudkeep.errors import ConfigurationError
from cloudkeep.platform import write_private_file

CONFIG_FILE = "config.toml"

# Environment variables a configuration may supply to the store's client (the
# store URL never carries credentials). Only these: a configuration must not be
# able to set PATH, LD_PRELOAD or cloudkeep's own settings behind the user's back.
CREDENTIAL_VARIABLES = frozenset(
    {
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_REGION",
        "AWS_DEFAULT_REGION",
        "AZURE_STORAGE_ACCOUNT",
        "AZURE_STORAGE_KEY",
        "AZURE_STORAGE_CONNECTION_STRING",
        "GOOGLE_APPLICATION_CREDENTIALS",
        "GOOGLE_OAUTH_ACCESS_TOKEN",
        "CLOUDKEEP_WEBDAV_USER",
        "CLOUDKEEP_WEBDAV_PASSWORD",
    }
)
# Of those, the ones shown by ``config show`` (the rest are masked).
NOT_SECRET = frozenset({"AWS_ACCESS_KEY_ID", "AWS_REGION", "AWS_DEFAULT_REGION"})

_DURATION = re.compile(r"^\s*(\d+)\s*(s|m|h|d)\s*$")
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
# restic's --keep-within: years, months, days and hours, each optional, in this order.
_RESTIC_DURATION = re.compile(r"^(?:(\d+)y)?(?:(\d+)m)?(?:(\d+)d)?(?:(\d+)h)?$")
_TIME_OF_DAY = re.compile(r"^([01]?\d|2[0-3]):([0-5]\d)$")
MIN_INTERVAL = timedelta(seconds=1)  # tests use seconds; a person writes "hourly"
MAX_INTERVAL = timedelta(days=31)
MAX_KEEP = 1_000_000
#: A keep count meaning "every one" (restic's ``--keep-daily unlimited``).
UNLIMITED = -1


def parse_count(text: str, what: str) -> int:
    """A keep count written as text: a whole number, or ``unlimited`` (``UNLIMITED``)."""
    word = text.strip().lower()
    if word == "unlimited":
        return UNLIMITED
    if not word.isdigit() or int(word) > MAX_KEEP:
        raise ConfigurationError(f"{what} takes a whole number from 0 to {MAX_KEEP}, or unlimited")
    return int(word)


def parse_duration(text: str, what: str) -> timedelta:
    """``90s``, ``30m``, ``2h`` or ``1d`` as a timedelta; ConfigurationError naming ``what``."""
    match = _DURATION.fullmatch(text.strip().lower())
    if not match:
        raise ConfigurationError(
            f"{what} {text[:40]!r} is not a duration: write a number and s, m, h or d (e.g. 30m)"
        )
    return timedelta(seconds=int(match[1]) * _DURATION_UNITS[match[2]])


def format_duration(value: timedelta) -> str:
    """The shortest exact text ``parse_duration`` reads back (``1h``, ``90s``)."""
    seconds = int(value.total_seconds())
    for unit in ("d", "h", "m"):
        size = _DURATION_UNITS[unit]
        if seconds and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


@dataclass(frozen=True)
class Schedule:
    """When the server backs up on its own: every ``every``, or at the ``at`` times of
    day (local time), each run moved by a random delay of up to ``jitter``.

    Text forms (``parse``/``str``): ``hourly``, ``daily``, ``every 30m``,
    ``at 02:00,14:30``; ``off`` is no schedule (``parse`` returns None).
    """

    every: timedelta | None = None
    at: tuple[time, ...] = ()
    jitter: timedelta = timedelta(0)

    def __post_init__(self) -> None:
        if (self.every is None) == (not self.at):
            raise ConfigurationError("a schedule has either an interval or times of day")
        if self.every is not None and not MIN_INTERVAL <= self.every <= MAX_INTERVAL:
            raise ConfigurationError("a schedule's interval must be between 1s and 31d")
        if self.jitter < timedelta(0) or (self.every is not None and self.jitter > self.every):
            raise ConfigurationError("a schedule's jitter must be between 0 and its interval")

    @classmethod
    def parse(cls, text: str, jitter: str | None = None) -> Schedule | None:
        """The schedule ``text`` names, or None for ``off``; ConfigurationError otherwise."""
        words = text.strip().lower()
        spread = parse_duration(jitter, "the schedule's jitter") if jitter else None
        if words in ("off", "none", "never", ""):
            return None
        if words in ("hourly", "daily"):
            every = timedelta(hours=1) if words == "hourly" else timedelta(days=1)
            return cls(every=every, jitter=spread if spread is not None else every / 12)
        if words.startswith("every "):
            every = parse_duration(words[6:], "the schedule's interval")
            default = min(every / 12, timedelta(minutes=10))
            return cls(every=every, jitter=spread if spread is not None else default)
        if words.startswith("at "):
            times = []
            for part in words[3:].split(","):
                match = _TIME_OF_DAY.fullmatch(part.strip())
                if not match:
                    raise ConfigurationError(
                        f"the schedule's time {part.strip()[:20]!r} is not HH:MM (e.g. 02:30)"
                    )
                times.append(time(int(match[1]), int(match[2])))
            return cls(
                at=tuple(sorted(set(times))),
                jitter=spread if spread is not None else timedelta(minutes=5),
            )
        raise ConfigurationError(
            f"the schedule {text[:40]!r} is not one of: hourly, daily, every <duration> "
            "(e.g. every 30m), at HH:MM[,HH:MM...], off"
        )

    def __str__(self) -> str:
        if self.every is not None:
            if self.every == timedelta(hours=1):
                return "hourly"
            if self.every == timedelta(days=1):
                return "daily"
            return f"every {format_duration(self.every)}"
        return "at " + ",".join(moment.strftime("%H:%M") for moment in self.at)


@dataclass(frozen=True)
class Retention:
    """Which backups ``forget`` keeps, with restic's ``--keep-*`` meanings; a zero or
    None field keeps nothing by that rule, ``UNLIMITED`` (-1; ``unlimited`` in the
    file) keeps the newest of every hour, day... and an empty policy keeps everything."""

    last: int = 0
    hourly: int = 0
    daily: int = 0
    weekly: int = 0
    monthly: int = 0
    yearly: int = 0
    within: str | None = None  # restic's duration: 1y2m3d4h, each part optional

    def __post_init__(self) -> None:
        for rule in ("last", "hourly", "daily", "weekly", "monthly", "yearly"):
            value = getattr(self, rule)
            if (
                isinstance(value, bool)
                or not isinstance(value, int)
                or not UNLIMITED <= value <= MAX_KEEP
            ):
                raise ConfigurationError(
                    f"keep-{rule} must be a whole number from 0 to {MAX_KEEP}, or unlimited"
                )
        if self.within is not None:
            match = _RESTIC_DURATION.fullmatch(self.within)
            if not self.within or not match:
                raise ConfigurationError(
                    f"keep-within {self.within[:40]!r} is not a duration such as 30d, 2y6m or 12h"
                )

    @classmethod
    def parse(cls, text: str) -> Retention:
        """The policy ``str`` writes (``keep-daily 7, keep-weekly unlimited``; ``keep-`` and the
        commas optional, ``=`` allowed); ``keep everything`` (or ``all``) is no rule."""
        words = text.replace(",", " ").replace("=", " ").lower().split()
        if words in ([], ["keep", "everything"], ["everything"], ["all"]):
            return cls()
        if len(words) % 2:
            raise ConfigurationError(
                f"the retention {text[:60]!r} is not rules and numbers, e.g. "
                "keep-daily 7, keep-weekly 4"
            )
        rules: dict[str, Any] = {}
        names = {item.name for item in fields(cls)}
        for rule, value in zip(words[::2], words[1::2], strict=True):
            name = rule.removeprefix("keep-")
            if name not in names or name in rules:
                raise ConfigurationError(
                    f"{rule[:20]!r} is not a retention rule (keep-last, -hourly, -daily, "
                    "-weekly, -monthly, -yearly, -within), or it is given twice"
                )
            rules[name] = value if name == "within" else parse_count(value, f"keep-{name}")
        return cls(**rules)

    @property
    def within_parts(self) -> tuple[int, int, int, int] | None:
        """keep-within as (years, months, days, hours), or None when unset."""
        if self.within is None:
            return None
        match = _RESTIC_DURATION.fullmatch(self.within)
        assert match is not None  # checked when made
        return (int(match[1] or 0), int(match[2] or 0), int(match[3] or 0), int(match[4] or 0))

    @property
    def empty(self) -> bool:
        """True when the policy names no rule (``forget`` then refuses, as restic does)."""
        return self == Retention()

    def __str__(self) -> str:
        rules = [
            f"keep-{rule} {_count_text(getattr(self, rule))}"
            for rule in ("last", "hourly", "daily", "weekly", "monthly", "yearly")
            if getattr(self, rule)
        ]
        if self.within:
            rules.append(f"keep-within {self.within}")
        return ", ".join(rules) or "keep everything"


def _count_text(count: int) -> str:
    return "unlimited" if count == UNLIMITED else str(count)


@dataclass(frozen=True)
class OnFailure:
    """What runs when a scheduled backup fails: a command (run without a shell, with
    the reason in the environment) and/or a webhook (POSTed JSON)."""

    command: tuple[str, ...] = ()
    webhook: str | None = None

    def __post_init__(self) -> None:
        # A NUL cannot be passed to a program: the hook would fail every time it runs.
        if any("\0" in word for word in self.command):
            raise ConfigurationError("on_failure.command holds a NUL character")
        if self.webhook is not None:
            parts = urlsplit(self.webhook)
            try:
                parts.port  # noqa: B018  (raises for a port out of range)
            except ValueError:
                parts = parts._replace(scheme="")
            # No space or control character: no request can be sent to such a URL.
            if (
                parts.scheme not in ("http", "https")
                or not parts.hostname
                or any(ord(char) <= 0x20 or ord(char) == 0x7F for char in self.webhook)
            ):
                raise ConfigurationError(
                    f"the failure webhook {masked_webhook(self.webhook)!r} is not an http(s) "
                    "URL (spaces and control characters are written %20...)"
                )


def masked_webhook(url: str) -> str:
    """The webhook URL as shown and logged: scheme and host only (its path or query
    is often the token that lets anyone post)."""
    parts = urlsplit(url)
    try:
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        port = ""
    hidden = "/********" if parts.path.strip("/") or parts.query else ""
    return f"{parts.scheme}://{parts.hostname or ''}{port}{hidden}"


@dataclass(frozen=True)
class UserConfig:
    """The configuration file's content; None or empty means "not configured"."""

    data: str | None = None
    store: str | None = None
    passphrase_file: str | None = None
    device_name: str | None = None
    schedule: Schedule | None = None
    retention: Retention = field(default_factory=Retention)
    on_failure: OnFailure = field(default_factory=OnFailure)
    credentials: dict[str, str] = field(default_factory=dict)

    def to_toml(self) -> dict[str, Any]:
        """The TOML document for this configuration (only what is set)."""
        document: dict[str, Any] = {}
        for name in ("data", "store", "passphrase_file", "device_name"):
            value = getattr(self, name)
            if value:
                document[name] = value
        if self.schedule is not None:
            document["schedule"] = str(self.schedule)
            document["schedule_jitter"] = format_duration(self.schedule.jitter)
        retention = {
            f"keep_{item.name}": "unlimited"
            if getattr(self.retention, item.name) == UNLIMITED
            else getattr(self.retention, item.name)
            for item in fields(Retention)
            if getattr(self.retention, item.name)
        }
        if retention:
            document["retention"] = retention
        failure: dict[str, Any] = {}
        if self.on_failure.command:
            failure["command"] = list(self.on_failure.command)
        if self.on_failure.webhook:
            failure["webhook"] = self.on_failure.webhook
        if failure:
            document["on_failure"] = failure
        if self.credentials:
            document["credentials"] = dict(sorted(self.credentials.items()))
        return document

    def shown(self) -> dict[str, Any]:
        """``to_toml`` with every secret masked (for ``config show``): the secret
        credentials, the webhook's path and query (Slack's, Discord's... are its
        token), the store URL's userinfo and secret query values."""
        document = self.to_toml()
        if "store" in document:
            from cloudkeep.storage.url import describe_store_url

            document["store"] = describe_store_url(document["store"])
        failure = document.get("on_failure", {})
        if "webhook" in failure:
            failure["webhook"] = masked_webhook(failure["webhook"])
        if "credentials" in document:
            document["credentials"] = {
                name: value if name in NOT_SECRET else "********"
                for name, value in document["credentials"].items()
            }
        return document

    def with_changes(self, **changes: Any) -> UserConfig:
        return replace(self, **changes)


def config_path(config_dir: Path) -> Path:
    return config_dir / CONFIG_FILE


def load_config(config_dir: Path) -> UserConfig:
    """The configuration in ``config_dir`` (empty when there is no file)."""
    path = config_path(config_dir)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return UserConfig()
    except OSError as exc:
        raise ConfigurationError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        document = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigurationError(f"{path} is not valid TOML: {exc}") from None
    try:
        return _from_toml(document)
    except ConfigurationError as exc:
        raise ConfigurationError(f"{path}: {exc}") from None


_TOP_LEVEL = frozenset(
    {
        "data",
        "store",
        "passphrase_file",
        "device_name",
        "schedule",
        "schedule_jitter",
        "retention",
        "on_failure",
        "credentials",
    }
)


def _text(document: dict[str, Any], name: str) -> str | None:
    value = document.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or "\0" in value:
        raise ConfigurationError(f"{name} must be a text")
    return value or None


def _path(document: dict[str, Any], name: str) -> str | None:
    """An absolute path (``~`` allowed): a relative one would name another file or
    folder from each working folder (an in-place restore would replace that one)."""
    value = _text(document, name)
    if value is not None and not os.path.isabs(os.path.expanduser(value)):
        raise ConfigurationError(
            f"{name} must be an absolute path (or start with ~), not {value[:80]!r}"
        )
    return value


def _table(document: dict[str, Any], name: str) -> dict[str, Any]:
    value = document.get(name, {})
    if not isinstance(value, dict):
        raise ConfigurationError(f"[{name}] must be a table")
    return value


def _from_toml(document: dict[str, Any]) -> UserConfig:
    unknown = sorted(set(document) - _TOP_LEVEL)
    if unknown:
        raise ConfigurationError(f"unknown setting {unknown[0]!r}")
    schedule_text = _text(document, "schedule")
    schedule = (
        Schedule.parse(schedule_text, _text(document, "schedule_jitter")) if schedule_text else None
    )
    return UserConfig(
        data=_path(document, "data"),
        store=_text(document, "store"),
        passphrase_file=_path(document, "passphrase_file"),
        device_name=_text(document, "device_name"),
        schedule=schedule,
        retention=_retention(_table(document, "retention")),
        on_failure=_on_failure(_table(document, "on_failure")),
        credentials=_credentials(_table(document, "credentials")),
    )


def _retention(table: dict[str, Any]) -> Retention:
    names = {f"keep_{item.name}": item.name for item in fields(Retention)}
    unknown = sorted(set(table) - set(names))
    if unknown:
        raise ConfigurationError(f"unknown retention rule {unknown[0]!r}")
    values: dict[str, Any] = {
        names[key]: UNLIMITED if value == "unlimited" and key != "keep_within" else value
        for key, value in table.items()
    }
    return Retention(**values)


def _on_failure(table: dict[str, Any]) -> OnFailure:
    unknown = sorted(set(table) - {"command", "webhook"})
    if unknown:
        raise ConfigurationError(f"unknown on_failure setting {unknown[0]!r}")
    command = table.get("command", [])
    if isinstance(command, str):
        raise ConfigurationError(
            'on_failure.command must be a list of words, e.g. ["notify-send", "backup failed"]'
        )
    if not isinstance(command, list) or not all(isinstance(word, str) for word in command):
        raise ConfigurationError("on_failure.command must be a list of words")
    webhook = table.get("webhook")
    if webhook is not None and not isinstance(webhook, str):
        raise ConfigurationError("on_failure.webhook must be a text")
    return OnFailure(command=tuple(command), webhook=webhook or None)


def _credentials(table: dict[str, Any]) -> dict[str, str]:
    for name, value in table.items():
        if name not in CREDENTIAL_VARIABLES:
            raise ConfigurationError(
                f"[credentials] may name only store credentials, not {name[:40]!r} "
                f"(allowed: {', '.join(sorted(CREDENTIAL_VARIABLES))})"
            )
        if not isinstance(value, str) or "\0" in value:
            raise ConfigurationError(f"credentials.{name} must be a text")
    return dict(table)


def save_config(config_dir: Path, config: UserConfig) -> Path:
    """Write ``config`` atomically, readable by this user only; returns the file."""
    import tomli_w

    header = (
        "# cloudkeep configuration, written by `cloudkeep setup`.\n"
        "# Options and CLOUDKEEP_* environment variables override these values.\n"
    )
    text = header + tomli_w.dumps(config.to_toml())
    path = config_path(config_dir)
    config_dir.mkdir(parents=True, exist_ok=True)
    write_private_file(path, text.encode("utf-8"))
    return path


def export_credentials(config: UserConfig, environ: dict[str, str] | None = None) -> None:
    """Put the configured store credentials into the environment, where the store's
    client reads them; a variable already set wins (the environment overrides)."""
    env = os.environ if environ is None else environ
    for name, value in config.credentials.items():
        env.setdefault(name, value)
