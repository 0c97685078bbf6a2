"""``cloudkeep diff A B`` against restoring both backups and running SQLite's ``sqldiff``.

The benchmark folder (``generate.py``, 600 MiB by default) is backed up to a local
folder store, the day-of-use mutation (1% of the snippets rewritten) applied, and
backed up again. Then, each as a measured child process:

- ``cloudkeep diff A B --json`` (its bytes fetched come from its own report);
- ``cloudkeep restore A --fetch-all`` and ``restore B --fetch-all`` into empty
  folders, then ``sqldiff`` on the two restored ``snippets.db``.

The two must agree table by table (rows added, removed, changed); the figures and
their ratio go to stdout and ``bench/results/<date>-diff-<size>mib.json``::

    .venv/bin/python bench/diff.py --size-mib 600
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "tests" / "diff")]

from generate import SNIPPETS_DB, generate, mutate  # noqa: E402
from harness import (  # noqa: E402
    PASSPHRASE,
    Cmd,
    Measure,
    dir_bytes,
    machine_info,
    run_measured,
    run_quiet,
)
from sqldiff_anchor import SQLDIFF, count_statements  # noqa: E402

MIB = 1024 * 1024


class Cloudkeep:
    """The cloudkeep CLI on one data folder and a local folder store, with its own
    configuration, cache and home folders."""

    def __init__(self, workdir: Path, data: Path) -> None:
        self.exe = str(Path(sys.executable).with_name("cloudkeep"))
        self.store = workdir / "store"
        self.passfile = workdir / "passphrase"
        self.passfile.write_text(PASSPHRASE + "\n")
        self.data = data
        self.env = {
            "CLOUDKEEP_CONFIG_DIR": str(workdir / "config"),
            "CLOUDKEEP_CACHE_DIR": str(workdir / "cache"),
            "HOME": str(workdir / "home"),
        }

    def cmd(self, *args: str) -> Cmd:
        options = ["--data", str(self.data), "--store", self.store.resolve().as_uri()]
        options += ["--passphrase-file", str(self.passfile)]
        return Cmd([self.exe, *options, *args], env=self.env)

    def backup(self) -> str:
        return str(json.loads(run_quiet(self.cmd("backup", "--json")).stdout)["id"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=float, default=600)
    parser.add_argument("--workdir", type=Path, default=HERE / "work")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--mutate-seed", type=int, default=2)
    args = parser.parse_args()

    work = args.workdir / f"diff-{args.size_mib:g}mib"
    base = work / "base"
    if not (base / SNIPPETS_DB).exists():
        print(f"generating {args.size_mib:g} MiB into {base}", file=sys.stderr)
        shutil.rmtree(base, ignore_errors=True)
        generate(base, size_mib=args.size_mib, seed=args.seed)
    run = work / "run"
    shutil.rmtree(run, ignore_errors=True)
    data = run / "data"
    shutil.copytree(base, data)
    tool = Cloudkeep(run, data)
    first = tool.backup()
    changed = mutate(data, seed=args.mutate_seed)
    second = tool.backup()
    print(f"backups {first} and {second}; {changed.rows_updated} rows rewritten", file=sys.stderr)

    logs = run / "logs"
    diffed = run_measured(tool.cmd("diff", first, second, "--json"), logs / "diff.log")
    report = json.loads(diffed.stdout)
    restores = []
    for name, backup in (("a", first), ("b", second)):
        target = run / f"restored-{name}"
        restores.append(
            run_measured(
                tool.cmd("restore", backup, "--target", str(target), "--fetch-all"),
                logs / f"restore-{name}.log",
            )
        )
    restored_a = run / "restored-a" / SNIPPETS_DB
    restored_b = run / "restored-b" / SNIPPETS_DB
    anchor = run_measured(Cmd([SQLDIFF, str(restored_a), str(restored_b)]), logs / "sqldiff.log")
    expected = count_statements(anchor.stdout, restored_a)
    database = next(d for d in report["databases"] if d["path"] == SNIPPETS_DB)
    ours = {t["name"]: (t["added"], t["removed"], t["changed"]) for t in database["tables"]}
    theirs = {n: (c.added, c.removed, c.changed) for n, c in expected.items()}
    if ours != theirs:
        print(f"DISAGREE: cloudkeep {ours} vs sqldiff {theirs}", file=sys.stderr)
        return 1
    baseline_s = sum(m.wall_s for m in restores) + anchor.wall_s
    restored = dir_bytes(run / "restored-a") + dir_bytes(run / "restored-b")
    figures: dict[str, Any] = {
        "size_mib": args.size_mib,
        "database_bytes": (restored_a.stat().st_size, restored_b.stat().st_size),
        "rows_rewritten": changed.rows_updated,
        "tables": ours,
        "method": database["method"],
        "pages": database["pages"],
        "pages_differing": database["pages_differing"],
        "diff": _figures(diffed) | {"fetched_bytes": report["fetched_bytes"]},
        "restore_a": _figures(restores[0]),
        "restore_b": _figures(restores[1]),
        "sqldiff": _figures(anchor),
        "baseline_wall_s": round(baseline_s, 3),
        "baseline_restored_bytes": restored,
        "store_bytes": dir_bytes(tool.store),
        "time_ratio": round(diffed.wall_s / baseline_s, 4),
        "machine": machine_info(),
    }
    print(
        f"cloudkeep diff: {diffed.wall_s:.2f} s, fetched {report['fetched_bytes'] / MIB:.1f} MiB "
        f"({database['method']}: {database['pages_differing']:,} of {database['pages']:,} "
        "pages in differing chunks)\n"
        f"restore both + sqldiff: {baseline_s:.2f} s (restores "
        f"{restores[0].wall_s:.2f} + {restores[1].wall_s:.2f} s, sqldiff {anchor.wall_s:.2f} s), "
        f"restored {restored / MIB:.1f} MiB\n"
        f"ratio: {figures['time_ratio']:.3f} of the time; agree on {ours}"
    )
    results = HERE / "results"
    results.mkdir(exist_ok=True)
    out = results / f"{time.strftime('%Y-%m-%d')}-diff-{args.size_mib:g}mib.json"
    out.write_text(json.dumps(figures, indent=2) + "\n")
    print(f"figures in {out}", file=sys.stderr)
    return 0


def _figures(measure: Measure) -> dict[str, Any]:
    return {
        "wall_s": measure.wall_s,
        "cpu_s": measure.cpu_s,
        "peak_rss_mib": round(measure.peak_rss_bytes / MIB, 1),
    }


if __name__ == "__main__":
    raise SystemExit(main())
