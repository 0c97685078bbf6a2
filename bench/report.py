"""Is peak RSS flat with the folder's size? Two bench results compared step by step.

    python bench/report.py bench/results/DAY-600mib.json bench/results/DAY-5120mib.json

Prints each tool's peak RSS (whole process tree) per step at both sizes and the ratio
B/A; issue 15's target: cloudkeep's within 20% (ratio <= 1.2) from 600 MiB to 5 GiB.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

MIB = 1024 * 1024
FLAT_LIMIT = 1.2


def rss_rows(a: dict[str, Any], b: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per tool and step present in both results: peak RSS at each size, B/A."""
    rows = []
    for tool, ra in a.get("tools", {}).items():
        rb = b.get("tools", {}).get(tool, {})
        for step, ma in ra.get("steps", {}).items():
            mb = rb.get("steps", {}).get(step)
            if mb is None:
                continue
            ratio = mb["peak_rss_bytes"] / ma["peak_rss_bytes"] if ma["peak_rss_bytes"] else None
            rows.append({"tool": tool, "step": step, "a_bytes": ma["peak_rss_bytes"],
                         "b_bytes": mb["peak_rss_bytes"], "ratio": ratio,
                         "verdict": "n/a" if ratio is None else
                         "PASS" if ratio <= FLAT_LIMIT else "FAIL"})
    return rows


def overall(rows: list[dict[str, Any]], tool: str = "cloudkeep") -> dict[str, Any] | None:
    """``tool``'s peak over all steps at each size and their ratio."""
    mine = [r for r in rows if r["tool"] == tool]
    if not mine:
        return None
    a, b = max(r["a_bytes"] for r in mine), max(r["b_bytes"] for r in mine)
    ratio = b / a if a else None
    return {"a_bytes": a, "b_bytes": b, "ratio": ratio,
            "verdict": "n/a" if ratio is None else "PASS" if ratio <= FLAT_LIMIT else "FAIL"}


def render(a: dict[str, Any], b: dict[str, Any]) -> str:
    size_a, size_b = f"{a.get('size_mib', '?'):g} MiB", f"{b.get('size_mib', '?'):g} MiB"
    rows = rss_rows(a, b)
    lines = [f"peak RSS of each tool's process tree: A = {size_a} ({a.get('date', '?')}), "
             f"B = {size_b} ({b.get('date', '?')}); flat means B/A <= {FLAT_LIMIT}",
             f"{'tool':<10} {'step':<16} {'A MiB':>8} {'B MiB':>8} {'B/A':>6}  verdict"]
    for r in rows:
        ratio = "-" if r["ratio"] is None else f"{r['ratio']:.2f}"
        lines.append(f"{r['tool']:<10} {r['step']:<16} {r['a_bytes'] / MIB:>8.0f} "
                     f"{r['b_bytes'] / MIB:>8.0f} {ratio:>6}  {r['verdict']}")
    o = overall(rows)
    if o is not None:
        ratio = "-" if o["ratio"] is None else f"{o['ratio']:.2f}"
        lines.append(f"target: cloudkeep peak RSS (max over steps) {o['a_bytes'] / MIB:.0f} -> "
                     f"{o['b_bytes'] / MIB:.0f} MiB, B/A {ratio} <= {FLAT_LIMIT}: {o['verdict']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("a", type=Path, help="results JSON of the smaller folder")
    ap.add_argument("b", type=Path, help="results JSON of the larger folder")
    args = ap.parse_args(argv)
    a, b = (json.loads(p.read_text()) for p in (args.a, args.b))
    print(render(a, b))
    o = overall(rss_rows(a, b))
    return 0 if o is None or o["verdict"] != "FAIL" else 1


if __name__ == "__main__":
    raise SystemExit(main())
