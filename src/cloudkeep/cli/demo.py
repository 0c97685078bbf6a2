"""``cloudkeep demo``: the whole story on made-up data (see ``cloudkeep.demo``)."""

# No ``from __future__ import annotations``: Typer would compile every option's
# annotation string again each time it builds the commands.
import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from cloudkeep.cli.app import JsonOption, app
from cloudkeep.cli.output import err, error, notice, print_json
from cloudkeep.cli.params import FastCommand

if TYPE_CHECKING:
    from rich.console import Console

    from cloudkeep.demo import DemoReport, FinishedFn, StartedFn, Step

NEXT = (
    "Next: back up your own data with 'cloudkeep setup', or 'cloudkeep --data DIR "
    '--store URL backup\' (see "Back up your own data" in the README).'
)


@app.command(cls=FastCommand)
def demo(
    path: Annotated[
        str | None,  # not Path: Typer would build a pydantic adapter for it
        typer.Option(help="Run in this new or empty folder, and keep it afterwards."),
    ] = None,
    keep: Annotated[
        bool, typer.Option("--keep", help="Keep the temporary folder the demo ran in.")
    ] = False,
    size_mib: Annotated[
        int | None,
        typer.Option("--size-mib", help="Size of the made-up app folder (default 200)."),
    ] = None,
    json: JsonOption = False,
) -> None:
    """Back up a made-up app folder while it is written to, change 1% of it, back up
    again, restore it as a new machine would and verify it, timing each step. All in
    a folder of its own: your configuration, key and store are never touched."""
    from rich.console import Console

    from cloudkeep.demo import DEFAULT_SIZE_MIB, check_size, demo_folder, run_demo

    size = DEFAULT_SIZE_MIB if size_mib is None else size_mib
    check_size(size)
    out = Console(highlight=False, soft_wrap=True)
    with demo_folder(Path(path) if path else None, keep) as root:
        if path is None:
            fate = "kept" if keep else "removed at the end; --keep keeps it"
            notice(f"running the demo in {root} ({fate})")
        with _progress(out, story=not json) as (started, finished):
            report = run_demo(root, size, started=started, finished=finished, notice=notice)
    kept = path is not None or keep
    if json:
        import json as json_text

        print_json(json_text.dumps({**report.to_dict(), "kept": kept}))
    else:
        _print_figures(out, report, kept)
    for problem in report.problems:
        error(f"cloudkeep: error: {problem}")
    if not report.verified:
        raise typer.Exit(2)


@contextlib.contextmanager
def _progress(
    out: "Console", story: bool
) -> "Iterator[tuple[StartedFn | None, FinishedFn | None]]":
    """A spinner naming the running step (on a terminal), and with ``story`` one line
    per step done."""

    def told(number: int, step: "Step") -> None:
        out.print(f"{number}. {step.title}: {step.detail} ({step.seconds:.1f} s)", markup=False)

    finished = told if story else None
    if not sys.stderr.isatty():
        yield None, finished
        return
    with err().status("") as status:

        def started(number: int, total: int, title: str) -> None:
            status.update(f"step {number}/{total}: {title}...")

        yield started, finished


def _mib(size: int) -> str:
    return f"{size / (1024 * 1024):,.1f}" if size else ""


def _print_figures(out: "Console", report: "DemoReport", kept: bool) -> None:
    from rich.table import Table

    table = Table(box=None)
    table.add_column("step", no_wrap=True)
    for name in ("s", "data MiB", "added MiB", "store MiB", "ratio"):
        table.add_column(name, justify="right", no_wrap=True)
    for number, step in enumerate(report.steps, 1):
        table.add_row(
            f"{number}. {step.title}",
            f"{step.seconds:.1f}",
            _mib(step.folder_bytes),
            _mib(step.added_bytes) if step.store_bytes else "",
            _mib(step.store_bytes),
            f"{step.ratio:.1f}x" if step.ratio else "",
        )
    table.add_row("all steps", f"{report.seconds:.1f}")
    out.print()
    out.print(table, soft_wrap=False)
    out.print(
        "s: seconds; added: what the backup added to the store; ratio: bytes backed up "
        "over the store's size (dedup and compression).",
        markup=False,
    )
    outcome = "verified" if report.verified else "NOT verified"
    out.print(
        f"The new machine's copy is {outcome}: {report.databases} databases, "
        f"{report.rows:,} rows and {report.files} files.",
        markup=False,
    )
    if kept:
        out.print(f"The demo folder is kept in {report.folder}.", markup=False)
    out.print(NEXT, markup=False)
