"""Where the data is, where it goes, and how it is unlocked.

Resolved once per command from options, then environment variables, then the
configuration file (``config.py``, written by ``cloudkeep setup``), then the
defaults: the Pieces OS data folder where this system keeps it (the first of
``platform.pieces_data_folders`` that exists; none is ever made up) and a local
"cloud" folder under the user's data directory.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from cloudkeep.config import UserConfig, export_credentials, load_config
from cloudkeep.errors import ConfigurationError, DataNotFound
from cloudkeep.platform import (
    MODES_ENFORCED,
    DataCandidate,
    pieces_data_folders,
    user_folders,
)

_Number = TypeVar("_Number", int, float)


def env_number(
    environ: Mapping[str, str] | None,
    name: str,
    default: _Number,
    parse: Callable[[str], _Number],
    valid: Callable[[_Number], bool],
    rule: str,
) -> _Number:
    """The number in environment variable ``name`` (``default`` when unset or blank);
    ``ConfigurationError`` in one line when it does not parse or breaks ``rule``."""
    env = os.environ if environ is None else environ
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = parse(raw)
    except ValueError:
        what = "whole number" if parse is int else "number"
        raise ConfigurationError(f"{name}={raw!r} is not a {what}") from None
    if not valid(value):
        raise ConfigurationError(f"{name} must be {rule}")
    return value


APP = "cloudkeep"


def _user_dir(kind: str) -> Path:
    """This user's default ``config``, ``cache`` or ``data`` folder of the app."""
    return Path(getattr(user_folders(APP), kind))


def default_store_dir() -> Path:
    return _user_dir("data") / "cloud"


def find_data(candidates: tuple[DataCandidate, ...]) -> DataCandidate | None:
    """The first candidate that exists as a folder (through a symlink too)."""
    return next((candidate for candidate in candidates if candidate.path.is_dir()), None)


@dataclass(frozen=True)
class Settings:
    # The data path: given (option, environment, config file), or found among
    # ``data_candidates`` (then ``data_found_at`` says which), or None.
    data: Path | None
    store: str
    passphrase: str | None = None
    device_name: str = ""
    config_dir: Path = field(default_factory=lambda: _user_dir("config"))
    cache_dir: Path = field(default_factory=lambda: _user_dir("cache"))
    # Where ``data`` was found ("the macOS location"); "" when it was given.
    data_found_at: str = ""
    # This system's Pieces OS data folders, most likely first (see ``find_data``).
    data_candidates: tuple[DataCandidate, ...] = ()
    # Where the passphrase was read from, if a file (its permissions are checked).
    passphrase_file: Path | None = None
    # The configuration file as read (schedule, retention, failure hooks).
    config: UserConfig = field(default_factory=UserConfig)
    # Why the passphrase file cannot be read, when ``resolve`` was told to go on
    # without it (setup and the key commands repair exactly that); raised when needed.
    passphrase_problem: str | None = None

    @classmethod
    def resolve(
        cls,
        data: str | Path | None = None,
        store: str | None = None,
        passphrase_file: str | Path | None = None,
        device_name: str | None = None,
        environ: dict[str, str] | None = None,
        passphrase_optional: bool = False,
    ) -> Settings:
        env = os.environ if environ is None else environ
        config_dir = Path(env.get("CLOUDKEEP_CONFIG_DIR") or _user_dir("config"))
        cache_dir = Path(env.get("CLOUDKEEP_CACHE_DIR") or _user_dir("cache"))
        config = load_config(config_dir)
        if environ is None:  # a real run: the store's client reads them from there
            export_credentials(config)
        data_value = data or env.get("CLOUDKEEP_DATA") or config.data
        candidates = pieces_data_folders(env)
        found = None if data_value else find_data(candidates)
        store_value = (
            store or env.get("CLOUDKEEP_STORE") or config.store or default_store_dir().as_uri()
        )
        passphrase = None
        passphrase_path = None
        problem = None
        file_value = passphrase_file or env.get("CLOUDKEEP_PASSPHRASE_FILE")
        if not file_value and not env.get("CLOUDKEEP_PASSPHRASE"):
            file_value = config.passphrase_file
        if file_value:
            passphrase_path = Path(file_value).expanduser().absolute()
            try:
                passphrase = _read_passphrase_file(passphrase_path)
            except ConfigurationError as exc:
                if not passphrase_optional:
                    raise
                problem = str(exc)
        elif env.get("CLOUDKEEP_PASSPHRASE"):
            passphrase = env["CLOUDKEEP_PASSPHRASE"]
        return cls(
            data=(
                Path(data_value).expanduser().absolute()
                if data_value
                else (found.path if found else None)
            ),
            store=store_value,
            passphrase=passphrase,
            device_name=(
                device_name
                or env.get("CLOUDKEEP_DEVICE_NAME")
                or config.device_name
                or socket.gethostname()
            ),
            config_dir=config_dir,
            cache_dir=cache_dir,
            data_found_at=found.where if found else "",
            data_candidates=candidates,
            passphrase_file=passphrase_path,
            config=config,
            passphrase_problem=problem,
        )

    @property
    def default_key_file(self) -> Path:
        return self.config_dir / "repository.key"

    @property
    def data_given(self) -> bool:
        """Whether the data path was chosen (option, environment, config file), not found."""
        return self.data is not None and not self.data_found_at

    def no_data(self) -> DataNotFound:
        """The error of a command that needs a data folder when none is set or found."""
        looked = ", ".join(f"{c.path} ({c.where})" for c in self.data_candidates)
        return DataNotFound(
            "no data folder is set and no Pieces OS data folder exists at "
            f"{looked or 'a known place on this system'}: choose one with --data PATH "
            "(or CLOUDKEEP_DATA), or run 'cloudkeep setup'"
        )


def _read_passphrase_file(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8").rstrip("\r\n")
    except FileNotFoundError:
        raise ConfigurationError(f"the passphrase file {path} does not exist") from None
    except OSError as exc:
        raise ConfigurationError(
            f"cannot read the passphrase file {path}: {exc.strerror}"
        ) from None
    if not text:
        raise ConfigurationError(f"the passphrase file {path} is empty")
    return text


_WARNED_KEY_FILES: set[Path] = set()


def key_file_warning(path: Path) -> str | None:
    """One line if ``path`` (a key or passphrase file) is open to group or others."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return None
    if not MODES_ENFORCED or not mode & 0o077:
        return None
    return (
        f"warning: the key file {path} is open to other users (mode {mode & 0o777:03o}): "
        f"whoever reads it can decrypt your backups; run `chmod 600 {path}`"
    )


def warn_if_exposed(path: Path, notice: Callable[[str], None]) -> None:
    """``notice`` the key file warning, once per file and process."""
    if path in _WARNED_KEY_FILES:
        return
    warning = key_file_warning(path)
    if warning is not None:
        _WARNED_KEY_FILES.add(path)
        notice(warning)
