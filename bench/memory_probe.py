"""Peak RSS and time of cloudkeep's backups and new-machine restore, old code against new.

    python bench/memory_probe.py --size-mib 600 [--code new=src --code old=/tmp/base/src]

For each ``--code`` (a ``src`` folder put first on ``PYTHONPATH``), in turn: a fresh copy
of the generated folder, a fresh store, the initial backup, the 1% mutation and its
backup, the unchanged backup, then the restore onto a new machine (as ``run.py``'s:
only the store and the passphrase, the store's files dropped from the page cache). Prints wall,
CPU and peak RSS (the process tree, as ``run.py`` measures it) of each step. With
``--in-place`` the generated folder itself is backed up and mutated (no copy: for
sizes where a second copy does not fit on the disk).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import generate
import harness
import run
import stores

MIB = harness.MIB


def probe(
    label: str, src: str, base: Path, work: Path, in_place: bool, restore: bool, quick: bool
) -> None:
    tool = harness.Cloudkeep(work / f"ck-{label}")
    env = {"PYTHONPATH": str(Path(src).resolve())}
    if tool.workdir.exists():
        shutil.rmtree(tool.workdir)
    live = base if in_place else work / "live"
    if not in_place:
        run.copy_tree(base, live)
    tool.setup()
    logs = tool.workdir / "logs"

    def measured(step: str, cmd: harness.Cmd) -> None:
        cmd.env.update(env)
        m = harness.run_measured(cmd, logs / f"{step}.log", tool.loc.bytes)
        print(
            f"{label:>5} {step:<10} rc={m.rc} wall={m.wall_s:6.2f}s cpu={m.cpu_s:6.2f}s "
            f"rss={m.peak_rss_bytes / MIB:5.0f}MiB added={m.added_bytes / MIB:7.1f}MiB "
            f"others={100 * harness.other_load(m.as_dict()):.0f}%",
            flush=True,
        )
        if m.rc:
            raise SystemExit(f"{step} failed, see {m.log}")

    measured("initial", tool.backup(live, 1))
    if not quick:
        generate.mutate(live, seed=2)
        measured("after-1%", tool.backup(live, 2))
        measured("unchanged", tool.backup(live, 3))
    if restore:
        target = run.empty_folder(tool.workdir / "restore")
        machine = run.empty_folder(tool.workdir / "new-machine")
        cmd = tool.restore_new_machine(target, machine)
        stores.drop_page_cache(tool.loc.local_files())
        measured("restore", cmd)
    shutil.rmtree(tool.workdir)
    if not in_place:
        shutil.rmtree(live)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size-mib", type=float, default=600)
    parser.add_argument("--code", action="append", help="label=src folder", default=None)
    parser.add_argument("--workdir", type=Path, default=Path(__file__).parent / "work")
    parser.add_argument("--in-place", action="store_true")
    parser.add_argument("--no-restore", action="store_true")
    parser.add_argument("--quick", action="store_true", help="initial backup and restore only")
    args = parser.parse_args()
    root = args.workdir / f"{args.size_mib:g}mib"
    run.prepare_base(root, args.size_mib, 1)
    codes = args.code or [f"new={Path(__file__).resolve().parent.parent / 'src'}"]
    for code in codes:
        label, src = code.split("=", 1)
        if args.in_place:
            run.prepare_base(root, args.size_mib, 1)
        probe(label, src, root / "base", root, args.in_place, not args.no_restore, args.quick)
        if args.in_place:
            shutil.rmtree(root / "base")  # mutated: generated again for the next code


if __name__ == "__main__":
    main()
