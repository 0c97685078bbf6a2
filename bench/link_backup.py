"""cloudkeep vs restic backing up to S3 (a moto server) through an emulated slow link.

    flock -x /tmp/bench.lock .venv/bin/python bench/link_backup.py --size-mib 600
    .venv/bin/python bench/link_backup.py --size-mib 20 --tools cloudkeep --trace

Per tool: a fresh moto server behind ``bench/linkproxy.py`` (100 Mbit/s each way, 40 ms
round trip by default), a fresh copy of the generated folder, then 1. the first backup,
2. the daily backup after the 1% mutation. Prints wall time, CPU, what crossed the link and
how many requests each step made, and cloudkeep/restic per step. ``--trace`` writes every
request line with its time and connection to ``<workdir>/<tool>-<step>.requests``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import generate
import harness
from harness import MIB, PASSPHRASE, Cmd
from linkproxy import LinkProxy, parse_duration, parse_rate
from stores import KEEP_ALIVE_SERVER

BENCH = Path(__file__).resolve().parent
BUCKET = "bench"
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "AKIACLOUDKEEPBENCH",
    "AWS_SECRET_ACCESS_KEY": "cloudkeep-bench-secret",
    "AWS_REGION": "us-east-1",
}
STEPS = ("first", "daily")


class Moto:
    """A moto S3 server subprocess with one bucket."""

    def __init__(self, log: Path, keep_alive: bool) -> None:
        self.port = _free_port()
        self.log = log
        log.parent.mkdir(parents=True, exist_ok=True)
        argv = (
            [sys.executable, "-c", KEEP_ALIVE_SERVER, str(self.port)]
            if keep_alive
            else [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)]
        )
        self.proc = subprocess.Popen(
            argv,
            stdout=subprocess.DEVNULL,
            stderr=open(log, "wb"),  # noqa: SIM115 - the child owns it
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                req = urllib.request.Request(f"http://127.0.0.1:{self.port}/{BUCKET}", method="PUT")
                with urllib.request.urlopen(req, timeout=2):
                    return
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError(f"moto did not start, see {log}") from None
                time.sleep(0.2)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=20)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tool_commands(
    tool: str, work: Path, live: Path, port: int, exe: list[str]
) -> tuple[list[str], dict, Cmd]:
    """(init argv or [], env, backup command) for ``tool`` storing through ``port``."""
    env = {**AWS_ENV, "HOME": str(work / "home")}
    passfile = work / "passphrase"
    passfile.write_text(PASSPHRASE + "\n")
    passfile.chmod(0o600)
    if tool == "restic":
        env.update(
            RESTIC_REPOSITORY=f"s3:http://127.0.0.1:{port}/{BUCKET}/restic",
            RESTIC_PASSWORD_FILE=str(passfile),
            RESTIC_CACHE_DIR=str(work / "cache"),
            RESTIC_PROGRESS_FPS="0.2",
        )
        return ["restic", "init"], env, Cmd(["restic", "backup", "--host", "bench", str(live)], env)
    store = f"s3://{BUCKET}/cloudkeep?endpoint=http://127.0.0.1:{port}&region=us-east-1"
    env.update(
        CLOUDKEEP_CACHE_DIR=str(work / "cache"),
        CLOUDKEEP_CONFIG_DIR=str(work / "config"),
        CLOUDKEEP_DEVICE_NAME="bench",
    )
    argv = [*exe, "--data", str(live), "--store", store, "--passphrase-file", str(passfile)]
    return [*argv, "init"], env, Cmd([*argv, "backup"], env)


def run_tool(tool: str, base: Path, args: argparse.Namespace) -> dict[str, Any]:
    work = args.workdir / tool
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    live = args.workdir / "live"
    if live.exists():
        shutil.rmtree(live)
    subprocess.run(["cp", "-a", str(base), str(live)], check=True)
    harness.page_cache_read_speed(live)  # the warm-up read, as bench/run.py does
    moto = Moto(work / "moto.log", args.keep_alive)
    out: dict[str, Any] = {"steps": {}}
    try:
        with LinkProxy(
            "127.0.0.1",
            moto.port,
            rate_bits_per_s=args.rate,
            latency_s=args.rtt / 2,
            trace=args.trace,
        ) as proxy:
            init, env, backup = tool_commands(tool, work, live, proxy.port, args.cloudkeep)
            subprocess.run(init, env={**os.environ, **env}, check=True, capture_output=True)
            for n, step in enumerate(STEPS, 1):
                if step == "daily":
                    generate.mutate(live, seed=args.mutate_seed)
                before = proxy.stats()
                proxy.requests.clear()
                started = proxy.now()
                m = harness.run_measured(backup, work / "logs" / f"{n}-{step}.log")
                ended = proxy.now()
                after = proxy.stats()
                figures = {k: after[k] - before[k] for k in after if k != "max_active"}
                figures.update(
                    wall_s=m.wall_s,
                    cpu_s=m.cpu_s,
                    rc=m.rc,
                    others_pct=round(100 * harness.other_load(m.as_dict()), 1),
                    peak_rss_mib=round(m.peak_rss_bytes / MIB),
                )
                out["steps"][step] = figures
                if args.trace:
                    lines = [f"{started:9.3f}      (process started)"]
                    lines += [f"{t:9.3f} {c:4d} {line}" for t, c, line in proxy.requests]
                    lines.append(f"{ended:9.3f}      (process ended)")
                    (args.workdir / f"{tool}-{step}.requests").write_text("\n".join(lines) + "\n")
                print(f"{tool:9} {step:5} " + json.dumps(figures), flush=True)
                if m.rc != 0:
                    out["error"] = f"{step} failed, see {m.log}"
                    break
            out["max_active"] = proxy.stats()["max_active"]
    finally:
        moto.stop()
        if not args.keep:
            shutil.rmtree(live, ignore_errors=True)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-mib", type=int, default=600)
    ap.add_argument("--tools", default="cloudkeep,restic")
    ap.add_argument("--rate", type=parse_rate, default=parse_rate("100mbit"))
    ap.add_argument("--rtt", type=parse_duration, default=parse_duration("40ms"))
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--workdir", type=Path, default=BENCH / "work" / "link")
    ap.add_argument("--base", type=Path, help="the generated folder (default: generate one)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--mutate-seed", type=int, default=2)
    ap.add_argument("--trace", action="store_true")
    ap.add_argument(
        "--no-keep-alive",
        dest="keep_alive",
        action="store_false",
        help="moto's own server: a new connection for every request",
    )
    ap.add_argument("--keep", action="store_true")
    ap.add_argument(
        "--cloudkeep",
        type=str.split,
        default=[str(Path(sys.executable).with_name("cloudkeep"))],
        help="the command that runs cloudkeep (e.g. with a profiler in front)",
    )
    args = ap.parse_args(argv)
    harness.compile_bytecode()
    base = args.base or BENCH / "work" / f"{args.size_mib}mib" / "base"
    if not base.exists():
        generate.generate(base, size_mib=args.size_mib, seed=args.seed)
    results: dict[str, list[dict[str, Any]]] = {}
    for _ in range(args.repeat):
        for tool in args.tools.split(","):
            results.setdefault(tool, []).append(run_tool(tool, base, args))
    print(
        f"\n{args.size_mib} MiB, {args.rate / 1e6:g} Mbit/s, {args.rtt * 1e3:g} ms RTT, "
        f"keep-alive {'on' if args.keep_alive else 'off'}"
    )
    for step in STEPS:
        row = []
        for tool, runs in results.items():
            walls = sorted(r["steps"][step]["wall_s"] for r in runs if step in r["steps"])
            if walls:
                row.append((tool, walls[len(walls) // 2]))
        text = "  ".join(f"{tool} {wall:.2f} s" for tool, wall in row)
        walls_by_tool = dict(row)
        if "cloudkeep" in walls_by_tool and walls_by_tool.get("restic"):
            text += f"  ratio {walls_by_tool['cloudkeep'] / walls_by_tool['restic']:.3f}"
        print(f"{step:5}: {text}")
    (args.workdir / "results.json").write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
