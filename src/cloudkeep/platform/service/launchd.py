"""macOS: a launchd agent in ``~/Library/LaunchAgents``, loaded into the user's GUI session."""

from __future__ import annotations

import contextlib
import plistlib
import time
from pathlib import Path
from typing import Any

from cloudkeep.platform.service._common import (
    Outcome,
    Runner,
    ServiceError,
    ServiceSpec,
    ServiceState,
    check_spec,
    run_command,
    tail_lines,
    write_if_changed,
)

LABEL = "org.cloudkeep.serve"
#: Seconds launchd waits before starting the agent again after it exited.
THROTTLE_SEC = 10
#: ``bootstrap`` right after ``bootout`` may fail while the old job winds down.
BOOTSTRAP_TRIES = 5
BOOTSTRAP_PAUSE = 0.5


def agent_path(home: Path, label: str = LABEL) -> Path:
    return home / "Library" / "LaunchAgents" / f"{label}.plist"


def plist_bytes(spec: ServiceSpec, label: str = LABEL) -> bytes:
    """The agent: started at load (login), started again when it exits with an error
    (not after a clean stop), output appended to ``spec.log_file``."""
    check_spec(spec)
    agent: dict[str, Any] = {
        "Label": label,
        "ProgramArguments": list(spec.argv),
        "WorkingDirectory": str(spec.working_dir),
        "RunAtLoad": True,
        "KeepAlive": {"SuccessfulExit": False},
        "ThrottleInterval": THROTTLE_SEC,
        "StandardOutPath": str(spec.log_file),
        "StandardErrorPath": str(spec.log_file),
    }
    if spec.environment:
        agent["EnvironmentVariables"] = dict(spec.environment)
    return plistlib.dumps(agent, fmt=plistlib.FMT_XML, sort_keys=False)


def launchctl_fields(text: str) -> dict[str, str]:
    """The top-level ``name = value`` lines of ``launchctl print`` (state, pid...)."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("\t") and not line.startswith("\t\t"):
            name, sep, value = line.strip().partition(" = ")
            if sep:
                fields.setdefault(name, value)
    return fields


class LaunchdAgent:
    """The agent ``label`` of the user ``uid``, driven by ``launchctl``."""

    kind = "launchd agent"
    #: launchd appends the output to the log file; the plist sets the environment.
    keeps_output = True
    carries_environment = True

    def __init__(
        self, path: Path, uid: int, runner: Runner = run_command, label: str = LABEL
    ) -> None:
        self.path = path
        self.location = str(path)
        self.runner = runner
        self.label = label
        self.domain = f"gui/{uid}"
        self.target = f"{self.domain}/{label}"

    def interpreter(self, python: str) -> str:
        return python

    def render(self, spec: ServiceSpec) -> str:
        return plist_bytes(spec, self.label).decode("utf-8")

    def _loaded(self) -> tuple[bool, str]:
        done = self.runner(["launchctl", "print", self.target])
        if done.returncode == 127:
            raise ServiceError(f"launchctl is missing: {done.message}")
        return done.returncode == 0, done.stdout

    def _bootstrap(self) -> str | None:
        """Load the agent; None when done, else launchctl's complaint."""
        message = ""
        for attempt in range(BOOTSTRAP_TRIES):
            done = self.runner(["launchctl", "bootstrap", self.domain, str(self.path)])
            if done.returncode == 0:
                return None
            message = done.message
            if attempt + 1 < BOOTSTRAP_TRIES:
                time.sleep(BOOTSTRAP_PAUSE)
        return message

    def install(self, spec: ServiceSpec) -> Outcome:
        """Write the plist; load it (again, when it changed while loaded), or start it
        when it is loaded and unchanged. Outside a GUI session (ssh) it loads at the
        next login and ``pending`` says so."""
        data = plist_bytes(spec, self.label)
        spec.log_file.parent.mkdir(parents=True, exist_ok=True)  # launchd makes no folders
        changed = write_if_changed(self.path, data)
        loaded, _ = self._loaded()
        if loaded and not changed:
            done = self.runner(["launchctl", "kickstart", self.target])
            if done.returncode != 0:
                raise ServiceError(f"launchctl kickstart {self.target} failed: {done.message}")
            return Outcome(self.location, changed)
        if loaded:
            self.runner(["launchctl", "bootout", self.target])
        self.runner(["launchctl", "enable", self.target])  # undo an earlier `disable`
        problem = self._bootstrap()
        if problem is not None:
            return Outcome(
                self.location,
                changed,
                pending=f"launchctl bootstrap {self.domain} failed ({problem}); it loads at "
                f"your next login, or run: launchctl bootstrap {self.domain} '{self.path}'",
            )
        return Outcome(self.location, changed)

    def uninstall(self) -> Outcome:
        """Unload the agent (which stops it) and remove the plist."""
        loaded, _ = self._loaded()
        if not loaded and not self.path.exists():
            return Outcome(self.location, changed=False)
        pending = None
        if loaded:
            done = self.runner(["launchctl", "bootout", self.target])
            if done.returncode != 0:
                pending = (
                    f"launchctl bootout {self.target} failed ({done.message}); "
                    f"run it again to stop the running copy"
                )
        self.path.unlink(missing_ok=True)
        return Outcome(self.location, changed=True, pending=pending)

    def status(self, log_file: Path, lines: int) -> ServiceState:
        """Installed or not, ``launchctl print``'s state and pid, and the log file's end
        (where the installed plist sends it)."""
        installed = self.path.exists()
        if installed:
            unreadable = (OSError, ValueError, KeyError, TypeError, plistlib.InvalidFileException)
            with contextlib.suppress(*unreadable):
                log_file = Path(plistlib.loads(self.path.read_bytes())["StandardErrorPath"])
        loaded, text = self._loaded()
        if loaded:
            fields = launchctl_fields(text)
            state = fields.get("state", "loaded")
            running = state == "running"
            for name in ("pid", "last exit code"):
                if name in fields:
                    state += f", {name} {fields[name]}"
        else:
            running, state = False, "not loaded"
        return ServiceState(
            installed, self.location, running, state, str(log_file), tail_lines(log_file, lines)
        )
