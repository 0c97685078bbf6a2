"""Linux: a systemd user unit, started at login by the user's own service manager."""

from __future__ import annotations

import posixpath
from collections.abc import Mapping
from pathlib import Path

from cloudkeep.platform.service._common import (
    Outcome,
    Runner,
    ServiceError,
    ServiceSpec,
    ServiceState,
    check_spec,
    run_command,
    write_if_changed,
)

UNIT = "cloudkeep.service"
#: Seconds between a crash and the restart.
RESTART_SEC = 10
#: Seconds a stopping server has to cancel its jobs cleanly before it is killed.
STOP_TIMEOUT_SEC = 30
#: What systemd refuses in the program's path ("special characters"), quoted or not.
_UNSAFE_IN_PROGRAM = frozenset("\"'\\")
_ENABLE = f"systemctl --user daemon-reload && systemctl --user enable --now {UNIT}"


def unit_path(environ: Mapping[str, str], home: str) -> Path:
    """Where the user's own units live: ``$XDG_CONFIG_HOME/systemd/user`` (an absolute
    value only, as the XDG specification says), else ``~/.config/systemd/user``."""
    base = environ.get("XDG_CONFIG_HOME", "")
    if not posixpath.isabs(base):
        base = posixpath.join(home, ".config")
    return Path(base, "systemd", "user", UNIT)


def quote(word: str) -> str:
    """One word of a command line or setting as systemd reads it back: in double
    quotes, backslash and quote escaped, ``%`` (specifiers) doubled."""
    escaped = word.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%")
    return f'"{escaped}"'


def exec_line(argv: tuple[str, ...]) -> str:
    """``ExecStart=``'s value: every word quoted; in the arguments (not the program,
    which systemd never expands) ``$`` doubled, so no variable is expanded."""
    return " ".join([quote(argv[0]), *(quote(word).replace("$", "$$") for word in argv[1:])])


def unit_text(spec: ServiceSpec) -> str:
    """The unit file that runs ``spec`` at login and restarts it when it fails."""
    check_spec(spec)
    if any(char in spec.argv[0] for char in _UNSAFE_IN_PROGRAM):
        raise ServiceError(
            f"systemd runs no program whose path holds a quote or backslash: {spec.argv[0]}; "
            "install cloudkeep where the path has none"
        )
    lines = [
        "# Written by `cloudkeep service install`; `cloudkeep service uninstall` removes it.",
        "[Unit]",
        f"Description={spec.description.replace('%', '%%')}",
        "",
        "[Service]",
        "Type=exec",
        f"ExecStart={exec_line(spec.argv)}",
        *(f"Environment={quote(f'{name}={value}')}" for name, value in spec.environment.items()),
        # A path setting: taken as it is (no quotes), only specifiers escaped.
        f"WorkingDirectory={str(spec.working_dir).replace('%', '%%')}",
        "Restart=on-failure",
        f"RestartSec={RESTART_SEC}",
        f"TimeoutStopSec={STOP_TIMEOUT_SEC}",
        "",
        "[Install]",
        "WantedBy=default.target",
        "",
    ]
    return "\n".join(lines)


class SystemdUserService:
    """``cloudkeep.service`` in the user's unit folder, driven by ``systemctl --user``."""

    kind = "systemd user unit"
    #: The journal keeps the output; the unit sets the environment itself.
    keeps_output = True
    carries_environment = True

    def __init__(self, path: Path, runner: Runner = run_command) -> None:
        self.path = path
        self.location = str(path)
        self.runner = runner

    def interpreter(self, python: str) -> str:
        return python

    def render(self, spec: ServiceSpec) -> str:
        return unit_text(spec)

    def _systemctl(self, *args: str) -> tuple[int, str, str]:
        done = self.runner(["systemctl", "--user", *args])
        return done.returncode, done.stdout.strip(), done.message

    def install(self, spec: ServiceSpec) -> Outcome:
        """Write the unit; then reload, restart it if it changed while running, and
        enable and start it. Without a reachable user manager (no systemd, a container,
        a shell outside the login session) the unit is written and ``pending`` says
        how to start it."""
        text = unit_text(spec)
        existed = self.path.exists()
        changed = write_if_changed(self.path, text.encode("utf-8"))
        code, _, message = self._systemctl("daemon-reload")
        if code != 0:
            return Outcome(
                self.location,
                changed,
                pending=f"no systemd user manager answers here ({message}); "
                f"in your login session run: {_ENABLE}",
            )
        if existed and changed:
            code, _, message = self._systemctl("try-restart", UNIT)
            if code != 0:
                raise ServiceError(f"systemctl --user try-restart {UNIT} failed: {message}")
        code, _, message = self._systemctl("enable", "--now", UNIT)
        if code != 0:
            raise ServiceError(f"systemctl --user enable --now {UNIT} failed: {message}")
        return Outcome(self.location, changed)

    def uninstall(self) -> Outcome:
        """Stop and disable the unit, remove it; a missing unit is nothing to do."""
        if not self.path.exists():
            return Outcome(self.location, changed=False)
        code, _, message = self._systemctl("disable", "--now", UNIT)
        pending = None
        if code != 0:
            pending = (
                f"systemctl --user disable --now {UNIT} failed ({message}); if a copy "
                f"runs, `systemctl --user stop {UNIT}` in your login session stops it"
            )
            wanted = self.path.parent / "default.target.wants" / UNIT
            if wanted.is_symlink():
                wanted.unlink()  # what disable would have removed
        self.path.unlink()
        if code == 0:
            self._systemctl("daemon-reload")
        return Outcome(self.location, changed=True, pending=pending)

    def status(self, log_file: Path, lines: int) -> ServiceState:
        """Installed or not, ``is-active`` and ``is-enabled``, and the journal's last lines."""
        installed = self.path.exists()
        _, active, message = self._systemctl("is-active", UNIT)
        if active and " " not in active:
            running: bool | None = active == "active"
            _, enabled, _ = self._systemctl("is-enabled", UNIT)
            state = f"{active}, {enabled}" if enabled and " " not in enabled else active
        else:
            running, state = None, f"systemctl --user gave no state ({message})"
        log_lines: tuple[str, ...] = ()
        source = None
        if lines > 0:
            journal = self.runner(
                [
                    *("journalctl", "--user", "--unit", UNIT, "--lines", str(lines)),
                    *("--no-pager", "--output", "short-iso", "--quiet"),
                ]
            )
            if journal.returncode == 0:
                source = f"journalctl --user --unit {UNIT}"
                log_lines = tuple(
                    line for line in journal.stdout.splitlines() if not line.startswith("-- ")
                )
        return ServiceState(installed, self.location, running, state, source, log_lines)
