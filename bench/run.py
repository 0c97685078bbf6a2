"""cloudkeep vs restic vs borg on the same live-app data folder, one tool after another.

    python bench/run.py --size-mib 600            # all tools, then the service benchmark
    python bench/run.py --size-mib 200 --tools restic,borg

Per tool: fresh encrypted local repository; 1. initial backup, 2. backup after a 1%
day-of-use mutation, 3. backup with nothing changed, 4. full restore of the latest
backup. Every tool gets its own fresh copy of the same generated folder and the same
deterministic mutation, so all see identical data states. Prints a table and writes
``bench/results/<date>-<size>mib.{json,png}``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
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
from harness import MIB, Cmd, Measure, Tool

BENCH = Path(__file__).resolve().parent
STEPS = ("initial", "mutation_1pct", "unchanged", "restore", "restore_store")
STEP_LABEL = {"initial": "1 initial backup", "mutation_1pct": "2 after 1% mutation",
              "unchanged": "3 unchanged backup", "restore": "4 full restore",
              "restore_store": "4b store-only restore"}
# 4b: the same restore reading every chunk from the repository (cloudkeep's
# --fetch-all; restic and borg always do), compared with restic's step 4.
RATIO_BASE = {"restore_store": "restore"}
RESTORES = ("restore", "restore_store")
WALL_TARGET = {"initial": 0.5, "mutation_1pct": 0.5, "unchanged": 0.5, "restore": 0.7}
ADDED_TARGET = 0.05  # bytes added by the 1% backup / DB size
RSS_TARGET_MIB = 200
P99_TARGET_MS = 20.0


def log(msg: str) -> None:
    """Progress on stderr so stdout stays the table."""
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def copy_tree(src: Path, dst: Path) -> None:
    """``cp -a`` (reflink when the filesystem can) so each tool starts from the same bytes."""
    if dst.exists():
        shutil.rmtree(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["cp", "-a", "--reflink=auto", str(src), str(dst)], check=True)


def prepare_base(root: Path, size_mib: float, seed: int) -> dict[str, Any]:
    """Generate the data folder once per (size, seed); reused by later runs."""
    base = root / "base"
    marker = root / "base.json"
    if marker.exists():
        info = json.loads(marker.read_text())
        if info.get("seed") == seed and info.get("size_mib") == size_mib and base.exists():
            log(f"reusing generated data in {base}")
            return info
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
    """Restored files equal the source: raw bytes for plain files, content for SQLite DBs.

    A consistent SQLite image need not be byte-identical to the live db+wal, so databases
    are compared by a logical fingerprint (row counts, body lengths, max(updated), ...).
    """
    root = find_restored_root(target)
    if root is None:
        return {"ok": False, "error": f"no {generate.SNIPPETS_DB} under {target}"}
    problems: list[str] = []
    checked = 0
    for p in harness.iter_files(source):
        rel = p.relative_to(source)
        if p.name.endswith(("-wal", "-shm")):
            continue  # part of the database image, checked via the fingerprint
        q = root / rel
        checked += 1
        if not q.exists():
            problems.append(f"missing {rel}")
        elif p.suffix == ".db":
            a, b = generate.db_fingerprint(p), generate.db_fingerprint(q)
            if a != b:
                problems.append(f"db differs {rel}: {a} != {b}")
        elif p.stat().st_size != q.stat().st_size or (
                harness.file_digest(p) != harness.file_digest(q)):
            problems.append(f"content differs {rel}")
    return {"ok": not problems, "checked_files": checked, "problems": problems[:20],
            "restored_bytes": harness.dir_bytes(root)}


def run_tool(tool: Tool, base: Path, live: Path, mutate_seed: int,
             settle_s: float = 0.0) -> dict[str, Any]:
    """The four steps for one tool; stops at the first failing step."""
    out: dict[str, Any] = {"version": tool.version(), "steps": {}}
    if tool.workdir.exists():
        shutil.rmtree(tool.workdir)
    copy_tree(base, live)
    tool.setup()
    out["page_cache"] = harness.page_cache_read_speed(live)  # also the warm-up read
    logs = tool.workdir / "logs"

    def backup(step: str, n: int) -> Measure:
        before = harness.source_state(live)
        quiet = harness.wait_quiet(settle_s) if settle_s else {}
        m = harness.run_measured(tool.backup(live, n), logs / f"{n}-{step}.log", tool.repo)
        m.settle = quiet
        if harness.source_state(live) != before:
            m.note = "tool modified the source folder"
        tool.after_backup(m, n)
        return m

    for n, step in enumerate(STEPS[:3], 1):
        if step == "mutation_1pct":
            ms = generate.mutate(live, seed=mutate_seed)
            out["mutation"] = {"rows_updated": ms.rows_updated, "seconds": ms.seconds}
            out["data_state"] = generate.db_fingerprint(live / generate.SNIPPETS_DB)
        log(f"{tool.name}: {STEP_LABEL[step]}")
        m = backup(step, n)
        out["steps"][step] = m.as_dict()
        log(f"{tool.name}: {step} rc={m.rc} wall={m.wall_s:.2f}s cpu={m.cpu_s:.2f}s "
            f"rss={m.peak_rss_bytes / MIB:.0f}MiB added={m.added_bytes / MIB:.1f}MiB")
        if m.rc != 0:
            out["error"] = f"{step} failed (exit {m.rc}), see {m.log}"
            return out

    def restore(step: str, cmd: Cmd, log_name: str) -> bool:
        """Run and measure one restore; False (with the error recorded) if it failed."""
        log(f"{tool.name}: {STEP_LABEL[step]}")
        quiet = harness.wait_quiet(settle_s) if settle_s else {}
        m = harness.run_measured(cmd, logs / log_name)
        m.settle = quiet
        m.repo_bytes_before = m.repo_bytes_after = 0
        out["steps"][step] = m.as_dict()
        log(f"{tool.name}: {step} rc={m.rc} wall={m.wall_s:.2f}s cpu={m.cpu_s:.2f}s "
            f"rss={m.peak_rss_bytes / MIB:.0f}MiB")
        if m.rc != 0:
            out["error"] = f"{STEP_LABEL[step]} failed (exit {m.rc}), see {m.log}"
            return False
        return True

    target = empty_folder(tool.workdir / "restore")
    try:
        cmd = tool.restore(target)
    except Exception as exc:  # a tool-side lookup failure must not kill the other tools
        out["error"] = f"restore lookup failed: {exc}"
        return out
    if not restore("restore", cmd, "4-restore.log"):
        return out
    out["verify"] = verify_restore(live, target)
    log(f"{tool.name}: restore verified: {out['verify']['ok']} "
        f"{'; '.join(out['verify'].get('problems', [])[:3])}")
    out["repo_bytes"] = harness.dir_bytes(tool.repo)
    store_target = tool.workdir / "restore-store-only"
    store_cmd = tool.restore_store_only(store_target)
    if store_cmd is not None:
        empty_folder(store_target)
        if not restore("restore_store", store_cmd, "4b-restore-store-only.log"):
            return out
        verified = verify_restore(live, store_target)
        if not verified["ok"]:
            out["verify"] = verified
        shutil.rmtree(store_target)
    return out


def empty_folder(path: Path) -> Path:
    """``path`` as a new empty folder (whatever was there removed)."""
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


MEDIAN_KEYS = ("wall_s", "cpu_s", "user_s", "sys_s", "peak_rss_bytes", "added_bytes",
               "other_cpu_s")


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
            vals = sorted(m[key] for m in ms)
            merged[key] = vals[len(vals) // 2] if len(vals) % 2 else (
                (vals[len(vals) // 2 - 1] + vals[len(vals) // 2]) / 2)
        merged["repeats"] = len(ms)
        out["steps"][step] = merged
    if any("error" in r for r in runs):
        out["error"] = next(r["error"] for r in runs if "error" in r)
    return out


def ratios(results: dict[str, Any]) -> dict[str, dict[str, dict[str, float | None]]]:
    """tool/restic for every figure of every step (None when restic or the tool is missing)."""
    ref = results.get("restic", {}).get("steps", {})
    out: dict[str, dict[str, dict[str, float | None]]] = {}
    for name, r in results.items():
        for step, m in r.get("steps", {}).items():
            base = ref.get(RATIO_BASE.get(step, step))
            row: dict[str, float | None] = {}
            for key in ("wall_s", "cpu_s", "peak_rss_bytes", "added_bytes"):
                row[key] = (round(m[key] / base[key], 3)
                            if base and base.get(key) and base[key] > 0 else None)
            out.setdefault(name, {})[step] = row
    return out


def targets(results: dict[str, Any], rat: dict[str, Any], db_bytes: int,
            service: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The issue's acceptance targets for cloudkeep, each with measured value and verdict."""
    ck = results.get("cloudkeep", {})
    rows: list[dict[str, Any]] = []

    def add(name: str, value: float | None, limit: float, unit: str) -> None:
        verdict = "n/a" if value is None else ("PASS" if value <= limit else "FAIL")
        rows.append({"target": name, "value": value, "limit": limit, "unit": unit,
                     "verdict": verdict})

    for step, limit in WALL_TARGET.items():
        add(f"cloudkeep/restic wall, {STEP_LABEL[step]}",
            rat.get("cloudkeep", {}).get(step, {}).get("wall_s"), limit, "ratio")
    store_only = rat.get("cloudkeep", {}).get("restore_store", {}).get("wall_s")
    if store_only is not None:  # for reference: the target is step 4's
        add("  (4b store-only restore / restic's 4, no target)", store_only,
            WALL_TARGET["restore"], "ratio")
        rows[-1]["verdict"] = "info"
    added = ck.get("steps", {}).get("mutation_1pct", {}).get("added_bytes")
    add("bytes added after 1% / DB size",
        round(added / db_bytes, 4) if added is not None and db_bytes else None,
        ADDED_TARGET, "ratio")
    rss = [m["peak_rss_bytes"] for m in ck.get("steps", {}).values()]
    add("cloudkeep peak RSS (max over steps)", round(max(rss) / MIB, 1) if rss else None,
        RSS_TARGET_MIB, "MiB")
    p99 = (service or {}).get("during_backup", {}).get("p99_ms")
    add("GET /backups p99 during a backup, 1,000 backups", p99, P99_TARGET_MS, "ms")
    return rows


def _fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def _short(v: float) -> str:
    """Bar label: enough digits for small values, few for large ones."""
    return f"{v:.0f}" if v >= 100 else f"{v:.1f}" if v >= 1 else f"{v:.2f}"


def table(results: dict[str, Any], rat: dict[str, Any], tgt: list[dict[str, Any]],
          db_bytes: int, floor_s: float | None, same_state: bool = True) -> str:
    """Plain-text table: one row per tool x step, ratios vs restic alongside."""
    hdr = (f"{'tool':<10} {'step':<20} {'wall s':>8} {'cpu s':>8} {'rss MiB':>8} "
           f"{'added MiB':>10} {'others%':>7} | {'wall/r':>7} {'cpu/r':>7} {'rss/r':>7} "
           f"{'added/r':>8}")
    lines = [hdr, "-" * len(hdr)]
    for name, r in results.items():
        if "skipped" in r:
            lines.append(f"{name:<10} skipped: {r['skipped']}")
            continue
        for step in STEPS:
            m = r.get("steps", {}).get(step)
            if m is None:
                continue
            q = rat.get(name, {}).get(step, {})
            added = m["added_bytes"] / MIB if step not in RESTORES else None
            lines.append(
                f"{name:<10} {STEP_LABEL[step]:<20} {m['wall_s']:>8.2f} {m['cpu_s']:>8.2f} "
                f"{m['peak_rss_bytes'] / MIB:>8.0f} {_fmt(added, '.3g'):>10} "
                f"{harness.other_load(m) * 100:>7.0f} | "
                f"{_fmt(q.get('wall_s'), '.2f'):>7} {_fmt(q.get('cpu_s'), '.2f'):>7} "
                f"{_fmt(q.get('peak_rss_bytes'), '.2f'):>7} "
                f"{_fmt(q.get('added_bytes') if step not in RESTORES else None, '.2f'):>8}"
                + (f"  ({m['note']})" if m.get("note") else ""))
        if "error" in r:
            lines.append(f"{name:<10} ERROR: {r['error']}")
        v = r.get("verify")
        if v is not None:
            lines.append(f"{'':<10} restore verified: {'yes' if v['ok'] else 'NO'}"
                         f"{'' if v['ok'] else ' ' + '; '.join(v.get('problems', [])[:3])}")
    lines.append("")
    lines.append("others% = share of the machine's CPU used by other processes during the "
                 "step (noise; figures above ~15% are skewed); x/r = ratio to restic")
    lines.append(f"DB size (snippets.db + -wal): {db_bytes / MIB:.1f} MiB"
                 + (f"; page-cache read of the whole folder: {floor_s:.2f} s" if floor_s else "")
                 + ("" if same_state else "; WARNING: tools saw different data states"))
    lines.append("")
    lines.append(f"{'target (cloudkeep)':<52} {'measured':>10} {'limit':>8}  verdict")
    for t in tgt:
        lines.append(f"{t['target']:<52} {_fmt(t['value'], '.3f'):>10} "
                     f"{t['limit']:>8g}  {t['verdict']}" + ("" if t["unit"] == "ratio"
                                                            else f" ({t['unit']})"))
    return "\n".join(lines)


def chart(results: dict[str, Any], path: Path, title: str, floor_s: float | None) -> None:
    """Grouped bars per step and tool: wall time, bytes added, peak RSS."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n, r in results.items() if r.get("steps")]
    fig, axes = plt.subplots(2, 2, figsize=(14, 9))
    shared = STEPS[:4]  # the steps every tool runs
    panels = (("wall_s", "wall time (s)", 1.0, shared),
              ("cpu_s", "CPU time, user+sys of process tree (s)", 1.0, shared),
              ("added_bytes", "bytes added to repository (MiB)", MIB, STEPS[:3]),
              ("peak_rss_bytes", "peak RSS of process tree (MiB)", MIB, shared))
    width = 0.8 / max(1, len(names))
    for ax, (key, label, scale, steps) in zip(axes.flat, panels, strict=True):
        for i, name in enumerate(names):
            vals = [results[name]["steps"].get(s, {}).get(key, 0) / scale for s in steps]
            xs = [j + (i - (len(names) - 1) / 2) * width for j in range(len(steps))]
            bars = ax.bar(xs, vals, width, label=name)
            ax.bar_label(bars, fmt=_short, fontsize=7)
        ax.set_xticks(range(len(steps)), [STEP_LABEL[s][2:] for s in steps], fontsize=8)
        ax.set_title(label, fontsize=10)
        if key == "wall_s" and floor_s:
            ax.axhline(floor_s, ls="--", c="gray", lw=1, label="page-cache read of data")
        if key == "peak_rss_bytes":
            ax.axhline(RSS_TARGET_MIB, ls=":", c="red", lw=1, label="cloudkeep target")
        ax.legend(fontsize=8)
    noisy = max((harness.other_load(m) for n in names
                 for m in results[n]["steps"].values()), default=0.0)
    if noisy > 0.15:
        title += f"\n(shared machine: other processes used up to {noisy:.0%} of the CPU " \
                 "during a step; wall times are skewed)"
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    """CLI entry point."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-mib", type=float, default=600.0)
    ap.add_argument("--tools", default="cloudkeep,restic,borg")
    ap.add_argument("--workdir", type=Path, default=BENCH / "work")
    ap.add_argument("--results", type=Path, default=BENCH / "results")
    ap.add_argument("--seed", type=int, default=1, help="generator seed")
    ap.add_argument("--mutate-seed", type=int, default=2, help="day-of-use mutation seed")
    ap.add_argument("--repeat", type=int, default=1,
                    help="run each tool's sequence N times and report medians")
    ap.add_argument("--settle", type=float, default=10.0,
                    help="before each step wait up to S seconds for other load to drop")
    ap.add_argument("--keep", action="store_true", help="keep repositories and restores")
    ap.add_argument("--no-service", action="store_true", help="skip the GET /backups bench")
    ap.add_argument("--service-backups", type=int, default=1000)
    ap.add_argument("--service-rounds", type=int, default=3)
    args = ap.parse_args(argv)

    names = [t.strip() for t in args.tools.split(",") if t.strip()]
    unknown = [n for n in names if n not in harness.TOOLS]
    if unknown:
        ap.error(f"unknown tools {unknown}; choose from {list(harness.TOOLS)}")
    size_tag = f"{args.size_mib:g}mib"
    root = (args.workdir / size_tag).resolve()
    root.mkdir(parents=True, exist_ok=True)
    info = prepare_base(root, args.size_mib, args.seed)
    base, live = root / "base", root / "live"
    db_bytes = db_size(base)

    results: dict[str, Any] = {}
    for name in names:
        tool = harness.TOOLS[name](root / name)
        why = tool.missing()
        if why:
            log(f"SKIP {why}")
            results[name] = {"skipped": why}
            continue
        runs = []
        for i in range(args.repeat):
            if args.repeat > 1:
                log(f"{name}: run {i + 1}/{args.repeat}")
            runs.append(run_tool(tool, base, live, args.mutate_seed, args.settle))
            if "error" in runs[-1]:
                break
        results[name] = merge_runs(runs)
        if not args.keep:
            for sub in ("repo", "restore", "cache", "base"):
                shutil.rmtree(tool.workdir / sub, ignore_errors=True)

    speeds = [r["page_cache"]["mib_per_s"] for r in results.values() if "page_cache" in r]
    if not speeds:
        speeds = [harness.page_cache_read_speed(base)["mib_per_s"]]
    speed = sorted(speeds)[len(speeds) // 2]
    data_bytes = harness.dir_bytes(base)
    floor_s = round(data_bytes / MIB / speed, 3) if speed else None

    service: dict[str, Any] | None = None
    if "cloudkeep" in names and not args.no_service:
        import service as service_bench

        service = service_bench.run_service_bench(
            root / "service", base, backups=args.service_backups,
            rounds=args.service_rounds, log=log)
        if not args.keep:
            shutil.rmtree(root / "service" / "repo", ignore_errors=True)
            shutil.rmtree(root / "service" / "live", ignore_errors=True)
    shutil.rmtree(live, ignore_errors=True)

    rat = ratios(results)
    tgt = targets(results, rat, db_bytes, service)
    states = {json.dumps(r["data_state"], sort_keys=True)
              for r in results.values() if "data_state" in r}
    today = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d")
    doc = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "size_mib": args.size_mib,
        "machine": harness.machine_info(),
        "versions": {n: r.get("version") for n, r in results.items()},
        "data": {**info, "data_bytes": data_bytes, "db_bytes": db_bytes,
                 "page_cache_read_mib_s": speed, "page_cache_read_floor_s": floor_s,
                 "identical_data_state_across_tools": len(states) <= 1},
        "tools": results,
        "ratios_vs_restic": rat,
        "service": service,
        "targets": tgt,
    }
    args.results.mkdir(parents=True, exist_ok=True)
    out = args.results / f"{today}-{size_tag}"
    out.with_suffix(".json").write_text(json.dumps(doc, indent=2) + "\n")
    text = table(results, rat, tgt, db_bytes, floor_s, same_state=len(states) <= 1)
    if service:
        text += "\n\n" + service_summary(service)
    print(text)
    out.with_suffix(".txt").write_text(text + "\n")
    chart(results, out.with_suffix(".png"),
          f"{args.size_mib:g} MiB app folder, {harness.machine_info()['nproc']} cores "
          f"({today})", floor_s)
    log(f"wrote {out}.json, .txt and .png")
    return 0 if all("error" not in r for r in results.values()) else 1


def service_summary(service: dict[str, Any]) -> str:
    """One paragraph on the GET /backups latency figures."""
    if "skipped" in service:
        return f"service benchmark skipped: {service['skipped']}"
    parts = [f"GET /backups with {service.get('backups_listed', '?')} backups:"]
    for phase in ("idle", "during_backup"):
        s = service.get(phase) or {}
        if s:
            parts.append(f"{phase}: p50 {s['p50_ms']:.1f} ms, p99 {s['p99_ms']:.1f} ms "
                         f"(n={s['n']})")
    if service.get("server_peak_rss_bytes"):
        parts.append(f"server peak RSS while backing up: "
                     f"{service['server_peak_rss_bytes'] / MIB:.0f} MiB")
    if "error" in service:
        parts.append(f"ERROR: {service['error']}")
    return "\n  ".join(parts)


if __name__ == "__main__":
    raise SystemExit(main())
