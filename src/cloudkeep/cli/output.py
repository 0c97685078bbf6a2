"""Terminal output: progress bars on a terminal, nothing on a pipe, JSON for scripts."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from cloudkeep.snapshot.progress import Progress as Report
from cloudkeep.snapshot.progress import ProgressFn

err = Console(stderr=True, highlight=False)


def notice(message: str) -> None:
    err.print(f"[bold]cloudkeep:[/bold] {message}", soft_wrap=True)


@contextlib.contextmanager
def progress_bar(label: str, enabled: bool = True) -> Iterator[ProgressFn | None]:
    """A progress callback drawing bytes, rate and ETA; None when not on a terminal."""
    if not enabled or not sys.stderr.isatty():
        yield None
        return
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        DownloadColumn(binary_units=True),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=True,
    ) as bar:
        task: TaskID = bar.add_task(label, total=None)

        def update(report: Report) -> None:
            bar.update(task, completed=report.done, total=report.total or None)

        yield update


def print_json(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()
