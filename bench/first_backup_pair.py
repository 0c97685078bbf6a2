"""The local first backup (and the backup after the 1% update), old code against new, paired.

Each round backs up a fresh copy of the generated folder into a fresh folder store once
per variant, the order alternating round by round; ``--update`` then writes the
day-of-use mutation into that copy (changed files rewritten in place, as an app would)
and backs up again. Every run prints its wall time, the CPU of the process tree and
``others%``: the machine's CPU used by other processes meanwhile, as a share of all its
cores. ``--timeline`` samples the CPU of each thread every 100 ms instead (threads named
after Python's, through a ``sitecustomize`` on ``PYTHONPATH``): who is busy when.

``--variant NAME=PATH/src`` runs the CLI from that source tree (``PYTHONPATH``) with this
venv's interpreter; ``new`` (this tree) always runs::

    git archive 3b62fe0 src | tar -x -C /tmp/old
    /work/wt/timed .venv/bin/python bench/first_backup_pair.py --variant old=/tmp/old/src \\
        --rounds 4 --update
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import generate

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"
#: Names each Python thread in /proc (``comm``) so the timeline can tell them apart.
THREAD_NAMES = """\
import ctypes, threading
_prctl = ctypes.CDLL(None).prctl
_run = threading.Thread.run
def _named(self):
    _prctl(15, self.name[:15].encode(), 0, 0, 0)
    return _run(self)
threading.Thread.run = _named
"""


def busy_seconds() -> float:
    """CPU seconds the whole machine has spent busy (``/proc/stat``)."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(values) - values[3] - values[4]) / os.sysconf("SC_CLK_TCK")


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds of each thread of ``pid``, by "name/tid"."""
    tick = os.sysconf("SC_CLK_TCK")
    found: dict[str, float] = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for tid in tids:
        try:
            stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
            name = Path(f"/proc/{pid}/task/{tid}/comm").read_text().strip()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        found[f"{name}/{tid}"] = (int(fields[11]) + int(fields[12])) / tick
    return found


def timeline(process: subprocess.Popen[bytes]) -> None:
    """Print the busiest threads of each 100 ms while ``process`` runs, then their totals."""
    start, machine = time.perf_counter(), busy_seconds()
    before: dict[str, float] = {}
    seen: dict[str, float] = {}  # threads that ended keep their last figure
    while process.poll() is None:
        time.sleep(0.1)
        now, machine_now = thread_cpu(process.pid), busy_seconds()
        step = {name: cpu - before.get(name, 0.0) for name, cpu in now.items()}
        ours = sum(step.values())
        others = max(0.0, machine_now - machine - ours)
        top = sorted(step.items(), key=lambda item: -item[1])[:5]
        shown = "  ".join(f"{name.split('/')[0]}:{cpu * 1000:.0f}" for name, cpu in top if cpu)
        print(f"  {time.perf_counter() - start:5.2f} s  ours {ours * 10:3.1f}  "
              f"others {others * 10:3.1f} cores  {shown}")
        before = now
        seen.update(now)
        machine = machine_now
    busiest = sorted(seen.items(), key=lambda item: -item[1])[:6]
    print("  per thread: " + ", ".join(f"{name.split('/')[0]} {cpu:.2f}" for name, cpu in busiest))


def timed(cmd: list[str], env: dict[str, str], show_timeline: bool) -> str:
    """Run ``cmd``; its wall time, CPU of the process tree and others% as text."""
    before, machine = resource.getrusage(resource.RUSAGE_CHILDREN), busy_seconds()
    start = time.perf_counter()
    process = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL)
    if show_timeline:
        timeline(process)
    if process.wait() != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({process.returncode})")
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    user, system = after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime
    others = max(0.0, busy_seconds() - machine - user - system) / (wall * (os.cpu_count() or 1))
    return f"wall {wall:.2f} s  user {user:.2f}  sys {system:.2f}  others {others:.0%}"


def rewrite_changed(source: Path, target: Path) -> None:
    """Copy the files of ``source`` whose size or mtime differ into ``target``, in place."""
    for path in sorted(source.rglob("*")):
        if path.is_dir():
            continue
        into = target / path.relative_to(source)
        stat = path.stat()
        old = into.stat() if into.exists() else None
        if old is not None and (old.st_size, old.st_mtime_ns) == (stat.st_size, stat.st_mtime_ns):
            continue
        with path.open("rb") as reading, into.open("r+b" if old else "wb") as writing:
            shutil.copyfileobj(reading, writing, 1 << 20)
            writing.truncate()
        os.utime(into, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def one_run(name: str, src: str, base: Path, mutated: Path, work: Path,
            args: argparse.Namespace) -> None:
    data, store, device = work / "data", work / "store", work / "device"
    for path in (data, store, device):
        shutil.rmtree(path, ignore_errors=True)
    shutil.copytree(base, data, symlinks=True)
    store.mkdir(parents=True)
    os.sync()
    env = {key: value for key, value in os.environ.items() if not key.startswith("CLOUDKEEP")}
    paths = [src, str(work / "site")] if args.timeline else [src]
    env.update(PYTHONPATH=os.pathsep.join(paths), CLOUDKEEP_CONFIG_DIR=str(device / "config"),
               CLOUDKEEP_CACHE_DIR=str(device / "cache"))
    cli = [sys.executable, "-m", "cloudkeep", "--data", str(data), "--store", f"file://{store}",
           "--passphrase-file", str(work / "pass")]
    subprocess.run([*cli, "init"], env=env, check=True, capture_output=True)
    print(f"{name:>8} first  {timed([*cli, 'backup'], env, args.timeline)}", flush=True)
    stored = sum(f.stat().st_size for f in store.rglob("*") if f.is_file())
    print(f"{name:>8}        store {stored / 2**20:.1f} MiB", flush=True)
    if args.update:
        rewrite_changed(mutated, data)
        os.sync()
        print(f"{name:>8} update {timed([*cli, 'backup'], env, args.timeline)}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--size-mib", type=int, default=600)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--variant", action="append", default=[], metavar="NAME=SRC")
    parser.add_argument("--update", action="store_true", help="also the backup after 1%%")
    parser.add_argument("--timeline", action="store_true", help="per-thread CPU every 100 ms")
    parser.add_argument("--workdir", type=Path, default=HERE / "work")
    args = parser.parse_args()
    variants = dict(item.split("=", 1) for item in args.variant)
    variants["new"] = str(SRC)
    base = args.workdir / f"{args.size_mib}mib" / "base"
    if not base.exists():
        generate.generate(base, args.size_mib, seed=1)
    mutated = args.workdir / f"{args.size_mib}mib" / "mutated"
    if args.update and not mutated.exists():
        shutil.copytree(base, mutated, symlinks=True)
        generate.mutate(mutated, seed=2)
    work = Path(tempfile.mkdtemp(prefix="pair-", dir=args.workdir))
    try:
        (work / "pass").write_text("first-backup-pair-passphrase\n")
        (work / "pass").chmod(0o600)
        (work / "site").mkdir()
        (work / "site" / "sitecustomize.py").write_text(THREAD_NAMES)
        names = list(variants)
        for number in range(args.rounds):
            for name in names if number % 2 == 0 else names[::-1]:
                one_run(name, variants[name], base, mutated, work, args)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
