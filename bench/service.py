"""``GET /backups`` latency (p50/p99) with 1,000 backups in the store, during a large backup.

The UI polls ``GET /backups`` while the app backs up, so listing must stay fast under load:

1. seed the store with N backups of a tiny folder through ``POST /backups/create``
   (falls back to N ``cloudkeep backup`` runs if the endpoint is missing);
2. restart ``cloudkeep serve`` on the large data folder, time ``GET /backups`` while idle,
   then again while ``POST /backups/create`` backs the large database up.

    python bench/service.py --size-mib 600          # standalone, reuses bench/work data
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))

import generate
import harness

HOST = "127.0.0.1"
POLL_PAUSE_S = 0.01  # a UI polling hard, without starving the backup of the GIL/CPU
IDLE_REQUESTS = 200


def serve_missing(ck: harness.Cloudkeep) -> str | None:
    """Why ``cloudkeep serve`` cannot run, or None."""
    if (why := ck.missing()) is not None:
        return why
    r = harness.run_quiet(harness.Cmd([ck.exe, "serve", "--help"]), check=False, timeout=60)
    if r.returncode != 0:
        return f"cloudkeep serve unavailable (serve --help exit {r.returncode})"
    return None


def free_port() -> int:
    """An unused local TCP port."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


class Server:
    """A ``cloudkeep serve`` child process on a free port."""

    def __init__(self, ck: harness.Cloudkeep, data: Path, log_path: Path) -> None:
        self.port = free_port()
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(log_path, "ab")  # noqa: SIM115 - lives as long as the server
        argv = [ck.exe, *ck.globals(data), "serve", "--host", HOST, "--port", str(self.port)]
        self._log.write(f"$ {' '.join(argv)}\n".encode())
        self._log.flush()
        self.proc = psutil.Popen(argv, stdout=self._log, stderr=self._log,
                                 stdin=subprocess.DEVNULL, env=harness.child_env(ck.env()))

    def conn(self, timeout: float = 30.0) -> http.client.HTTPConnection:
        """A new keep-alive connection."""
        return http.client.HTTPConnection(HOST, self.port, timeout=timeout)

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Until ``GET /backups`` answers 200; raises with the log tail if the server died."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited {self.proc.returncode}: {self.tail()}")
            with contextlib.suppress(OSError, http.client.HTTPException):
                c = self.conn(5)
                c.request("GET", "/backups")
                r = c.getresponse()
                r.read()
                c.close()
                if r.status == 200:
                    return
            time.sleep(0.2)
        raise RuntimeError(f"server not ready after {timeout:.0f} s: {self.tail()}")

    def tail(self) -> str:
        """Last lines of the server log, for error messages."""
        self._log.flush()
        return " | ".join(self.log_path.read_text(errors="replace").splitlines()[-5:])

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it lingers."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except psutil.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(15)
        self._log.close()


def request(c: http.client.HTTPConnection, method: str, path: str,
            body: bytes | None = None) -> tuple[int, bytes, float]:
    """One request on a keep-alive connection: (status, body, seconds incl. full read)."""
    headers = {"Content-Type": "application/json"} if body is not None else {}
    t0 = time.perf_counter()
    c.request(method, path, body=body, headers=headers)
    r = c.getresponse()
    data = r.read()
    return r.status, data, time.perf_counter() - t0


def count_backups(payload: bytes) -> int | None:
    """Number of backups in a ``GET /backups`` body (Pieces ``{"iterable": [...]}`` or list)."""
    try:
        doc = json.loads(payload)
    except ValueError:
        return None
    if isinstance(doc, dict):
        doc = doc.get("iterable", doc.get("backups"))
    return len(doc) if isinstance(doc, list) else None


def stats(lat_s: list[float]) -> dict[str, Any]:
    """p50/p90/p99/max in ms."""
    if not lat_s:
        return {"n": 0}
    a = np.array(lat_s) * 1000
    return {"n": len(lat_s), "p50_ms": round(float(np.percentile(a, 50)), 2),
            "p90_ms": round(float(np.percentile(a, 90)), 2),
            "p99_ms": round(float(np.percentile(a, 99)), 2),
            "max_ms": round(float(a.max()), 2), "mean_ms": round(float(a.mean()), 2)}


def seed_backups(ck: harness.Cloudkeep, tiny: Path, n: int, workdir: Path,
                 log: Callable[[str], None]) -> dict[str, Any]:
    """Put ``n`` backups of the tiny folder in the store, via the API if it can."""
    t0 = time.perf_counter()
    srv = Server(ck, tiny, workdir / "logs" / "seed-server.log")
    try:
        srv.wait_ready()
        c = srv.conn(120)
        status, body, _ = request(c, "POST", "/backups/create", b"{}")
        if status == 200:
            for i in range(1, n):
                status, body, _ = request(c, "POST", "/backups/create", b"{}")
                if status != 200:
                    raise RuntimeError(f"POST /backups/create #{i + 1}: {status} {body[:200]!r}")
                if (i + 1) % 100 == 0:
                    log(f"service: seeded {i + 1}/{n} backups via POST /backups/create")
            c.close()
            return {"method": "POST /backups/create", "seconds": round(time.perf_counter() - t0, 1)}
        log(f"service: POST /backups/create -> {status} {body[:120]!r}; seeding via the CLI")
    finally:
        srv.stop()
    for i in range(n):
        harness.run_quiet(harness.Cmd([ck.exe, *ck.globals(tiny), "backup", "--json"],
                                      env=ck.env()))
        if (i + 1) % 50 == 0:
            log(f"service: seeded {i + 1}/{n} backups via cloudkeep backup")
    return {"method": "cloudkeep backup (CLI)", "seconds": round(time.perf_counter() - t0, 1)}


def backup_while_polling(srv: Server, c: http.client.HTTPConnection,
                         log: Callable[[str], None], rnd: int
                         ) -> tuple[dict[str, Any], list[float], int]:
    """POST /backups/create in a thread; GET /backups on ``c`` until it answers."""
    done: dict[str, Any] = {}

    def create() -> None:
        t0 = time.perf_counter()
        try:
            cc = srv.conn(3600)
            st, b, _ = request(cc, "POST", "/backups/create", b"{}")
            done.update(status=st, body=b[:300].decode(errors="replace"))
        except (OSError, http.client.HTTPException) as exc:
            done.update(status=None, body=repr(exc))
        done["seconds"] = round(time.perf_counter() - t0, 3)

    th = threading.Thread(target=create, daemon=True)
    log(f"service: large backup {rnd + 1} via POST /backups/create; polling GET /backups")
    th.start()
    lat: list[float] = []
    errors = 0
    while th.is_alive():
        status, _body, secs = request(c, "GET", "/backups")
        if status == 200:
            lat.append(secs)
        else:
            errors += 1
        time.sleep(POLL_PAUSE_S)
    th.join()
    return done, lat, errors


def split_rss(procs: list[dict[str, Any]]) -> dict[str, Any]:
    """The server process's and its engine process's own peaks, from the tree's.

    The engine is the child ``api/runner.py`` spawns (multiprocessing's ``spawn_main``);
    multiprocessing's resource tracker is neither.
    """
    out: dict[str, Any] = {"processes": procs}
    if procs:
        out["server_process_peak_rss_bytes"] = procs[0]["peak_rss_bytes"]
    engines = [p for p in procs[1:] if "spawn_main" in p["cmdline"]
               and "resource_tracker" not in p["cmdline"]]
    if engines:
        out["engine_peak_rss_bytes"] = max(p["peak_rss_bytes"] for p in engines)
    return out


def run_service_bench(workdir: Path, large: Path, backups: int = 1000, rounds: int = 3,
                      log: Callable[[str], None] = print) -> dict[str, Any]:
    """The whole service benchmark; returns figures or ``{"skipped": why}``/``{"error": ...}``.

    Round 1 backs the large folder up for the first time; later rounds follow a 1%
    day-of-use mutation each, so there are enough samples for a meaningful p99.
    """
    ck = harness.Cloudkeep(workdir)
    why = serve_missing(ck)
    if why:
        log(f"SKIP service benchmark: {why}")
        return {"skipped": why}
    if workdir.exists():
        shutil.rmtree(workdir)
    ck.setup()
    tiny, live = workdir / "tiny", workdir / "live"
    generate.generate_tiny(tiny)
    ck.init_for(tiny)
    out: dict[str, Any] = {"backups_seeded": backups}
    try:
        out["seed"] = seed_backups(ck, tiny, backups, workdir, log)
        subprocess.run(["cp", "-a", "--reflink=auto", str(large), str(live)], check=True)
        srv = Server(ck, live, workdir / "logs" / "server.log")
        try:
            srv.wait_ready()
            c = srv.conn()
            idle: list[float] = []
            for _ in range(IDLE_REQUESTS):
                _status, body, secs = request(c, "GET", "/backups")
                idle.append(secs)
                time.sleep(POLL_PAUSE_S)
            out["backups_listed"] = count_backups(body)
            out["idle"] = stats(idle)

            out["first_request_ms"] = round(idle[0] * 1000, 2)
            busy: list[float] = []
            errors = 0
            rounds_out = []
            sampler = harness.RssSampler(srv.proc)
            sampler.start()
            for rnd in range(rounds):
                if rnd:
                    generate.mutate(live, seed=1 + rnd)  # next day of use, then back up
                done, lat, errs = backup_while_polling(srv, c, log, rnd)
                busy += lat
                errors += errs
                rounds_out.append({**done, **stats(lat)})
                if done.get("status") != 200:
                    out["error"] = f"large POST /backups/create failed: {done}"
                    break
            sampler.stop.set()
            sampler.join()
            out["during_backup"] = {**stats(busy), "errors": errors}
            out["large_backups"] = rounds_out
            out["server_peak_rss_bytes"] = sampler.peak
            out.update(split_rss(sampler.per_process()))
            log(f"service: idle {out['idle']} during {out['during_backup']}")
        finally:
            srv.stop()
    except (RuntimeError, OSError, http.client.HTTPException,
            subprocess.CalledProcessError) as exc:
        out["error"] = str(exc)
        log(f"service benchmark error: {exc}")
    return out


def main(argv: list[str] | None = None) -> int:
    """Standalone run against ``bench/work/<size>mib/base`` (generated if missing)."""
    import run
    import summary

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-mib", type=float, default=600.0)
    ap.add_argument("--workdir", type=Path, default=run.BENCH / "work")
    ap.add_argument("--backups", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=3, help="large backups to poll during")
    args = ap.parse_args(argv)
    root = (args.workdir / f"{args.size_mib:g}mib").resolve()
    root.mkdir(parents=True, exist_ok=True)
    run.prepare_base(root, args.size_mib, args.seed)
    res = run_service_bench(root / "service", root / "base", args.backups, args.rounds,
                            log=run.log)
    print(json.dumps(res, indent=2))
    print(summary.service_summary(res))
    return 0 if "error" not in res else 1


if __name__ == "__main__":
    raise SystemExit(main())
