"""Run each backup or restore in a child process instead of a thread of the server.

The engine's Python code (chunking loops, manifest building) holds the GIL for long
stretches; in a thread of the server it delays the event loop, and ``GET /backups`` or a
status poll then waits tens of milliseconds behind it. A child process has its own GIL,
so the server stays responsive however heavy the job. Children are spawned (never
forked: the server is multi-threaded), report progress through a pipe, and are canceled
through a shared event that the engine polls as it would a ``threading.Event``.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import pickle
import signal
import threading
import time
import traceback
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cloudkeep.errors import CloudkeepError
from cloudkeep.settings import Settings

if TYPE_CHECKING:
    from cloudkeep.workspace import BackupInfo, Progress

__all__ = ["EngineCrashed", "ProcessEngine"]

_POLL = 0.05  # seconds between checks of the cancel flag while waiting for the child
_PROGRESS_STEP = 0.1  # percent; finer updates are not worth a pipe message
_PROGRESS_INTERVAL = 0.1  # seconds


class EngineCrashed(Exception):
    """The child died or raised something unexpected; carries its traceback for the log."""


def _child(
    settings: Settings,
    operation: str,
    backup_id: str | None,
    conn: Connection,
    cancel: Any,
) -> None:
    """Entry point of the child process: run one operation, send one outcome."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the server, which cancels
    from cloudkeep.workspace import Workspace

    send_lock = threading.Lock()
    last = {"percentage": -1.0, "at": 0.0}

    def send(message: tuple[Any, ...]) -> None:
        with send_lock:
            conn.send(message)

    def progress(report: Progress) -> None:
        now = time.monotonic()
        percentage = report.percentage
        if percentage - last["percentage"] >= _PROGRESS_STEP or (
            now - last["at"] >= _PROGRESS_INTERVAL and percentage > last["percentage"]
        ):
            last.update(percentage=percentage, at=now)
            send(("progress", report.phase, report.done, report.total))

    try:
        workspace = Workspace(settings)
        if operation == "backup":
            info = workspace.backup(progress=progress, cancel=cancel)
        else:
            assert backup_id is not None
            info = workspace.restore(backup_id, None, progress=progress, cancel=cancel)
        send(("done", info))
    except CloudkeepError as exc:
        try:
            pickle.dumps(exc)
            send(("error", exc))
        except Exception:  # an error class that cannot cross the pipe: keep its meaning
            send(("error-text", type(exc).__name__, str(exc), getattr(exc, "http_status", 500)))
    except BaseException as exc:
        send(("crash", f"{type(exc).__name__}: {exc}", traceback.format_exc()))
    finally:
        conn.close()


class ProcessEngine:
    """Implements the jobs' ``Engine`` protocol by delegating to a child per operation."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._context = multiprocessing.get_context("spawn")

    def backup(
        self,
        progress: Callable[[Progress], None] | None = None,
        cancel: threading.Event | None = None,
    ) -> BackupInfo:
        return self._run("backup", None, progress, cancel)

    def restore(
        self,
        backup_id: str,
        target: Path | None = None,
        progress: Callable[[Progress], None] | None = None,
        cancel: threading.Event | None = None,
    ) -> BackupInfo:
        if target is not None:
            raise ValueError("the API restores over the live data only")
        return self._run("restore", backup_id, progress, cancel)

    def _run(
        self,
        operation: str,
        backup_id: str | None,
        progress: Callable[[Progress], None] | None,
        cancel: threading.Event | None,
    ) -> BackupInfo:
        from cloudkeep.workspace import Progress

        receiver, sender = self._context.Pipe(duplex=False)
        child_cancel = self._context.Event()
        process = self._context.Process(
            target=_child,
            args=(self._settings, operation, backup_id, sender, child_cancel),
            name=f"cloudkeep-{operation}",
            daemon=True,
        )
        process.start()
        sender.close()  # only the child writes; EOF then means the child is gone
        outcome: tuple[Any, ...] | None = None
        try:
            while outcome is None:
                if cancel is not None and cancel.is_set():
                    child_cancel.set()
                if not receiver.poll(_POLL):
                    continue
                try:
                    message = receiver.recv()
                except EOFError:
                    break
                if message[0] == "progress":
                    if progress is not None:
                        progress(Progress(message[1], message[2], message[3]))
                else:
                    outcome = message
        finally:
            if outcome is None and process.is_alive():
                child_cancel.set()
            process.join(30)
            if process.is_alive():
                process.kill()
                process.join(5)
            with contextlib.suppress(OSError):
                receiver.close()
        return self._outcome(outcome, process.exitcode)

    @staticmethod
    def _outcome(outcome: tuple[Any, ...] | None, exitcode: int | None) -> BackupInfo:
        if outcome is None:
            raise EngineCrashed(f"the engine process ended without an answer (exit {exitcode})")
        kind = outcome[0]
        if kind == "done":
            info: BackupInfo = outcome[1]
            return info
        if kind == "error":
            raise outcome[1]
        if kind == "error-text":
            error = CloudkeepError(outcome[2])
            error.http_status = outcome[3]
            raise error
        raise EngineCrashed(f"{outcome[1]}\n--- engine process traceback ---\n{outcome[2]}")
