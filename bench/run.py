"""cloudkeep vs restic vs borg on the same live-app data folder, tools interleaved.

    python bench/run.py --size-mib 600                        # local store, all tools
    python bench/run.py --size-mib 200 --store s3 --tools cloudkeep,restic
    python bench/run.py --size-mib 200 --store s3 --link 100mbit,40ms --tools cloudkeep,restic

For each repetition, each tool in turn runs its whole sequence on a fresh copy of the same
generated folder and a fresh encrypted repository: 1. first backup, 2. backup after a 1%
day-of-use update, 3. backup with nothing changed, (cloudkeep only) 4r. restore reusing
the live data, 4. restore onto a new machine (empty target, fresh caches, cold page
cache). Every restore is checked row by row and byte for byte against the source. Prints
a table and writes ``bench/results/<date>-<size>mib[-s3][-link].{json,txt,png}``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import generate
import harness
import summary
import verify
from harness import MIB, Cmd, Measure, Tool
from stores import Link, Store, drop_page_cache, parse_link
from summary import STEP_LABEL, STEPS

BENCH = Path(__file__).resolve().parent
DISK_FACTOR = 4  # base + live copy + repository + one restore, with room to spare
COLD_MEANING = {
    "drop_caches": "sync; echo 3 > /proc/sys/vm/drop_caches: the whole machine's clean "
                   "page cache, the store's files and every tool's program included",
    "fadvise": "posix_fadvise(POSIX_FADV_DONTNEED) over every file of the store: the "
               "store is cold, each tool's program as warm as after installing it",
    "none": "nothing could be dropped: the store may be warm",
}
S3_COLD_NOTE = ("; moto keeps objects in its memory, so an S3 store is never cold "
                "(only --cold-cache machine makes programs and libraries cold)")
MEDIAN_KEYS = ("wall_s", "cpu_s", "user_s", "sys_s", "peak_rss_bytes", "added_bytes",
               "other_cpu_s", "server_cpu_s")


def log(msg: str) -> None:
    """Progress on stderr so stdout stays the table."""
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def copy_tree(src: Path, dst: Path) -> None:
    """``cp -a`` (reflink when the filesystem can) so each tool starts from the same bytes."""
    if dst.exists():
        shutil.rmtree(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["cp", "-a", "--reflink=auto", str(src), str(dst)], check=True)


def check_disk(root: Path, size_mib: float) -> str | None:
    """Why there is not enough free disk for a run of this size, or None."""
    base = root / "base"
    have = harness.dir_bytes(base) if (root / "base.json").exists() and base.exists() else 0
    need = DISK_FACTOR * size_mib * MIB - have
    free = shutil.disk_usage(root).free
    if free < need:
        return (f"not enough free disk in {root}: {free / MIB / 1024:.1f} GiB free, a "
                f"{size_mib:g} MiB run needs about {need / MIB / 1024:.1f} GiB more "
                f"({DISK_FACTOR}x the size: data, its working copy, a repository and a "
                "restore); free some space or choose a smaller --size-mib")
    return None


def prepare_base(root: Path, size_mib: float, seed: int) -> dict[str, Any]:
    """Generate the data folder once per (size, seed); reused by later runs."""
    base = root / "base"
    marker = root / "base.json"
    if marker.exists():
        info = json.loads(marker.read_text())
        if info.get("seed") == seed and info.get("size_mib") == size_mib and base.exists():
            log(f"reusing generated data in {base}")
            return dict(info)
    if base.exists():
        shutil.rmtree(base)
    log(f"generating {size_mib:g} MiB data folder (seed {seed}) in {base}")
    gs = generate.generate(base, size_mib=size_mib, seed=seed)
    info = {k: v for k, v in asdict(gs).items() if k != "files"}
    info["size_mib"] = size_mib
    info["files"] = len(gs.files)
    marker.write_text(json.dumps(info, indent=2))
    log(f"generated {gs.total_bytes / MIB:.0f} MiB, {gs.rows} rows in {gs.seconds:.1f} s")
    return info


def db_size(data: Path) -> int:
    """Size of the large database as the app leaves it (main file + -wal)."""
    db = data / generate.SNIPPETS_DB
    return sum(p.stat().st_size for p in (db, Path(f"{db}-wal")) if p.exists())


def find_restored_root(target: Path) -> Path | None:
    """The restored data folder: tools nest the source's absolute path differently."""
    for p in sorted(target.rglob("snippets.db"), key=lambda q: len(q.parts)):
        if p.parent.name == generate.APP_DIR:
            return p.parent.parent
    return None


def verify_restore(source: Path, target: Path) -> dict[str, Any]:
    """The restore equals the source: databases row by row, other files byte for byte."""
    root = find_restored_root(target)
    if root is None:
        return {"ok": False, "problems": [f"no {generate.SNIPPETS_DB} under {target}"]}
    return {**verify.verify_tree(source, root), "restored_bytes": harness.dir_bytes(root)}


def empty_folder(path: Path) -> Path:
    """``path`` as a new empty folder (whatever was there removed)."""
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


class Sequence:
    """One tool's whole sequence on one store: backups, restores, checks."""

    def __init__(self, tool: Tool, store: Store, live: Path, settle_s: float,
                 link_restore: bool, cold_machine: bool = False) -> None:
        self.tool, self.store, self.live = tool, store, live
        self.cold_machine = cold_machine
        self.settle_s = settle_s
        self.link_restore = link_restore
        self.logs = tool.workdir / "logs"
        self.out: dict[str, Any] = {"version": tool.version(), "steps": {}, "verify": {}}

    def measure(self, step: str, cmd: Cmd, backup: bool) -> Measure:
        """Run one measured step; records it, logs it."""
        log(f"{self.tool.name}: {STEP_LABEL[step]}")
        quiet = harness.wait_quiet(self.settle_s) if self.settle_s else {}
        link0 = self.store.proxy_stats()
        m = harness.run_measured(cmd, self.logs / f"{step}.log",
                                 self.tool.loc.bytes if backup else None,
                                 self.store.server_procs())
        m.settle = quiet
        d = m.as_dict()
        if link0:
            link1 = self.store.proxy_stats()
            # Counters are per step; the proxy keeps only a run-wide "most open at once".
            d["link"] = {k: link1[k] - link0.get(k, 0) for k in link1 if k != "max_active"}
            d["link"]["max_active_so_far"] = link1.get("max_active")
        self.out["steps"][step] = d
        log(f"{self.tool.name}: {step} rc={m.rc} wall={m.wall_s:.2f}s cpu={m.cpu_s:.2f}s "
            f"rss={m.peak_rss_bytes / MIB:.0f}MiB"
            + (f" added={m.added_bytes / MIB:.1f}MiB" if backup else ""))
        if m.rc != 0:
            self.out["error"] = f"{STEP_LABEL[step]} failed (exit {m.rc}), see {m.log}"
        return m

    def check(self, step: str, target: Path) -> None:
        v = verify_restore(self.live, target)
        self.out["verify"][step] = v
        log(f"{self.tool.name}: {step} verified: {v['ok']} {'; '.join(v['problems'][:3])}")

    def run(self, base: Path, mutate_seed: int) -> dict[str, Any]:
        """The whole sequence; stops at the first failing step."""
        tool, out = self.tool, self.out
        if tool.workdir.exists():
            shutil.rmtree(tool.workdir)
        copy_tree(base, self.live)
        os.sync()  # the copy's writeback must not land in a measured step
        tool.setup()
        out["page_cache"] = harness.page_cache_read_speed(self.live)  # also the warm-up read
        for n, step in enumerate(summary.BACKUPS, 1):
            if step == "mutation_1pct":
                ms = generate.mutate(self.live, seed=mutate_seed)
                os.sync()
                out["mutation"] = {"rows_updated": ms.rows_updated, "seconds": ms.seconds}
                out["data_state"] = generate.db_fingerprint(self.live / generate.SNIPPETS_DB)
            before = harness.source_state(self.live)
            m = self.measure(step, tool.backup(self.live, n), backup=True)
            if harness.source_state(self.live) != before:
                out["steps"][step]["note"] = "tool modified the source folder"
            tool.after_backup(m, n)
            if m.rc != 0:
                return out
        out["store_bytes"] = tool.loc.bytes()

        direct = self.store.link is not None and not self.link_restore
        if direct:
            out["restore_via"] = "S3 directly (not through the link: add --link-restore)"
        else:
            out["restore_via"] = {"file": "local store", "s3": "S3"}[self.store.kind] + (
                " through the link" if self.store.link else "")
        reuse = tool.workdir / "restore-reuse"
        if (cmd := tool.restore_reuse(reuse, direct)) is not None:
            empty_folder(reuse)
            if self.measure("restore_reuse", cmd, backup=False).rc != 0:
                return out
            self.check("restore_reuse", reuse)
            shutil.rmtree(reuse)  # disk: the next restore needs the room

        target = empty_folder(tool.workdir / "restore-new")
        machine = empty_folder(tool.workdir / "new-machine")
        cmd = tool.restore_new_machine(target, machine, direct=direct)
        out["cold_cache"] = drop_page_cache(tool.loc.local_files(), self.cold_machine)
        if self.measure("restore_new", cmd, backup=False).rc != 0:
            return out
        self.check("restore_new", target)
        return out


def merge_runs(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Median of each figure over repeated runs (the machine may be shared and noisy)."""
    if len(runs) == 1:
        return runs[0]
    out = {**runs[-1], "steps": {}, "runs": [r.get("steps", {}) for r in runs]}
    for step in STEPS:
        ms = [r["steps"][step] for r in runs if step in r.get("steps", {})]
        if not ms:
            continue
        merged = dict(ms[-1])
        for key in MEDIAN_KEYS:
            vals = sorted(m.get(key, 0) for m in ms)
            merged[key] = vals[len(vals) // 2] if len(vals) % 2 else (
                (vals[len(vals) // 2 - 1] + vals[len(vals) // 2]) / 2)
        merged["repeats"] = len(ms)
        out["steps"][step] = merged
    out["verify"] = {}
    for r in runs:  # a restore that failed its check in any run stays failed
        for step, v in r.get("verify", {}).items():
            if step not in out["verify"] or not v["ok"]:
                out["verify"][step] = v
    if any("error" in r for r in runs):
        out["error"] = next(r["error"] for r in runs if "error" in r)
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--size-mib", type=float, default=600.0)
    ap.add_argument("--tools", default="cloudkeep,restic,borg", help="run in this order")
    ap.add_argument("--store", choices=("file", "s3"), default="file",
                    help="local folders, or buckets on a moto S3 server")
    ap.add_argument("--link", type=_link_arg, default=None, metavar="RATE,RTT",
                    help="with --store s3: every tool reaches S3 through an emulated link, "
                         "e.g. 100mbit,40ms (rate each way, round-trip time)")
    ap.add_argument("--link-restore", action="store_true",
                    help="with --link: restore through the link too (default: restore from "
                         "S3 directly, saying so)")
    ap.add_argument("--cold-cache", choices=("store", "machine"), default="store",
                    help="before each new-machine restore, drop the store's files from the "
                         "page cache (default), or the whole machine's cache (root only; "
                         "programs and libraries go cold too, as after a reboot)")
    ap.add_argument("--workdir", type=Path, default=BENCH / "work")
    ap.add_argument("--results", type=Path, default=BENCH / "results")
    ap.add_argument("--seed", type=int, default=1, help="generator seed")
    ap.add_argument("--mutate-seed", type=int, default=2, help="day-of-use mutation seed")
    ap.add_argument("--repeat", type=int, default=1,
                    help="run every tool's sequence N times, interleaved; report medians")
    ap.add_argument("--settle", type=float, default=10.0,
                    help="before each step wait up to S seconds for other load to drop")
    ap.add_argument("--keep", action="store_true", help="keep repositories and restores")
    ap.add_argument("--no-service", action="store_true", help="skip the service bench")
    ap.add_argument("--service-backups", type=int, default=1000)
    ap.add_argument("--service-rounds", type=int, default=3)
    args = ap.parse_args(argv)
    if args.link is not None and args.store != "s3":
        ap.error("--link needs --store s3 (the link sits in front of the S3 server)")
    if args.link_restore and args.link is None:
        ap.error("--link-restore needs --link")
    args.names = [t.strip() for t in args.tools.split(",") if t.strip()]
    unknown = [n for n in args.names if n not in harness.TOOLS]
    if unknown:
        ap.error(f"unknown tools {unknown}; choose from {list(harness.TOOLS)}")
    return args


def _link_arg(text: str) -> Link:
    try:
        return parse_link(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def results_name(size_mib: float, store: str, link: bool, day: str) -> str:
    """``<date>-<size>mib[-s3][-link]``."""
    return f"{day}-{size_mib:g}mib" + ("-s3" if store == "s3" else "") + ("-link" if link else "")


def run_tools(args: argparse.Namespace, store: Store, root: Path) -> dict[str, Any]:
    """Every tool's sequence, interleaved: for each repetition, each tool in turn."""
    base, live = root / "base", root / "live"
    tools: dict[str, Tool] = {}
    results: dict[str, Any] = {}
    runs: dict[str, list[dict[str, Any]]] = {}
    for name in args.names:
        tool = harness.TOOLS[name](root / name, store.location(name, root / name))
        why = store.unsupported(name) or tool.missing()
        if why:
            log(f"SKIP {why}")
            results[name] = {"skipped": why}
        else:
            tools[name] = tool
            runs[name] = []
    for rep in range(args.repeat):
        for name, tool in tools.items():
            if runs[name] and "error" in runs[name][-1]:
                continue
            if args.repeat > 1:
                log(f"{name}: run {rep + 1}/{args.repeat}")
            runs[name].append(Sequence(tool, store, live, args.settle,
                                       args.link_restore, args.cold_cache == "machine"
                                       ).run(base, args.mutate_seed))
            if not args.keep:
                tool.loc.remove()
                for sub in ("restore-new", "new-machine", "cache", "base", "device"):
                    shutil.rmtree(tool.workdir / sub, ignore_errors=True)
    for name in tools:
        results[name] = merge_runs(runs[name])
    return results


def main(argv: list[str] | None = None) -> int:
    """CLI entry point."""
    args = parse_args(argv)
    harness.compile_bytecode()
    size_tag = f"{args.size_mib:g}mib"
    root = (args.workdir / size_tag).resolve()
    root.mkdir(parents=True, exist_ok=True)
    if (why := check_disk(root, args.size_mib)) is not None:
        log(f"REFUSED: {why}")
        return 2
    info = prepare_base(root, args.size_mib, args.seed)
    base, live = root / "base", root / "live"
    db_bytes = db_size(base)

    store = Store(args.store, root / "logs", args.link)
    try:
        results = run_tools(args, store, root)
        store_info = store.describe()
    finally:
        store.close()
    shutil.rmtree(live, ignore_errors=True)

    speeds = [r["page_cache"]["mib_per_s"] for r in results.values() if "page_cache" in r]
    speed = sorted(speeds)[len(speeds) // 2] if speeds else 0.0
    data_bytes = harness.dir_bytes(base)
    floor_s = round(data_bytes / MIB / speed, 3) if speed else None

    service: dict[str, Any] | None = None
    if "steps" in results.get("cloudkeep", {}) and not args.no_service and args.store == "file":
        import service as service_bench

        service = service_bench.run_service_bench(
            root / "service", base, backups=args.service_backups,
            rounds=args.service_rounds, log=log)
        if not args.keep:
            shutil.rmtree(root / "service", ignore_errors=True)

    methods = sorted({r["cold_cache"] for r in results.values() if "cold_cache" in r})
    method = "/".join(methods) or "-"
    meaning = "; ".join(COLD_MEANING.get(m, m) for m in methods) + (
        S3_COLD_NOTE if args.store == "s3" else "")
    restore_via_link = args.link is not None and args.link_restore
    rat = summary.ratios(results)
    tgt = summary.targets(results, rat, db_bytes, service, store_info, restore_via_link)
    states = {json.dumps(r["data_state"], sort_keys=True)
              for r in results.values() if "data_state" in r}
    now = dt.datetime.now(dt.UTC)
    doc = {
        "date": now.isoformat(timespec="seconds"),
        "size_mib": args.size_mib,
        "command": " ".join(sys.argv),
        "machine": harness.machine_info(),
        "versions": {n: r.get("version") for n, r in results.items()},
        "order": "interleaved: for each repetition, each tool's whole sequence in turn",
        "repeat": args.repeat,
        "rows": {s: {"label": STEP_LABEL[s], "measures": summary.STEP_MEANING[s]}
                 for s in STEPS},
        "store": store_info,
        "cold_cache": {"method": method, "meaning": meaning},
        "data": {**info, "data_bytes": data_bytes, "db_bytes": db_bytes,
                 "page_cache_read_mib_s": speed, "page_cache_read_floor_s": floor_s,
                 "identical_data_state_across_tools": len(states) <= 1},
        "tools": results,
        "ratios_vs_restic": rat,
        "service": service,
        "targets": tgt,
    }
    args.results.mkdir(parents=True, exist_ok=True)
    stem = str(args.results / results_name(args.size_mib, args.store, args.link is not None,
                                           now.strftime("%Y-%m-%d")))
    Path(f"{stem}.json").write_text(json.dumps(doc, indent=2) + "\n")
    text = summary.table(doc)
    if service:
        text += "\n\n" + summary.service_summary(service)
    print(text)
    Path(f"{stem}.txt").write_text(text + "\n")
    where = summary.describe_store(store_info).split(":")[0]
    summary.chart(doc, Path(f"{stem}.png"),
                  f"{args.size_mib:g} MiB app folder, {where}"
                  + (f", {args.link.describe()}" if args.link else "")
                  + f", {doc['machine']['nproc']} cores ({now:%Y-%m-%d})")
    log(f"wrote {stem}.json, .txt and .png")
    ok = all("error" not in r and all(v["ok"] for v in r.get("verify", {}).values())
             for r in results.values())
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
