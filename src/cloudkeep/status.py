"""The scheduled backups' status file: what the server's scheduler records and
``cloudkeep status`` reads while the server runs.

One small JSON file per data folder and store, in the cache folder
(``<cache dir>/status/<digest>.json``), replaced atomically on every change:
the last good backup, the last run's outcome, the last failure and how many in a
row, the next run, since when the store is unreachable, and the server's pid and
heartbeat (so a reader can tell whether a server with a schedule still runs).
The file is ours but may be stale, damaged or from another version: reading it
never fails, it yields an empty status instead.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from cloudkeep.platform import DataCandidate, process_alive, write_private_file

__all__ = [
    "HEARTBEAT_SECONDS",
    "Outcome",
    "ScheduleStatus",
    "load_status",
    "one_line",
    "save_status",
    "status_path",
]

STATUS_VERSION = 1
#: The server rewrites its heartbeat this often; a reader calls a server whose
#: heartbeat is three times older gone, even if its pid was reused.
HEARTBEAT_SECONDS = 60.0
_MAX_REASON = 500


class Outcome(StrEnum):
    """How a scheduled run ended."""

    BACKED_UP = "backed_up"
    SKIPPED = "skipped"  # nothing changed since the last good backup, or a restore ran
    FAILED = "failed"
    CANCELED = "canceled"  # canceled through the API: not a failure


def one_line(text: str, limit: int = _MAX_REASON) -> str:
    """``text`` on one line, at most ``limit`` characters (a reason for a log or a hook)."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def _time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def _stamp(value: datetime | None) -> str | None:
    return None if value is None else value.astimezone(UTC).isoformat()


@dataclass
class ScheduleStatus:
    """The recorded status; times are aware UTC datetimes."""

    data: str = ""
    store: str = ""
    device_name: str = ""
    schedule: str | None = None
    last_good_id: str | None = None
    last_good_time: datetime | None = None
    #: ``Workspace.data_signature()`` taken just before the last good backup started.
    last_good_signature: str | None = None
    last_run_time: datetime | None = None
    last_run_outcome: Outcome | None = None
    last_run_detail: str | None = None
    #: The schedule slot the last run served: the next regular slot follows it.
    last_slot: datetime | None = None
    last_failure_time: datetime | None = None
    last_failure_reason: str | None = None
    consecutive_failures: int = 0
    #: The failure hooks ran for the current run of failures (once per episode).
    failure_notified: bool = False
    next_run: datetime | None = None
    store_unreachable_since: datetime | None = None
    server_pid: int | None = None
    heartbeat: datetime | None = None

    def server_running(self, now: datetime | None = None) -> bool:
        """Whether the server that wrote this still runs: its pid is alive and its
        heartbeat is recent (a pid alone may have been reused)."""
        if self.server_pid is None or self.heartbeat is None:
            return False
        age = ((now or datetime.now(UTC)) - self.heartbeat).total_seconds()
        return age < 3 * HEARTBEAT_SECONDS and process_alive(self.server_pid)

    def to_json(self) -> dict[str, Any]:
        document: dict[str, Any] = {"version": STATUS_VERSION}
        for item in fields(self):
            value = getattr(self, item.name)
            document[item.name] = _stamp(value) if isinstance(value, datetime) else value
        return document

    @classmethod
    def from_json(cls, document: Any) -> ScheduleStatus:
        """Tolerant: a field of the wrong type is left at its default."""
        status = cls()
        if not isinstance(document, dict) or document.get("version") != STATUS_VERSION:
            return status
        defaults = asdict(status)
        for item in fields(cls):
            if item.name not in document:
                continue
            value = document[item.name]
            default = defaults[item.name]
            if item.name.endswith(("_time", "_slot", "_since", "next_run", "heartbeat")):
                setattr(status, item.name, _time(value))
            elif item.name == "last_run_outcome":
                status.last_run_outcome = (
                    Outcome(value)
                    if isinstance(value, str) and value in Outcome._value2member_map_
                    else None
                )
            elif item.name in ("consecutive_failures", "server_pid"):
                # At most a C int: a larger pid made os.kill raise OverflowError.
                if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**31:
                    setattr(status, item.name, value)
            elif item.name == "failure_notified":
                status.failure_notified = value is True
            elif isinstance(value, str) or (value is None and default is None):
                setattr(status, item.name, value)
        return status


def scheduled_data(data: Path | None, candidates: tuple[DataCandidate, ...]) -> str:
    """The data folder a server's schedule backs up, as its status file is named by:
    the one set or found, else where Pieces OS will make it, else "(no data folder)"."""
    place = data or (candidates[0].path if candidates else None)
    return str(place) if place is not None else "(no data folder)"


def status_path(cache_dir: Path, data: Path | str, store: str) -> Path:
    """The status file of the data folder ``data`` backed up to ``store``."""
    key = hashlib.sha256(f"{os.fspath(data)}\0{store}".encode("utf-8", "surrogateescape"))
    return cache_dir / "status" / f"{key.hexdigest()[:24]}.json"


def load_status(path: Path) -> ScheduleStatus:
    """The status in ``path``; an empty one when it is missing or unreadable."""
    try:
        return ScheduleStatus.from_json(json.loads(path.read_bytes()))
    except (OSError, ValueError):
        return ScheduleStatus()


def save_status(path: Path, status: ScheduleStatus) -> None:
    """Replace ``path`` atomically (readers see the old or the new file, whole)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(status.to_json(), indent=2, sort_keys=True) + "\n"
    write_private_file(path, text.encode("utf-8"))
