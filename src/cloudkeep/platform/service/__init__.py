"""Start ``cloudkeep serve`` at login, as the user: a systemd user unit on Linux, a
launchd agent on macOS, a Task Scheduler task on Windows, a refusal elsewhere.

The files are made by pure functions (``unit_text``, ``plist_bytes``, ``task_xml``)
so every system's can be checked anywhere; the managers run ``systemctl``,
``launchctl`` or ``schtasks`` through a ``Runner`` that tests may replace. The
choice follows the running system only (``CLOUDKEEP_PORTABLE`` is about I/O calls,
not about which service manager the machine has).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Protocol

from cloudkeep.platform.service._common import (
    Completed,
    Outcome,
    Runner,
    ServiceError,
    ServiceSpec,
    ServiceState,
    ServiceUnsupported,
    run_command,
)
from cloudkeep.platform.service.launchd import LaunchdAgent, agent_path, plist_bytes
from cloudkeep.platform.service.systemd import SystemdUserService, unit_path, unit_text
from cloudkeep.platform.service.task_scheduler import (
    ScheduledTask,
    current_user,
    task_bytes,
    task_xml,
)
from cloudkeep.platform.service.unsupported import UnsupportedService


class ServiceManager(Protocol):
    """One system's login service for cloudkeep."""

    #: What it is called ("systemd user unit"...), and where it is (a path, a task name).
    kind: str
    location: str
    #: Whether the service manager keeps the output (journal, launchd's log file) and
    #: sets the environment; where not, ``cloudkeep service run`` does both.
    keeps_output: bool
    carries_environment: bool

    def interpreter(self, python: str) -> str:
        """The Python the service should run for ``python`` (``pythonw.exe`` on Windows)."""
        ...

    def render(self, spec: ServiceSpec) -> str:
        """The text of the file ``install`` would register."""
        ...

    def install(self, spec: ServiceSpec) -> Outcome: ...

    def uninstall(self) -> Outcome: ...

    def status(self, log_file: Path, lines: int) -> ServiceState: ...


def login_service(runner: Runner = run_command) -> ServiceManager:
    """This system's login service for the current user."""
    home = Path.home()
    if sys.platform == "linux":
        return SystemdUserService(unit_path(os.environ, str(home)), runner)
    if sys.platform == "darwin":
        return LaunchdAgent(agent_path(home), os.getuid(), runner)
    if sys.platform == "win32":
        return ScheduledTask(current_user(os.environ), runner)
    return UnsupportedService(sys.platform)


__all__ = [
    "Completed",
    "LaunchdAgent",
    "Outcome",
    "Runner",
    "ScheduledTask",
    "ServiceError",
    "ServiceManager",
    "ServiceSpec",
    "ServiceState",
    "ServiceUnsupported",
    "SystemdUserService",
    "UnsupportedService",
    "agent_path",
    "current_user",
    "login_service",
    "plist_bytes",
    "run_command",
    "task_bytes",
    "task_xml",
    "unit_path",
    "unit_text",
]
