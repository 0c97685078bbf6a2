"""What every login service shares: what it runs, what it reports, how commands run."""

from __future__ import annotations

import ntpath
import os
import posixpath
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

#: How long one call of systemctl, launchctl or schtasks may take.
COMMAND_TIMEOUT = 60.0
#: How much of the end of a log file is read for its last lines.
TAIL_BYTES = 64 * 1024


class ServiceError(Exception):
    """The service could not be installed, removed or queried; the message says why."""


class ServiceUnsupported(ServiceError):
    """This system has no login service cloudkeep knows how to register."""


@dataclass(frozen=True)
class ServiceSpec:
    """What the login service runs: ``argv`` (an absolute program first), the variables
    it adds to the environment, the folder it starts in, and the file its output goes
    to where the service manager keeps none (launchd)."""

    argv: tuple[str, ...]
    environment: Mapping[str, str]
    working_dir: Path
    log_file: Path
    description: str = "cloudkeep: scheduled backups and the Backups API server"


@dataclass(frozen=True)
class Outcome:
    """What ``install`` or ``uninstall`` did: ``changed`` whether the file was written
    or removed; ``pending`` None when the service manager did its part (started, or
    stopped, the service), else one line saying why not and what finishes the job."""

    path: str
    changed: bool
    pending: str | None = None


@dataclass(frozen=True)
class ServiceState:
    """``status``: installed or not, where, running or not (None: unknown), the state as
    the service manager words it, and the last lines of the service's log."""

    installed: bool
    path: str
    running: bool | None
    state: str
    log_source: str | None = None
    log_lines: tuple[str, ...] = field(default=())


@dataclass(frozen=True)
class Completed:
    """One finished command: its exit code and output (``returncode`` 127 when the
    program is missing)."""

    returncode: int
    stdout: str
    stderr: str

    @property
    def message(self) -> str:
        """The command's complaint in one line (its last non-empty line of output)."""
        for text in (self.stderr, self.stdout):
            lines = [line.strip() for line in text.splitlines() if line.strip()]
            if lines:
                return lines[-1]
        return f"exit code {self.returncode}"


#: Runs one command (argv) and returns how it ended; tests give one that records.
Runner = Callable[[Sequence[str]], Completed]


def run_command(argv: Sequence[str]) -> Completed:
    """Run ``argv`` with its output captured (never a shell); 127 when not found."""
    try:
        done = subprocess.run(
            list(argv),
            capture_output=True,
            text=True,
            errors="replace",
            timeout=COMMAND_TIMEOUT,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    except FileNotFoundError:
        return Completed(127, "", f"{argv[0]}: command not found")
    except subprocess.TimeoutExpired:
        return Completed(124, "", f"{argv[0]} did not answer within {COMMAND_TIMEOUT:.0f} s")
    except OSError as exc:
        return Completed(126, "", f"{argv[0]}: {exc.strerror or exc}")
    return Completed(done.returncode, done.stdout or "", done.stderr or "")


def write_if_changed(path: Path, data: bytes) -> bool:
    """Write ``path`` (its folders made, replaced atomically) unless it holds ``data``
    already; whether it was written."""
    try:
        if path.read_bytes() == data:
            return False
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        temp.write_bytes(data)
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return True


def tail_lines(path: Path, count: int) -> tuple[str, ...]:
    """The last ``count`` lines of a text file (none when it is missing or unreadable)."""
    if count <= 0:
        return ()
    try:
        with path.open("rb") as handle:
            size = handle.seek(0, os.SEEK_END)
            handle.seek(max(0, size - TAIL_BYTES))
            data = handle.read()
    except OSError:
        return ()
    lines = data.decode("utf-8", errors="replace").splitlines()
    if len(data) == TAIL_BYTES and lines:
        lines = lines[1:]  # the first line read is probably cut
    return tuple(lines[-count:])


def check_spec(spec: ServiceSpec) -> None:
    """``ServiceError`` unless every service file can carry ``spec``: a program given by
    absolute path, absolute folders, and no text with NUL or a line break."""
    if not spec.argv or not _absolute(spec.argv[0]):
        raise ServiceError(f"the service needs the program's absolute path, not {spec.argv[:1]!r}")
    for where in (spec.working_dir, spec.log_file):
        if not _absolute(str(where)):
            raise ServiceError(f"the service needs absolute paths, not {str(where)!r}")
    texts = [*spec.argv, *spec.environment, *spec.environment.values()]
    for text in [*texts, str(spec.working_dir), str(spec.log_file)]:
        if any(char in text for char in "\0\r\n"):
            raise ServiceError(f"a setting of the service holds a line break: {text!r}")
    for name in spec.environment:
        if not name or "=" in name:
            raise ServiceError(f"not an environment variable name: {name!r}")


def _absolute(path: str) -> bool:
    """Absolute as a POSIX or a Windows path (the files of every system are made here)."""
    return posixpath.isabs(path) or ntpath.isabs(path)
