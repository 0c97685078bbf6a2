"""Terminal output: progress bars on a terminal, nothing on a pipe, JSON for scripts.

rich is slow to import, so it is loaded only when something is drawn or printed
to stderr; a quiet command (an unchanged backup on a pipe) never loads it.
"""

from __future__ import annotations

import contextlib
import functools
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console

    from cloudkeep.operations import Progress as Report
    from cloudkeep.operations import ProgressFn


@functools.cache
def err() -> Console:
    """The stderr console, made on first use."""
    from rich.console import Console

    return Console(stderr=True, highlight=False)


def notice(message: str) -> None:
    """One line on stderr after a bold ``cloudkeep:``; the message is shown as it is."""
    from rich.markup import escape

    err().print(f"[bold]cloudkeep:[/bold] {escape(one_line(message))}", soft_wrap=True)


def one_line(text: str) -> str:
    """``text`` with control characters (a newline in a file name, say) escaped."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def error(message: str) -> None:
    """One plain line on stderr (no markup: messages may hold brackets)."""
    err().print(one_line(message), soft_wrap=True, markup=False)


@contextlib.contextmanager
def progress_bar(label: str, enabled: bool = True) -> Iterator[ProgressFn | None]:
    """A progress callback drawing bytes, rate and ETA; None when not on a terminal."""
    if not enabled or not sys.stderr.isatty():
        yield None
        return
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TaskID,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        DownloadColumn(binary_units=True),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=err(),
        transient=True,
    ) as bar:
        task: TaskID = bar.add_task(label, total=None)

        def update(report: Report) -> None:
            bar.update(task, completed=report.done, total=report.total or None)

        yield update


def size_text(count: int) -> str:
    """Bytes in binary units, as restic lists them: ``512 B``, ``1.234 MiB``."""
    if count < 1024:
        return f"{count} B"
    size = count / 1024
    for unit in ("KiB", "MiB", "GiB"):
        if size < 1024:
            return f"{size:.3f} {unit}"
        size /= 1024
    return f"{size:.3f} TiB"


def print_json(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()
