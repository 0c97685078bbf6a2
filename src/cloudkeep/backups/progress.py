"""Progress reports shared by backup, restore and check."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

from cloudkeep.errors import Canceled


@dataclass(frozen=True, slots=True)
class Progress:
    phase: str
    done: int
    total: int

    @property
    def percentage(self) -> float:
        if self.total <= 0:
            return 0.0
        return min(100.0, 100.0 * self.done / self.total)


ProgressFn = Callable[[Progress], None]


class Tracker:
    """Counts work done; never reports a smaller figure than before (no "resets")."""

    def __init__(
        self, phase: str, total: int, callback: ProgressFn | None, cancel: threading.Event | None
    ) -> None:
        self.phase = phase
        self.total = max(total, 0)
        self.done = 0
        self._callback = callback
        self._cancel = cancel
        self._lock = threading.Lock()

    def advance(self, amount: int) -> None:
        with self._lock:
            self.done += amount
            self.total = max(self.total, self.done)
            report = Progress(self.phase, self.done, self.total)
        if self._callback:
            self._callback(report)

    def check_canceled(self) -> None:
        if self._cancel is not None and self._cancel.is_set():
            raise Canceled("the operation was canceled")
