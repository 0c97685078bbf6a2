"""Peak RSS of the server's engine process while it backs up the generated folder.

    python bench/engine_rss.py --size-mib 600 [--src /path/to/other/src]

Starts ``cloudkeep serve`` on a copy of the generated folder with a fresh store, asks for
a backup (``POST /backups/create``), and reports the engine child's own peak RSS (its
VmHWM, read with psutil until it exits) and the server process's, for the first backup
and for the backup after the 1% mutation.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import threading
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))

import generate
import harness
import run
import service

MIB = harness.MIB


def _hwm(proc: psutil.Process) -> int:
    return harness._vm_hwm(proc.pid)


def backup(srv: service.Server, label: str) -> None:
    peaks: dict[int, int] = {}
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            for child in srv.proc.children(recursive=True):
                peaks[child.pid] = max(peaks.get(child.pid, 0), _hwm(child))
            stop.wait(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    status, body, seconds = service.request(srv.conn(3600), "POST", "/backups/create", b"{}")
    stop.set()
    sampler.join()
    engine = max(peaks.values(), default=0)
    print(
        f"{label:<10} status={status} {seconds:6.2f}s engine peak RSS={engine / MIB:5.0f}MiB "
        f"server peak RSS={_hwm(srv.proc) / MIB:5.0f}MiB",
        flush=True,
    )
    if status != 200:
        raise SystemExit(body[:300])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size-mib", type=float, default=600)
    parser.add_argument("--src", help="a src folder put first on PYTHONPATH")
    parser.add_argument("--workdir", type=Path, default=Path(__file__).parent / "work")
    args = parser.parse_args()
    root = args.workdir / f"{args.size_mib:g}mib"
    run.prepare_base(root, args.size_mib, 1)
    tool = harness.Cloudkeep(root / "engine-rss")
    if tool.workdir.exists():
        shutil.rmtree(tool.workdir)
    live = tool.workdir / "live"
    run.copy_tree(root / "base", live)
    tool.setup()
    if args.src:
        import os

        os.environ["PYTHONPATH"] = str(Path(args.src).resolve())
    tool.init_for(live)
    srv = service.Server(tool, live, tool.workdir / "serve.log")
    try:
        srv.wait_ready()
        backup(srv, "initial")
        generate.mutate(live, seed=2)
        backup(srv, "after-1%")
    finally:
        srv.stop()
        shutil.rmtree(tool.workdir)


if __name__ == "__main__":
    main()
