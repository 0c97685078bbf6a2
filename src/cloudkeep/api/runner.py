"""Run operations in a separate engine process instead of in threads of the server.

The engine's Python code (chunking loops, manifest building) holds the GIL for long
stretches; in a thread of the server it delays the event loop, and ``GET /backups`` or a
status poll then waits tens of milliseconds behind it. The engine process has its own
GIL, so the server stays responsive however heavy the job.

One long-lived worker process (spawned, never forked: the server is multi-threaded)
keeps its Workspace, so imports and the key derivation are paid once, and runs each
operation it is sent in a thread of its own through ``operations.run``, as the CLI
does. Typed messages cross the pipes: ``Run`` and ``Cancel`` in, ``ProgressReport``
then ``Finished``, ``Failed`` (carrying the error itself) or ``Crashed`` out, each
naming its job. If the worker
dies, the operations it ran fail and the next one starts a fresh worker.
"""

from __future__ import annotations

import contextlib
import importlib
import multiprocessing
import pickle
import queue
import signal
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cloudkeep.errors import CloudkeepError
from cloudkeep.operations import Operation, OperationResult, Progress, ProgressFn, run
from cloudkeep.settings import Settings

if TYPE_CHECKING:
    # Connection on POSIX, PipeConnection on Windows.
    from multiprocessing.connection import _ConnectionBase as Connection
    from multiprocessing.context import SpawnProcess

    from cloudkeep.workspace import Workspace

__all__ = [
    "Cancel",
    "Crashed",
    "EngineCrashed",
    "Failed",
    "Finished",
    "ProcessEngine",
    "ProgressReport",
    "Run",
]

_POLL = 0.05  # seconds between checks of the cancel flag while waiting for the worker
_PROGRESS_STEP = 0.1  # percent; finer updates are not worth a pipe message
_PROGRESS_INTERVAL = 0.1  # seconds
_STOP_WAIT = 10.0  # seconds the worker has to finish after its pipe closed


class EngineCrashed(Exception):
    """The worker died or raised something unexpected; carries its traceback for the log."""


# ---------------------------------------------------------------- messages in
@dataclass(frozen=True)
class Run:
    """Run ``operation`` as job ``job_id``."""

    job_id: str
    operation: Operation[OperationResult]


@dataclass(frozen=True)
class Cancel:
    """Cancel job ``job_id`` (nothing if it already ended)."""

    job_id: str


# --------------------------------------------------------------- messages out
@dataclass(frozen=True)
class ProgressReport:
    job_id: str
    progress: Progress


@dataclass(frozen=True)
class Finished:
    job_id: str
    result: OperationResult


@dataclass(frozen=True)
class Failed:
    """An expected failure: the error itself (``raised``) when it pickles; otherwise its
    class (``module:qualname``), message and the fields that pickle."""

    job_id: str
    error: str
    message: str
    fields: dict[str, Any] = field(default_factory=dict)
    raised: CloudkeepError | None = None

    @classmethod
    def of(cls, job_id: str, exc: CloudkeepError) -> Failed:
        kind = type(exc)
        name = f"{kind.__module__}:{kind.__qualname__}"
        if _round_trips(exc):
            return cls(job_id, name, str(exc), raised=exc)
        fields = {name: value for name, value in vars(exc).items() if _picklable(value)}
        return cls(job_id, name, str(exc), fields)

    def exception(self) -> CloudkeepError:
        """The error again: itself, or rebuilt of its own class when that is a cloudkeep
        error class."""
        if self.raised is not None:
            return self.raised
        kind = _error_class(self.error)
        exc = kind.__new__(kind, self.message)  # its __init__ may want other arguments
        exc.args = (self.message,)
        exc.__dict__.update(self.fields)
        return exc


@dataclass(frozen=True)
class Crashed:
    """An unexpected exception (a bug): its one-line summary and traceback, for the log."""

    job_id: str
    summary: str
    traceback: str


Reply = ProgressReport | Finished | Failed | Crashed


def _picklable(value: object) -> bool:
    try:
        pickle.dumps(value)
    except Exception:
        return False
    return True


def _round_trips(exc: BaseException) -> bool:
    """Whether ``exc`` pickles and unpickles (an ``__init__`` wanting other arguments
    than ``args`` fails only on loading)."""
    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:
        return False
    return True


def _error_class(name: str) -> type[CloudkeepError]:
    """``module:qualname`` → that class if it is a cloudkeep error class, else the base."""
    module_name, _, qualname = name.partition(":")
    if module_name != "cloudkeep" and not module_name.startswith("cloudkeep."):
        return CloudkeepError
    try:
        found: Any = importlib.import_module(module_name)
        for part in qualname.split("."):
            found = getattr(found, part)
    except (ImportError, AttributeError):
        return CloudkeepError
    if isinstance(found, type) and issubclass(found, CloudkeepError):
        return found
    return CloudkeepError


# ----------------------------------------------------------------- the worker
def _worker(settings: Settings, requests: Connection, replies: Connection) -> None:
    """Entry point of the engine process: serve ``Run`` and ``Cancel`` until the pipe closes.

    On close, every running operation is canceled and waited for (the engine leaves no
    partial backup).
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the server, which cancels
    from cloudkeep.platform import keep_freed_memory, lower_priority

    lower_priority()  # background work: when CPUs are scarce the API and the user's app go first
    keep_freed_memory()
    worker = _Worker(settings, replies)
    while True:
        try:
            message = requests.recv()
        except (EOFError, OSError):
            break
        if isinstance(message, Run):
            worker.start(message)
        elif isinstance(message, Cancel):
            worker.cancel(message.job_id)
    worker.close()


class _Worker:
    """The engine process's side: one thread per operation, replies through one pipe."""

    def __init__(self, settings: Settings, replies: Connection) -> None:
        self._settings = settings
        self._replies = replies
        self._lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._workspace: Workspace | None = None
        self._cancels: dict[str, threading.Event] = {}
        self._threads: list[threading.Thread] = []

    def start(self, request: Run) -> None:
        cancel = threading.Event()
        with self._lock:
            self._cancels[request.job_id] = cancel
            self._threads = [t for t in self._threads if t.is_alive()]
            thread = threading.Thread(
                target=self._serve, args=(request, cancel), name=request.job_id, daemon=True
            )
            self._threads.append(thread)
        thread.start()

    def cancel(self, job_id: str) -> None:
        with self._lock:
            event = self._cancels.get(job_id)
        if event is not None:
            event.set()

    def close(self) -> None:
        with self._lock:
            for event in self._cancels.values():
                event.set()
            threads = list(self._threads)
        for thread in threads:
            thread.join()

    def send(self, message: Reply) -> None:
        with self._send_lock, contextlib.suppress(OSError):  # the server is gone: nobody to tell
            self._replies.send(message)

    def workspace(self) -> Workspace:
        with self._lock:
            if self._workspace is None:
                from cloudkeep.workspace import Workspace

                self._workspace = Workspace(self._settings)
            return self._workspace

    def _serve(self, request: Run, cancel: threading.Event) -> None:
        job_id = request.job_id
        last = [-1.0, 0.0]  # percentage and time of the last report sent

        def progress(report: Progress) -> None:
            now = time.monotonic()
            percentage = report.percentage
            if percentage - last[0] >= _PROGRESS_STEP or (
                now - last[1] >= _PROGRESS_INTERVAL and percentage > last[0]
            ):
                last[:] = [percentage, now]
                self.send(ProgressReport(job_id, report))

        try:
            try:
                result = run(request.operation, self.workspace(), progress, cancel)
                reply: Reply = Finished(job_id, result)
                pickle.dumps(reply)  # a result that cannot cross the pipe is a bug, told here
            except CloudkeepError as exc:
                reply = Failed.of(job_id, exc)
            except Exception as exc:
                reply = Crashed(job_id, f"{type(exc).__name__}: {exc}", traceback.format_exc())
            self.send(reply)
        finally:
            with self._lock:
                self._cancels.pop(job_id, None)


# ----------------------------------------------------------- the server's side
@dataclass(frozen=True)
class _Gone:
    """Put in the inbox of every operation the worker held when its pipe ended."""

    exitcode: int | None


@dataclass
class _Connection:
    """One worker process and the operations waiting for its replies."""

    process: SpawnProcess
    requests: Connection
    replies: Connection
    inboxes: dict[str, queue.Queue[Reply | _Gone]] = field(default_factory=dict)
    alive: bool = True
    lock: threading.Lock = field(default_factory=threading.Lock)  # inboxes and alive
    send_lock: threading.Lock = field(default_factory=threading.Lock)

    def send(self, message: Run | Cancel) -> None:
        with self.send_lock:
            self.requests.send(message)


class ProcessEngine:
    """Runs operations in the engine process; ``run`` may be called from many threads."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._context = multiprocessing.get_context("spawn")
        self._connection: _Connection | None = None
        self._lock = threading.Lock()

    def start(self) -> None:
        """Start the worker ahead of the first job (optional: ``run`` starts it too)."""
        with self._lock:
            self._ensure_worker()

    def stop(self) -> None:
        """Close the pipe (the worker cancels what it runs and exits) and reap it."""
        with self._lock:
            connection, self._connection = self._connection, None
        if connection is not None:
            _close(connection, _STOP_WAIT)

    def run(
        self,
        operation: Operation[OperationResult],
        progress: ProgressFn | None,
        cancel: threading.Event,
        job_id: str,
    ) -> OperationResult:
        """Run ``operation`` in the worker and return its result or raise its error."""
        inbox: queue.Queue[Reply | _Gone] = queue.Queue()
        with self._lock:
            connection = self._ensure_worker()
            with connection.lock:
                connection.inboxes[job_id] = inbox
                if not connection.alive:  # its reader already told the others
                    inbox.put(_Gone(connection.process.exitcode))
        try:
            with contextlib.suppress(OSError):  # the worker died just now: the reader tells
                connection.send(Run(job_id, operation))
            return self._await(connection, job_id, inbox, progress, cancel)
        finally:
            with connection.lock:
                connection.inboxes.pop(job_id, None)

    @staticmethod
    def _await(
        connection: _Connection,
        job_id: str,
        inbox: queue.Queue[Reply | _Gone],
        progress: ProgressFn | None,
        cancel: threading.Event,
    ) -> OperationResult:
        asked_to_cancel = False
        while True:
            if cancel.is_set() and not asked_to_cancel:
                asked_to_cancel = True
                with contextlib.suppress(OSError):
                    connection.send(Cancel(job_id))
            try:
                message = inbox.get(timeout=_POLL)
            except queue.Empty:
                continue
            if isinstance(message, ProgressReport):
                if progress is not None:
                    progress(message.progress)
            elif isinstance(message, Finished):
                return message.result
            elif isinstance(message, Failed):
                raise message.exception()
            elif isinstance(message, Crashed):
                raise EngineCrashed(
                    f"{message.summary}\n--- engine process traceback ---\n{message.traceback}"
                )
            else:
                raise EngineCrashed(
                    f"the engine process ended without an answer (exit code {message.exitcode})"
                )

    def _ensure_worker(self) -> _Connection:
        """The running worker, or a new one (called with ``_lock`` held)."""
        current = self._connection
        if current is not None and current.alive and current.process.is_alive():
            return current
        request_reader, request_writer = self._context.Pipe(duplex=False)
        reply_reader, reply_writer = self._context.Pipe(duplex=False)
        process = self._context.Process(
            target=_worker,
            args=(self._settings, request_reader, reply_writer),
            name="cloudkeep-engine",
            daemon=True,
        )
        process.start()
        request_reader.close()
        reply_writer.close()  # only the worker writes; EOF then means it is gone
        connection = _Connection(process, request_writer, reply_reader)
        threading.Thread(
            target=_read_replies, args=(connection,), name="cloudkeep-engine-replies", daemon=True
        ).start()
        self._connection = connection
        if current is not None:
            _close(current, 1.0)
        return connection


def _read_replies(connection: _Connection) -> None:
    """Hand each reply to the operation it names; when the pipe ends, tell every one left."""
    while True:
        try:
            message: Reply = connection.replies.recv()
        except (EOFError, OSError):
            break
        with connection.lock:
            inbox = connection.inboxes.get(message.job_id)
        if inbox is not None:
            inbox.put(message)
    with contextlib.suppress(OSError):
        connection.replies.close()
    connection.process.join(1.0)
    with connection.lock:
        connection.alive = False
        waiting = list(connection.inboxes.values())
    for inbox in waiting:
        inbox.put(_Gone(connection.process.exitcode))


def _close(connection: _Connection, wait: float) -> None:
    """Close the request pipe, give the worker ``wait`` seconds, then kill it."""
    with connection.lock:
        connection.alive = False
    with contextlib.suppress(OSError):
        connection.requests.close()
    connection.process.join(wait)
    if connection.process.is_alive():
        connection.process.kill()
        connection.process.join(5)
