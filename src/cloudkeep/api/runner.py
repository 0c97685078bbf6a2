"""Run backups and restores in a separate engine process instead of a server thread.

The engine's Python code (chunking loops, manifest building) holds the GIL for long
stretches; in a thread of the server it delays the event loop, and ``GET /backups`` or a
status poll then waits tens of milliseconds behind it. The engine process has its own
GIL, so the server stays responsive however heavy the job.

One long-lived worker process (spawned, never forked: the server is multi-threaded)
runs the operations one at a time, which is all the job queue ever asks of it, and
keeps its Workspace so imports and the key derivation are paid once. It reports
progress through a pipe and is canceled through a shared event that the engine polls
as it would a ``threading.Event``. If it dies, the operation fails and the next one
starts a fresh worker.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
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
    from multiprocessing.context import SpawnProcess
    from multiprocessing.synchronize import Event as ProcessEvent

    from cloudkeep.workspace import BackupInfo, Progress, Workspace

__all__ = ["EngineCrashed", "ProcessEngine"]

log = logging.getLogger("cloudkeep.api")

_POLL = 0.05  # seconds between checks of the cancel flag while waiting for the worker
_PROGRESS_STEP = 0.1  # percent; finer updates are not worth a pipe message
_PROGRESS_INTERVAL = 0.1  # seconds
_NICENESS = 10


class EngineCrashed(Exception):
    """The worker died or raised something unexpected; carries its traceback for the log."""


def _worker(settings: Settings, requests: Connection, replies: Connection, cancel: Any) -> None:
    """Entry point of the engine process: serve operations until the pipe closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the server, which cancels
    if hasattr(os, "nice"):
        # Background work: when CPUs are scarce the API (and the user's app) go first.
        with contextlib.suppress(OSError):
            os.nice(_NICENESS)
    from cloudkeep.platform import keep_freed_memory
    from cloudkeep.workspace import Workspace

    keep_freed_memory()
    send_lock = threading.Lock()
    workspace: Workspace | None = None

    def send(message: tuple[Any, ...]) -> None:
        with send_lock:
            replies.send(message)

    while True:
        try:
            operation, backup_id = requests.recv()
        except (EOFError, OSError):
            return
        last = {"percentage": -1.0, "at": 0.0}

        def progress(report: Progress, last: dict[str, float] = last) -> None:
            now = time.monotonic()
            percentage = report.percentage
            if percentage - last["percentage"] >= _PROGRESS_STEP or (
                now - last["at"] >= _PROGRESS_INTERVAL and percentage > last["percentage"]
            ):
                last.update(percentage=percentage, at=now)
                send(("progress", report.phase, report.done, report.total))

        try:
            if workspace is None:
                workspace = Workspace(settings)
            if operation == "backup":
                info = workspace.backup(progress=progress, cancel=cancel)
            else:
                info = workspace.restore(backup_id, None, progress=progress, cancel=cancel)
            send(("done", info))
        except CloudkeepError as exc:
            try:
                pickle.dumps(exc)
                send(("error", exc))
            except Exception:  # an error class that cannot cross the pipe: keep its meaning
                status = getattr(exc, "http_status", 500)
                send(("error-text", type(exc).__name__, str(exc), status))
        except Exception as exc:
            send(("crash", f"{type(exc).__name__}: {exc}", traceback.format_exc()))


class ProcessEngine:
    """Implements the jobs' ``Engine`` protocol by delegating to the engine process.

    Not re-entrant: the single job worker thread is its only caller.
    """

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._context = multiprocessing.get_context("spawn")
        self._process: SpawnProcess | None = None
        self._requests: Connection | None = None
        self._replies: Connection | None = None
        self._cancel: ProcessEvent | None = None
        self._lock = threading.Lock()

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

    def start(self) -> None:
        """Start the worker ahead of the first job (optional: ``_run`` starts it too)."""
        with self._lock:
            self._ensure_worker()

    def stop(self) -> None:
        """Close the pipe (the worker exits after its current operation) and reap it."""
        with self._lock:
            self._discard_worker(wait=10.0)

    def _ensure_worker(self) -> None:
        if self._process is not None and self._process.is_alive():
            return
        self._discard_worker(wait=0.0)
        request_reader, request_writer = self._context.Pipe(duplex=False)
        reply_reader, reply_writer = self._context.Pipe(duplex=False)
        cancel = self._context.Event()
        process = self._context.Process(
            target=_worker,
            args=(self._settings, request_reader, reply_writer, cancel),
            name="cloudkeep-engine",
            daemon=True,
        )
        process.start()
        request_reader.close()
        reply_writer.close()  # only the worker writes; EOF then means it is gone
        self._process, self._requests, self._replies, self._cancel = (
            process,
            request_writer,
            reply_reader,
            cancel,
        )

    def _discard_worker(self, wait: float) -> None:
        for conn in (self._requests, self._replies):
            if conn is not None:
                with contextlib.suppress(OSError):
                    conn.close()
        process = self._process
        self._process = self._requests = self._replies = self._cancel = None
        if process is not None:
            process.join(wait)
            if process.is_alive():
                process.kill()
                process.join(5)

    def _run(
        self,
        operation: str,
        backup_id: str | None,
        progress: Callable[[Progress], None] | None,
        cancel: threading.Event | None,
    ) -> BackupInfo:
        from cloudkeep.workspace import Progress

        with self._lock:
            self._ensure_worker()
            assert self._requests and self._replies and self._cancel and self._process
            requests, replies, child_cancel = self._requests, self._replies, self._cancel
            child_cancel.clear()
            outcome: tuple[Any, ...] | None = None
            try:
                requests.send((operation, backup_id))
                while outcome is None:
                    if cancel is not None and cancel.is_set():
                        child_cancel.set()
                    if not replies.poll(_POLL):
                        if not self._process.is_alive() and not replies.poll(0):
                            break
                        continue
                    message = replies.recv()
                    if message[0] == "progress":
                        if progress is not None:
                            progress(Progress(message[1], message[2], message[3]))
                    else:
                        outcome = message
            except (EOFError, OSError, BrokenPipeError):
                outcome = None
            if outcome is None:
                exitcode = self._process.exitcode
                self._discard_worker(wait=1.0)
                raise EngineCrashed(
                    f"the engine process ended without an answer (exit code {exitcode})"
                )
        return self._outcome(outcome)

    @staticmethod
    def _outcome(outcome: tuple[Any, ...]) -> BackupInfo:
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
