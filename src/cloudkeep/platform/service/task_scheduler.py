"""Windows: a Task Scheduler task that runs at the user's logon, as that user."""

from __future__ import annotations

import contextlib
import csv
import io
import os
import subprocess
import tempfile
import xml.etree.ElementTree as ET
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
    tail_lines,
)

TASK = "cloudkeep"
NAMESPACE = "http://schemas.microsoft.com/windows/2004/02/mit/task"
#: How often the logon trigger fires again: a server that died is started within
#: this much time (a running one is left alone: ``IgnoreNew``).
REPEAT_EVERY = "PT5M"
#: Task Scheduler's own restart of a task that failed to start.
RESTART_EVERY = "PT1M"
RESTART_COUNT = "999"
#: States ``schtasks /Query`` reports (English); other languages show theirs, unjudged.
_RUNNING = {"running": True, "ready": False, "disabled": False, "queued": False}


def current_user(environ: Mapping[str, str]) -> str:
    """``DOMAIN\\user`` of the user running this, as Task Scheduler names principals."""
    user = environ.get("USERNAME", "")
    if not user:
        raise ServiceError("USERNAME is not set: cannot tell which user the task runs as")
    domain = environ.get("USERDOMAIN", "")
    return f"{domain}\\{user}" if domain else user


def windowless(python: str) -> str:
    """``pythonw.exe`` beside ``python.exe`` where it exists (no console window opens)."""
    path = Path(python)
    if path.name.lower() == "python.exe":
        quiet = path.with_name("pythonw.exe")
        if quiet.exists():
            return str(quiet)
    return python


def task_xml(spec: ServiceSpec, user: str, name: str = TASK) -> str:
    """The task's definition (Task Scheduler schema 1.2): at ``user``'s logon, with that
    user's own token (no password stored), no time limit, started again when it
    fails. Task Scheduler sets no environment, so ``spec.environment`` must be empty
    (pass settings as arguments)."""
    check_spec(spec)
    if spec.environment:
        raise ServiceError("a scheduled task cannot set environment variables")
    ET.register_namespace("", NAMESPACE)

    def sub(parent: ET.Element, tag: str, text: str | None = None, **attrs: str) -> ET.Element:
        element = ET.SubElement(parent, f"{{{NAMESPACE}}}{tag}", attrs)
        if text is not None:
            element.text = text
        return element

    task = ET.Element(f"{{{NAMESPACE}}}Task", {"version": "1.2"})
    info = sub(task, "RegistrationInfo")
    sub(info, "Description", spec.description)
    sub(info, "URI", f"\\{name}")
    logon = sub(sub(task, "Triggers"), "LogonTrigger")
    sub(logon, "Enabled", "true")  # the schema's order: Enabled, Repetition, UserId
    repetition = sub(logon, "Repetition")
    sub(repetition, "Interval", REPEAT_EVERY)
    sub(repetition, "StopAtDurationEnd", "false")
    sub(logon, "UserId", user)
    principal = sub(sub(task, "Principals"), "Principal", id="Author")
    sub(principal, "UserId", user)
    sub(principal, "LogonType", "InteractiveToken")
    sub(principal, "RunLevel", "LeastPrivilege")
    settings = sub(task, "Settings")
    for tag, value in (
        ("MultipleInstancesPolicy", "IgnoreNew"),
        ("DisallowStartIfOnBatteries", "false"),
        ("StopIfGoingOnBatteries", "false"),
        ("AllowHardTerminate", "true"),
        ("StartWhenAvailable", "true"),
        ("RunOnlyIfNetworkAvailable", "false"),
        ("AllowStartOnDemand", "true"),
        ("Enabled", "true"),
        ("Hidden", "false"),
        ("RunOnlyIfIdle", "false"),
        ("WakeToRun", "false"),
        ("ExecutionTimeLimit", "PT0S"),  # no limit: the server runs until logoff
        ("Priority", "7"),
    ):
        sub(settings, tag, value)
    idle = sub(settings, "IdleSettings")
    sub(idle, "StopOnIdleEnd", "false")
    sub(idle, "RestartOnIdle", "false")
    restart = sub(settings, "RestartOnFailure")
    sub(restart, "Interval", RESTART_EVERY)
    sub(restart, "Count", RESTART_COUNT)
    run = sub(sub(task, "Actions", Context="Author"), "Exec")
    sub(run, "Command", spec.argv[0])
    if len(spec.argv) > 1:
        sub(run, "Arguments", subprocess.list2cmdline(spec.argv[1:]))
    sub(run, "WorkingDirectory", str(spec.working_dir))
    ET.indent(task)
    body = ET.tostring(task, encoding="unicode")
    return f'<?xml version="1.0" encoding="UTF-16"?>\n{body}\n'


def task_bytes(text: str) -> bytes:
    """The definition as ``schtasks /XML`` reads it: UTF-16 with a byte order mark."""
    return text.encode("utf-16")


class ScheduledTask:
    """The task ``name`` of the current user, driven by ``schtasks``."""

    kind = "Task Scheduler task"
    #: Task Scheduler keeps no output and sets no environment.
    keeps_output = False
    carries_environment = False

    def __init__(self, user: str, runner: Runner = run_command, name: str = TASK) -> None:
        self.user = user
        self.runner = runner
        self.name = name
        self.location = f"\\{name}"

    def interpreter(self, python: str) -> str:
        return windowless(python)

    def render(self, spec: ServiceSpec) -> str:
        return task_xml(spec, self.user, self.name)

    def _schtasks(self, *args: str) -> tuple[int, str, str]:
        done = self.runner(["schtasks", *args])
        if done.returncode == 127:
            raise ServiceError(f"schtasks is missing: {done.message}")
        return done.returncode, done.stdout, done.message

    def _exists(self) -> bool:
        return self._schtasks("/Query", "/TN", self.name)[0] == 0

    def install(self, spec: ServiceSpec) -> Outcome:
        """Register the task (replacing it, after ending a running copy) and run it now."""
        data = task_bytes(task_xml(spec, self.user, self.name))
        if self._exists():
            self._schtasks("/End", "/TN", self.name)
        fd, temp = tempfile.mkstemp(prefix="cloudkeep-task-", suffix=".xml")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            code, _, message = self._schtasks("/Create", "/TN", self.name, "/XML", temp, "/F")
        finally:
            with contextlib.suppress(OSError):
                os.unlink(temp)
        if code != 0:
            raise ServiceError(f"schtasks /Create failed: {message}")
        code, _, message = self._schtasks("/Run", "/TN", self.name)
        if code != 0:
            return Outcome(
                self.location,
                True,
                pending=f"schtasks /Run failed ({message}); it starts at your next logon, "
                f"or run: schtasks /Run /TN {self.name}",
            )
        return Outcome(self.location, True)

    def uninstall(self) -> Outcome:
        """End the running copy and delete the task."""
        if not self._exists():
            return Outcome(self.location, changed=False)
        self._schtasks("/End", "/TN", self.name)
        code, _, message = self._schtasks("/Delete", "/TN", self.name, "/F")
        if code != 0:
            raise ServiceError(f"schtasks /Delete failed: {message}")
        return Outcome(self.location, changed=True)

    def status(self, log_file: Path, lines: int) -> ServiceState:
        """Registered or not, the task's state (``schtasks /Query /FO CSV``: name, next
        run, state), and the end of the log file ``service run`` writes."""
        code, out, _ = self._schtasks("/Query", "/TN", self.name, "/FO", "CSV", "/NH")
        rows = [row for row in csv.reader(io.StringIO(out)) if len(row) >= 3]
        running: bool | None
        if code != 0 or not rows:
            installed, running, state = False, False, "not registered"
        else:
            installed, state = True, rows[0][2]
            running = _RUNNING.get(state.strip().lower())
        return ServiceState(
            installed, self.location, running, state, str(log_file), tail_lines(log_file, lines)
        )
