"""The restore onto a new machine: cloudkeep against restic, cold page cache, alternating.

One backup per tool of the generated folder into a fresh store (a local folder, or S3
on a moto server on loopback), then ``--rounds`` rounds in which every tool restores the
latest backup into a new empty folder with a fresh cache folder, after the page cache
was dropped (``sync; echo 3 > /proc/sys/vm/drop_caches``, root only): no live data, as
on the day a laptop is lost. cloudkeep's ``--data`` names a folder that does not exist.
The order of the tools alternates round by round.

Several cloudkeep versions can run side by side for paired old/new comparisons:
``--variant old=PATH/src`` runs the CLI from that source tree (``PYTHONPATH``) with this
venv's interpreter; ``new`` (this tree) always runs. Timed runs belong under
``flock -x /tmp/bench.lock``::

    flock -x /tmp/bench.lock .venv/bin/python bench/restore_newmachine.py --store file --rounds 3
    flock -x /tmp/bench.lock .venv/bin/python bench/restore_newmachine.py --store s3 \\
        --variant old=bench/work/old/src
"""

from __future__ import annotations

import argparse
import filecmp
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import generate
import harness
from harness import MIB, PASSPHRASE, Cmd, run_measured, run_quiet
from stores import MotoServer

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "AKIACLOUDKEEPBENCH",
    "AWS_SECRET_ACCESS_KEY": "cloudkeep-bench-secret-key",
    "AWS_REGION": "us-east-1",
}
BUCKET = "bench"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def drop_caches() -> None:
    """Empty the page cache (root only): every tool reads its store from the device."""
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError as exc:
        log(f"cannot drop the page cache ({exc.strerror}): the store stays warm")


def prepare_base(root: Path, size_mib: int, seed: int) -> Path:
    """The generated folder, made once per size and seed."""
    base, marker = root / "base", root / "base.json"
    want = {"size_mib": size_mib, "seed": seed}
    if marker.exists() and json.loads(marker.read_text()) == want and base.exists():
        return base
    shutil.rmtree(base, ignore_errors=True)
    log(f"generating {size_mib} MiB in {base}")
    generate.generate(base, size_mib=size_mib, seed=seed)
    marker.write_text(json.dumps(want))
    return base


class Store:
    """Where each tool's repository lives: ``file`` (a folder) or ``s3`` (moto)."""

    def __init__(self, kind: str, workdir: Path) -> None:
        self.kind, self.workdir = kind, workdir
        self.moto = MotoServer(workdir / "moto.log") if kind == "s3" else None
        if self.moto is not None:
            self.moto.client().create_bucket(Bucket=BUCKET)

    def cloudkeep_url(self) -> str:
        if self.moto is None:
            path = self.workdir / "repo-cloudkeep"
            path.mkdir(exist_ok=True)
            return path.resolve().as_uri()
        return f"s3://{BUCKET}/cloudkeep?endpoint={self.moto.endpoint}&region=us-east-1"

    def restic_repo(self) -> str:
        if self.moto is None:
            return str(self.workdir / "repo-restic")
        return f"s3:{self.moto.endpoint}/{BUCKET}/restic"

    def env(self) -> dict[str, str]:
        return dict(AWS_ENV) if self.moto is not None else {}

    def close(self) -> None:
        if self.moto is not None:
            self.moto.stop()


class Tools:
    """The command lines of each tool, for backups and new-machine restores."""

    def __init__(self, store: Store, workdir: Path, variants: dict[str, Path]) -> None:
        self.store, self.workdir, self.variants = store, workdir, variants
        self.passfile = workdir / "passphrase"
        self.passfile.write_text(PASSPHRASE + "\n")
        self.passfile.chmod(0o600)
        self.config_dir = workdir / "ck-config"
        self.config_dir.mkdir(exist_ok=True)

    def cloudkeep(self, variant: str, data: Path, *args: str, cache: Path) -> Cmd:
        argv = [sys.executable, "-c", "from cloudkeep.cli.main import run; run()",
                "--data", str(data), "--store", self.store.cloudkeep_url(),
                "--passphrase-file", str(self.passfile), *args]
        env = {**self.store.env(), "PYTHONPATH": str(self.variants[variant]),
               "CLOUDKEEP_CONFIG_DIR": str(self.config_dir), "CLOUDKEEP_CACHE_DIR": str(cache)}
        return Cmd(argv, env)

    def restic(self, *args: str, cache: Path) -> Cmd:
        env = {**self.store.env(), "RESTIC_REPOSITORY": self.store.restic_repo(),
               "RESTIC_PASSWORD_FILE": str(self.passfile), "RESTIC_CACHE_DIR": str(cache),
               "RESTIC_PROGRESS_FPS": "0.2"}
        return Cmd(["restic", *args], env)


def verify(source: Path, target: Path) -> str:
    """'ok' if the restored folder holds the source's content (databases by fingerprint)."""
    restored = next((p.parent.parent for p in sorted(target.rglob("snippets.db"),
                                                     key=lambda q: len(q.parts))), None)
    if restored is None:
        return "no snippets.db restored"
    for path in harness.iter_files(source):
        rel = path.relative_to(source)
        if path.name.endswith(("-wal", "-shm")):
            continue
        copy = restored / rel
        if not copy.exists():
            return f"missing {rel}"
        if path.suffix == ".db":
            if generate.db_fingerprint(path) != generate.db_fingerprint(copy):
                return f"database differs: {rel}"
        elif not filecmp.cmp(path, copy, shallow=False):
            return f"content differs: {rel}"
    return "ok"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mib", type=int, default=600)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--store", choices=("file", "s3"), default="file")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--variant", action="append", default=[],
                        help="NAME=SRC_DIR: also run cloudkeep from this source tree")
    parser.add_argument("--no-restic", action="store_true")
    parser.add_argument("--no-verify", action="store_true")
    parser.add_argument("--workdir", type=Path, default=HERE / "work" / "restore-newmachine")
    parser.add_argument("--json", type=Path, help="write every figure here")
    args = parser.parse_args(argv)

    variants = {"new": SRC}
    for item in args.variant:
        name, _, path = item.partition("=")
        variants[name] = Path(path).resolve()
    base = prepare_base(HERE / "work" / f"{args.size_mib}mib-restore", args.size_mib, args.seed)
    work = args.workdir / args.store
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    store = Store(args.store, work)
    tools = Tools(store, work, variants)
    live = work / "live"
    try:
        subprocess.run(["cp", "-a", "--reflink=auto", str(base), str(live)], check=True)
        gone = work / "new-machine" / "data"  # the new machine's data folder: not there
        log("backups (untimed)")
        run_quiet(tools.cloudkeep("new", live, "backup", cache=work / "ck-cache-backup"))
        run_quiet(tools.restic("init", cache=work / "restic-cache-backup"))
        run_quiet(tools.restic("backup", "--host", "bench", str(live),
                               cache=work / "restic-cache-backup"))
        names = [*variants, *([] if args.no_restic else ["restic"])]
        results: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
        for number in range(args.rounds):
            order = names if number % 2 == 0 else names[::-1]
            for name in order:
                target = work / "target"
                shutil.rmtree(target, ignore_errors=True)
                cache = work / "cache"
                shutil.rmtree(cache, ignore_errors=True)
                if name == "restic":
                    target.mkdir()
                    cmd = tools.restic("restore", "latest", "--target", str(target), cache=cache)
                else:
                    cmd = tools.cloudkeep(name, gone, "restore", "latest", "--target",
                                          str(target), cache=cache)
                drop_caches()
                measure = run_measured(cmd, work / "logs" / f"{number}-{name}.log")
                figures = {"wall_s": measure.wall_s, "user_s": measure.user_s,
                           "sys_s": measure.sys_s, "rss_mib": measure.peak_rss_bytes / MIB,
                           "others_pct": 100 * measure.other_cpu_s / (2 * measure.wall_s)}
                if measure.rc != 0:
                    log(f"{name} failed (exit {measure.rc}): see {measure.log}")
                    return 1
                if number == 0 and not args.no_verify:
                    figures["verified"] = verify(live, target)
                results[name].append(figures)
                log(f"round {number} {name:8} wall {measure.wall_s:5.2f} s  user "
                    f"{measure.user_s:5.2f}  sys {measure.sys_s:5.2f}  rss "
                    f"{figures['rss_mib']:4.0f} MiB  others {figures['others_pct']:3.0f}%"
                    + (f"  verified: {figures['verified']}" if "verified" in figures else ""))
        shutil.rmtree(work / "target", ignore_errors=True)
        print(f"\nrestore onto a new machine, {args.size_mib} MiB, store {args.store}, "
              f"{args.rounds} rounds (medians)")
        restic = results.get("restic")
        restic_wall = statistics.median(r["wall_s"] for r in restic) if restic else None
        for name, runs in results.items():
            wall = statistics.median(r["wall_s"] for r in runs)
            cpu = statistics.median(r["user_s"] + r["sys_s"] for r in runs)
            rss = max(r["rss_mib"] for r in runs)
            others = statistics.median(r["others_pct"] for r in runs)
            ratio = f"{wall / restic_wall:.2f}" if restic_wall else "-"
            print(f"{name:8} wall {wall:5.2f} s (min {min(r['wall_s'] for r in runs):.2f})  "
                  f"cpu {cpu:5.2f} s  rss {rss:4.0f} MiB  others {others:3.0f}%  "
                  f"ratio to restic {ratio}")
        if args.json:
            args.json.write_text(json.dumps(results, indent=2))
    finally:
        store.close()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
