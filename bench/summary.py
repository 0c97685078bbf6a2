"""What the bench rows mean, the ratios to restic, issue 15's targets, the table and chart."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import harness
from harness import MIB

STEPS = ("initial", "mutation_1pct", "unchanged", "restore_new", "restore_reuse")
BACKUPS = STEPS[:3]
RESTORES = ("restore_new", "restore_reuse")
STEP_LABEL = {"initial": "1 first backup", "mutation_1pct": "2 after 1% update",
              "unchanged": "3 nothing changed", "restore_new": "4 restore, new machine",
              "restore_reuse": "4r restore reusing live data"}
# What each row measures, for the JSON and the table's legend.
STEP_MEANING = {
    "initial": "first backup of the folder into an empty repository",
    "mutation_1pct": "backup after the day-of-use update (1% of the rows rewritten)",
    "unchanged": "backup with nothing changed since the last one",
    "restore_new": "restore of the latest backup onto a new machine: empty target folder, "
                   "no live data, fresh empty cache/config/home folders, only the store and "
                   "the passphrase; the page cache emptied just before (method below)",
    "restore_reuse": "(cloudkeep only) restore of the latest backup into an empty folder "
                     "taking the chunks the live data folder (--data, warm in the page cache) "
                     "still holds, fetching only the rest; ratio to restic's new-machine "
                     "restore",
}
# 4r has no restic counterpart: its ratio is to restic's new-machine restore.
RATIO_BASE = {"restore_reuse": "restore_new"}
ROUND_ONE_WALL = {"initial": 0.5, "mutation_1pct": 0.5, "unchanged": 0.5}
ROUND_ONE_RESTORE = 0.7
ADDED_TARGET = 0.05  # bytes added by the 1% backup / DB size
RSS_TARGET_MIB = 200
ENGINE_RSS_TARGET_MIB = 200
P99_TARGET_MS = 20.0
FIGURES = ("wall_s", "cpu_s", "peak_rss_bytes", "added_bytes")


def ratios(results: dict[str, Any]) -> dict[str, dict[str, dict[str, float | None]]]:
    """tool/restic for every figure of every step (None when restic or the tool is missing)."""
    ref = results.get("restic", {}).get("steps", {})
    out: dict[str, dict[str, dict[str, float | None]]] = {}
    for name, r in results.items():
        for step, m in r.get("steps", {}).items():
            base = ref.get(RATIO_BASE.get(step, step))
            out.setdefault(name, {})[step] = {
                key: (round(m[key] / base[key], 3) if base and base.get(key) else None)
                for key in FIGURES}
    return out


def _ratio_of_max(results: dict[str, Any], key: str, steps: tuple[str, ...]) -> float | None:
    """max over ``steps`` of cloudkeep's ``key`` / the same for restic."""
    def top(name: str) -> float | None:
        vals = [m[key] for s, m in results.get(name, {}).get("steps", {}).items() if s in steps]
        return max(vals) if vals else None

    ck, rs = top("cloudkeep"), top("restic")
    return round(ck / rs, 3) if ck is not None and rs else None


def restore_where(store: dict[str, Any], via_link: bool) -> str:
    """Which store the new-machine restore read, for the target's label."""
    if store["kind"] == "file":
        return "local store"
    if store.get("link") is None:
        return "S3 store (moto)"
    return "S3 through the link" if via_link else "S3 store (moto, not through the link)"


def targets(results: dict[str, Any], rat: dict[str, Any], db_bytes: int,
            service: dict[str, Any] | None, store: dict[str, Any],
            restore_via_link: bool) -> list[dict[str, Any]]:
    """Issue 15's targets, then round one's (to be no worse), each with its verdict."""
    ck = rat.get("cloudkeep", {})
    ck_steps = results.get("cloudkeep", {}).get("steps", {})
    link = store.get("link")
    rows: list[dict[str, Any]] = []

    def add(group: str, name: str, value: float | None, limit: float, unit: str = "ratio",
            why_na: str = "") -> None:
        verdict = "n/a" if value is None else ("PASS" if value <= limit else "FAIL")
        rows.append({"group": group, "target": name, "value": value, "limit": limit,
                     "unit": unit, "verdict": verdict, **({"why": why_na} if why_na else {})})

    def wall(step: str) -> float | None:
        return ck.get(step, {}).get("wall_s")

    g = "issue 15"
    add(g, f"restore onto a new machine, {restore_where(store, restore_via_link)}",
        wall("restore_new"), 0.5)
    add(g, "first backup, bytes stored", ck.get("initial", {}).get("added_bytes"), 1.0)
    add(g, "first backup, wall (at those bytes)", None if link else wall("initial"), 0.4,
        why_na="measured without the link" if link else "")
    add(g, "peak RSS, backups (max of steps 1-3)",
        _ratio_of_max(results, "peak_rss_bytes", BACKUPS), 1.0)
    add(g, "peak RSS, new-machine restore",
        _ratio_of_max(results, "peak_rss_bytes", ("restore_new",)), 1.0)
    na = "" if link else "needs --store s3 --link 100mbit,40ms"
    add(g, "daily backup (after 1%) over the link", wall("mutation_1pct") if link else None,
        0.1, why_na=na)
    add(g, "first backup over the link", wall("initial") if link else None, 0.9, why_na=na)
    engine = (service or {}).get("engine_peak_rss_bytes")
    add(g, "server's engine process peak RSS during a backup",
        round(engine / MIB, 1) if engine else None, ENGINE_RSS_TARGET_MIB, "MiB",
        why_na="" if engine else "needs the service bench (file store, no --no-service)")
    rows.append({"group": g, "target": "peak RSS flat from 600 MiB to 5 GiB within 20%",
                 "value": None, "limit": 1.2, "unit": "ratio", "verdict": "n/a",
                 "why": "bench/report.py A.json B.json compares two runs"})

    g = "round one (no worse)"
    local = store["kind"] == "file"
    na = "" if local else "round one's figures are for the local store"
    for step, limit in ROUND_ONE_WALL.items():
        add(g, f"wall, {STEP_LABEL[step]}", wall(step) if local else None, limit, why_na=na)
    add(g, "wall, restore: now onto a new machine (was: reusing live data)",
        wall("restore_new") if local else None,
        ROUND_ONE_RESTORE, why_na=na)
    added = ck_steps.get("mutation_1pct", {}).get("added_bytes")
    add(g, "bytes added after 1% / DB size",
        round(added / db_bytes, 4) if added is not None and db_bytes else None, ADDED_TARGET)
    rss = [m["peak_rss_bytes"] for m in ck_steps.values()]
    add(g, "cloudkeep peak RSS (max over steps)", round(max(rss) / MIB, 1) if rss else None,
        RSS_TARGET_MIB, "MiB")
    p99 = (service or {}).get("during_backup", {}).get("p99_ms")
    add(g, "GET /backups p99 during a backup, 1,000 backups", p99, P99_TARGET_MS, "ms",
        why_na="" if p99 is not None else "needs the service bench")
    return rows


def _fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def _short(v: float) -> str:
    """Bar label: enough digits for small values, few for large ones."""
    return f"{v:.0f}" if v >= 100 else f"{v:.1f}" if v >= 1 else f"{v:.2f}"


def _tool_lines(name: str, r: dict[str, Any], q: dict[str, Any], s3: bool, link: bool
                ) -> list[str]:
    """The rows of one tool: a line per step, then skipped steps, errors, restore checks."""
    if "skipped" in r:
        return [f"{name:<10} skipped: {r['skipped']}"]
    lines = []
    for step in STEPS:
        m = r.get("steps", {}).get(step)
        if m is None:
            continue
        qs = q.get(step, {})
        is_restore = step in RESTORES
        extra = f" {m.get('server_cpu_s', 0):>7.2f}" if s3 else ""
        if link:
            lk = m.get("link") or {}
            up, down = (lk.get(k, 0) / MIB for k in ("bytes_up", "bytes_down"))
            extra += f" {up:>8.1f}/{down:<8.1f}"
        lines.append(
            f"{name:<10} {STEP_LABEL[step]:<29} {m['wall_s']:>7.2f} {m['cpu_s']:>7.2f} "
            f"{m['peak_rss_bytes'] / MIB:>7.0f} "
            f"{_fmt(None if is_restore else m['added_bytes'] / MIB, '.3g'):>9} "
            f"{harness.other_load(m) * 100:>7.0f}{extra} | "
            f"{_fmt(qs.get('wall_s'), '.2f'):>6} {_fmt(qs.get('cpu_s'), '.2f'):>6} "
            f"{_fmt(qs.get('peak_rss_bytes'), '.2f'):>6} "
            f"{_fmt(None if is_restore else qs.get('added_bytes'), '.2f'):>7}"
            + (f"  ({m['note']})" if m.get("note") else ""))
    if "error" in r:
        lines.append(f"{name:<10} ERROR: {r['error']}")
    for step, v in sorted(r.get("verify", {}).items(), key=lambda kv: STEPS.index(kv[0])):
        lines.append(f"{'':<10} {STEP_LABEL[step]} verified (DB row by row, files byte "
                     f"by byte): {'yes' if v['ok'] else 'NO'}"
                     + ("" if v["ok"] else " " + "; ".join(v.get("problems", [])[:3])))
    return lines


def _legend(doc: dict[str, Any]) -> list[str]:
    """What the rows measure, where the store was, how the cache was emptied."""
    lines = ["Rows:"]
    for step in STEPS:
        lines.append(f"  {STEP_LABEL[step]}: {STEP_MEANING[step]}")
    lines.append("  wall = elapsed; cpu = user+sys of the tool's whole process tree; rss = peak "
                 "RSS of that tree; added = bytes the step added to the store; others% = share "
                 "of the machine's CPU used by other processes (figures above ~15% are skewed); "
                 "x/r = ratio to restic in this run")
    lines.append(f"Store: {describe_store(doc['store'])}")
    via = {r["restore_via"] for r in doc["tools"].values() if r.get("restore_via")}
    if via:
        lines.append(f"Restores (4 and 4r) read from: {', '.join(sorted(via))}")
    cold = doc.get("cold_cache", {})
    lines.append(f"Cold page cache before each new-machine restore: {cold.get('method', '-')}"
                 f" ({cold.get('meaning', '')})")
    data = doc["data"]
    floor = data.get("page_cache_read_floor_s")
    lines.append(f"DB size (snippets.db + -wal): {data['db_bytes'] / MIB:.1f} MiB"
                 + (f"; page-cache read of the whole folder: {floor:.2f} s" if floor else "")
                 + ("" if data.get("identical_data_state_across_tools", True)
                    else "; WARNING: tools saw different data states"))
    return lines


def table(doc: dict[str, Any]) -> str:
    """Plain-text table: one row per tool x step, ratios vs restic alongside, then what
    the rows measure and the targets."""
    store = doc["store"]
    s3, link = store["kind"] == "s3", bool(store.get("link"))
    extra_hdr = (f" {'srv cpu':>7}" if s3 else "") + (f" {'link MiB up/down':>17}" if link else "")
    hdr = (f"{'tool':<10} {'step':<29} {'wall s':>7} {'cpu s':>7} {'rss MiB':>7} "
           f"{'added MiB':>9} {'others%':>7}{extra_hdr} | {'wall/r':>6} {'cpu/r':>6} "
           f"{'rss/r':>6} {'added/r':>7}")
    lines = [hdr, "-" * len(hdr)]
    for name, r in doc["tools"].items():
        lines += _tool_lines(name, r, doc["ratios_vs_restic"].get(name, {}), s3, link)
    lines += ["", *_legend(doc), ""]
    lines.append(f"{'target (cloudkeep / restic, same run)':<70} {'measured':>9} {'limit':>6}  "
                 "verdict")
    group = None
    for t in doc["targets"]:
        if t["group"] != group:
            group = t["group"]
            lines.append(f"[{group}]")
        unit = "" if t["unit"] == "ratio" else f" ({t['unit']})"
        why = f" - {t['why']}" if t.get("why") and t["verdict"] == "n/a" else ""
        lines.append(f"{t['target'][:70]:<70} {_fmt(t['value'], '.3f'):>9} "
                     f"{t['limit']:>6g}  {t['verdict']}{unit}{why}")
    return "\n".join(lines)


def describe_store(store: dict[str, Any]) -> str:
    """One line on where the repositories were."""
    if store["kind"] == "file":
        return "local folders (file)"
    text = ("S3: a moto server in its own process (objects in memory; its CPU is the 'srv "
            f"cpu' column, never counted in a tool's), peak RSS "
            f"{store.get('server_peak_rss_bytes', 0) / MIB:.0f} MiB; a bucket per tool; "
            "borg has no S3 backend")
    link = store.get("link")
    if link:
        text += (f"; every tool reached it through the link proxy: {link['describe']} "
                 f"(one-way delay {link['one_way_delay_s'] * 1000:g} ms added each direction, "
                 "bandwidth enforced per direction)")
    return text


def chart(doc: dict[str, Any], path: Path, title: str) -> None:
    """Grouped bars per step and tool: wall time, CPU, bytes added, peak RSS."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = doc["tools"]
    floor_s = doc["data"].get("page_cache_read_floor_s")
    names = [n for n, r in results.items() if r.get("steps")]
    fig, axes = plt.subplots(2, 2, figsize=(14, 9))
    shared = [s for s in STEPS[:4] if any(s in results[n]["steps"] for n in names)]
    panels = (("wall_s", "wall time (s)", 1.0, shared),
              ("cpu_s", "CPU time, user+sys of process tree (s)", 1.0, shared),
              ("added_bytes", "bytes added to the store (MiB)", MIB, list(BACKUPS)),
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
        if key == "wall_s" and floor_s and doc["store"]["kind"] == "file":
            ax.axhline(floor_s, ls="--", c="gray", lw=1, label="page-cache read of data")
        ax.legend(fontsize=8)
    noisy = max((harness.other_load(m) for n in names
                 for m in results[n]["steps"].values()), default=0.0)
    if noisy > 0.15:
        title += (f"\n(shared machine: other processes used up to {noisy:.0%} of the CPU "
                  "during a step; wall times are skewed)")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def service_summary(service: dict[str, Any]) -> str:
    """One paragraph on the GET /backups latency and the server's memory."""
    if "skipped" in service:
        return f"service benchmark skipped: {service['skipped']}"
    parts = [f"GET /backups with {service.get('backups_listed', '?')} backups:"]
    for phase in ("idle", "during_backup"):
        s = service.get(phase) or {}
        if s.get("n"):
            parts.append(f"{phase}: p50 {s['p50_ms']:.1f} ms, p99 {s['p99_ms']:.1f} ms "
                         f"(n={s['n']})")
    mem = [("server tree", "server_peak_rss_bytes"),
           ("server process", "server_process_peak_rss_bytes"),
           ("engine process", "engine_peak_rss_bytes")]
    figures = [f"{label} {service[key] / MIB:.0f} MiB" for label, key in mem if service.get(key)]
    if figures:
        parts.append("peak RSS while backing up: " + ", ".join(figures))
    if "error" in service:
        parts.append(f"ERROR: {service['error']}")
    return "\n  ".join(parts)
