"""Measurement and tool drivers shared by ``run.py`` and ``service.py``.

Every tool is driven through its CLI as a child process, so wall time, CPU time and
peak RSS are measured the same way for cloudkeep, restic and borg.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil

MIB = 1024 * 1024
POLL_S = 0.02
PASSPHRASE = "cloudkeep-bench-passphrase-not-secret"


@dataclass
class Cmd:
    """One child process to run: argv, extra environment and working directory."""

    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    cwd: str | None = None


@dataclass
class Measure:
    """Cost of one step, measured over the child's whole process tree."""

    wall_s: float
    cpu_s: float
    user_s: float
    sys_s: float
    peak_rss_bytes: int
    rc: int
    log: str
    stdout: str = ""
    repo_bytes_before: int = 0
    repo_bytes_after: int = 0
    other_cpu_s: float = 0.0
    loadavg_1m: float = 0.0
    settle: dict[str, float] = field(default_factory=dict)
    note: str = ""

    @property
    def added_bytes(self) -> int:
        """Bytes the step added to the repository (sum of file sizes after - before)."""
        return self.repo_bytes_after - self.repo_bytes_before

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly figures (stdout left out, it can be large)."""
        d = asdict(self)
        d.pop("stdout")
        d["added_bytes"] = self.added_bytes
        return d


class RssSampler(threading.Thread):
    """Polls the tree every 20 ms: peak of summed RSS, plus each process's own VmHWM.

    Polling can miss a short spike, so the kernel's per-process high-water mark is kept
    too and the reported peak is max(peak summed RSS, largest single-process VmHWM).
    """

    def __init__(self, proc: psutil.Process) -> None:
        super().__init__(daemon=True)
        self.proc = proc
        self.stop = threading.Event()
        self.peak_sum = 0
        self.hwm: dict[int, int] = {}

    def _sample(self) -> None:
        try:
            procs = [self.proc, *self.proc.children(recursive=True)]
        except psutil.Error:
            return
        total = 0
        for p in procs:
            with contextlib.suppress(psutil.Error, OSError):
                total += p.memory_info().rss
                self.hwm[p.pid] = max(self.hwm.get(p.pid, 0), _vm_hwm(p.pid))
        self.peak_sum = max(self.peak_sum, total)

    def run(self) -> None:
        while not self.stop.is_set():
            self._sample()
            self.stop.wait(POLL_S)

    @property
    def peak(self) -> int:
        return max(self.peak_sum, max(self.hwm.values(), default=0))


def _vm_hwm(pid: int) -> int:
    """Kernel-tracked peak RSS of one process (Linux), 0 if unavailable."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def run_measured(cmd: Cmd, log_path: Path, repo: Path | None = None) -> Measure:
    """Run ``cmd`` to completion and measure it; stdout+stderr go to ``log_path``.

    CPU comes from RUSAGE_CHILDREN deltas, which include every descendant the tool waited
    for, i.e. user+sys of the whole tree. Only one measured child runs at a time.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    before = dir_bytes(repo) if repo else 0
    env = {**os.environ, **cmd.env}
    out_path = log_path.with_suffix(".stdout")
    with open(log_path, "wb") as err, open(out_path, "wb") as out:
        err.write(f"$ {' '.join(cmd.argv)}\n".encode())
        err.flush()
        load = os.getloadavg()[0]
        busy0 = _busy_cpu_s()
        ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        proc = psutil.Popen(cmd.argv, env=env, cwd=cmd.cwd, stdout=out, stderr=err,
                            stdin=subprocess.DEVNULL)
        sampler = RssSampler(proc)
        sampler.start()
        rc = proc.wait()
        wall = time.perf_counter() - t0
        sampler.stop.set()
        sampler.join()
        ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        busy = _busy_cpu_s() - busy0
    user = ru1.ru_utime - ru0.ru_utime
    sys_ = ru1.ru_stime - ru0.ru_stime
    stdout = out_path.read_text(errors="replace")
    return Measure(wall_s=round(wall, 4), cpu_s=round(user + sys_, 4), user_s=round(user, 4),
                   sys_s=round(sys_, 4), peak_rss_bytes=sampler.peak, rc=rc, log=str(log_path),
                   stdout=stdout, repo_bytes_before=before, loadavg_1m=round(load, 2),
                   other_cpu_s=round(max(0.0, busy - user - sys_), 3),
                   repo_bytes_after=dir_bytes(repo) if repo else 0)


def wait_quiet(max_s: float, busy_pct: float = 25.0) -> dict[str, float]:
    """Wait (up to ``max_s``) until other processes leave the machine mostly idle.

    The machine may be shared; starting a step while others are busy skews wall time.
    """
    t0 = time.perf_counter()
    pct = psutil.cpu_percent(interval=0.5)
    while pct > busy_pct and time.perf_counter() - t0 < max_s:
        pct = psutil.cpu_percent(interval=1.0)
    return {"waited_s": round(time.perf_counter() - t0, 1), "busy_pct_at_start": pct}


def other_load(m: Mapping[str, Any]) -> float:
    """Share of the machine (0-1) other processes used during a step."""
    cores = os.cpu_count() or 1
    return m.get("other_cpu_s", 0.0) / (m["wall_s"] * cores) if m.get("wall_s") else 0.0


def _busy_cpu_s() -> float:
    """Machine-wide non-idle CPU seconds, to spot other load skewing a measurement."""
    t = psutil.cpu_times()
    return sum(t) - t.idle - getattr(t, "iowait", 0.0) - getattr(t, "guest", 0.0) - getattr(
        t, "guest_nice", 0.0)


def run_quiet(cmd: Cmd, check: bool = True, timeout: float | None = None
              ) -> subprocess.CompletedProcess[str]:
    """Run an unmeasured helper command (init, list, version)."""
    return subprocess.run(cmd.argv, env={**os.environ, **cmd.env}, cwd=cmd.cwd, check=check,
                          capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def dir_bytes(root: Path) -> int:
    """Sum of file sizes under ``root`` (apparent size; what a bucket would bill)."""
    total = 0
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, name)).st_size
    return total


def iter_files(root: Path) -> Iterable[Path]:
    """Regular files under ``root`` in a stable order."""
    return (p for p in sorted(root.rglob("*")) if p.is_file() and not p.is_symlink())


def read_all(root: Path, bufsize: int = 8 * MIB) -> tuple[int, float]:
    """Read every file with large buffered reads; returns (bytes, seconds)."""
    buf = bytearray(bufsize)
    view = memoryview(buf)
    total = 0
    t0 = time.perf_counter()
    for p in iter_files(root):
        with open(p, "rb", buffering=0) as f:
            while n := f.readinto(view):
                total += n
    return total, time.perf_counter() - t0


def page_cache_read_speed(root: Path) -> dict[str, float]:
    """Warm the page cache with one read, then time a second: the physical floor."""
    read_all(root)
    n, secs = read_all(root)
    return {"bytes": n, "seconds": round(secs, 4),
            "mib_per_s": round(n / MIB / secs, 1) if secs > 0 else 0.0}


def file_digest(p: Path) -> str:
    """SHA-256 of a file, streamed."""
    h = hashlib.sha256()
    with open(p, "rb") as f:
        while chunk := f.read(4 * MIB):
            h.update(chunk)
    return h.hexdigest()


def source_state(root: Path) -> dict[str, tuple[int, int]]:
    """(size, mtime_ns) per file, to notice a tool that writes into the data it backs up.

    -shm files are left out: any SQLite reader legitimately writes its read marks there.
    """
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in iter_files(root) if not p.name.endswith("-shm")}


def machine_info() -> dict[str, Any]:
    """Hardware/OS facts that the figures depend on."""
    cpu = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {"nproc": os.cpu_count(), "mem_total_bytes": psutil.virtual_memory().total,
            "cpu_model": cpu, "kernel": platform.release(), "python": platform.python_version(),
            "platform": platform.platform()}


# --------------------------------------------------------------------------- tool drivers


class Tool:
    """A backup tool driven through its CLI against one local, encrypted repository."""

    name = "tool"

    def __init__(self, workdir: Path, exe: str | None = None) -> None:
        self.workdir = workdir
        self.repo = workdir / "repo"
        self.exe = exe or shutil.which(self.name) or self.name
        self.passfile = workdir / "passphrase"

    def missing(self) -> str | None:
        """Why the tool cannot run here, or None. Never installs anything."""
        if not shutil.which(self.exe):
            return f"{self.name}: executable not found on PATH (install it to include it)"
        return None

    def version(self) -> str:
        """Tool version string for the results file."""
        return ""

    def env(self) -> dict[str, str]:
        """Environment for every invocation."""
        return {}

    def setup(self) -> None:
        """Create an empty encrypted repository (not measured)."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.passfile.write_text(PASSPHRASE + "\n")

    def backup(self, data: Path, n: int) -> Cmd:
        """Command for the n-th backup (1-based) of ``data``."""
        raise NotImplementedError

    def restore(self, target: Path) -> Cmd:
        """Command restoring the latest backup into the empty folder ``target``."""
        raise NotImplementedError

    def restore_store_only(self, target: Path) -> Cmd | None:
        """Like ``restore`` but reading everything from the repository, if the tool
        would otherwise take unchanged data from the live folder (None: it never does)."""
        return None

    def after_backup(self, m: Measure, n: int) -> None:
        """Hook to remember ids printed by the backup command."""

    def _cmd(self, *args: str, cwd: Path | None = None) -> Cmd:
        return Cmd([self.exe, *args], env=self.env(), cwd=str(cwd) if cwd else None)


class Restic(Tool):
    """restic: repository format 2 (the 0.14 default), compression 'auto' (default)."""

    name = "restic"

    def env(self) -> dict[str, str]:
        return {"RESTIC_REPOSITORY": str(self.repo), "RESTIC_PASSWORD_FILE": str(self.passfile),
                "RESTIC_CACHE_DIR": str(self.workdir / "cache"), "RESTIC_PROGRESS_FPS": "0.2"}

    def version(self) -> str:
        return run_quiet(self._cmd("version")).stdout.strip()

    def setup(self) -> None:
        super().setup()
        run_quiet(self._cmd("init"))

    def backup(self, data: Path, n: int) -> Cmd:
        return self._cmd("backup", "--host", "bench", str(data))

    def restore(self, target: Path) -> Cmd:
        return self._cmd("restore", "latest", "--target", str(target))


class Borg(Tool):
    """borg 1.x: repokey-blake2 encryption, default compression (lz4)."""

    name = "borg"

    def env(self) -> dict[str, str]:
        return {"BORG_PASSPHRASE": PASSPHRASE, "BORG_BASE_DIR": str(self.workdir / "base"),
                "BORG_RELOCATED_REPO_ACCESS_IS_OK": "yes"}

    def version(self) -> str:
        return run_quiet(self._cmd("--version")).stdout.strip()

    def setup(self) -> None:
        super().setup()
        run_quiet(self._cmd("init", "--encryption=repokey-blake2", str(self.repo)))
        self.last = 0

    def backup(self, data: Path, n: int) -> Cmd:
        self.last = n
        return self._cmd("create", f"{self.repo}::bench-{n}", str(data))

    def restore(self, target: Path) -> Cmd:
        return self._cmd("extract", f"{self.repo}::bench-{self.last}", cwd=target)


class Cloudkeep(Tool):
    """cloudkeep CLI: ``cloudkeep --data D --store file:///R --passphrase-file F <cmd>``."""

    name = "cloudkeep"

    def __init__(self, workdir: Path, exe: str | None = None) -> None:
        default = Path(sys.executable).with_name("cloudkeep")
        super().__init__(workdir, exe or (str(default) if default.exists() else None))
        self.data: Path | None = None
        self.last_id: str | None = None

    def missing(self) -> str | None:
        if (why := super().missing()) is not None:
            return why
        try:
            r = run_quiet(Cmd([self.exe, "--help"]), check=False, timeout=60)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"cloudkeep: --help failed to run ({exc})"
        if r.returncode != 0:
            tail = (r.stderr or r.stdout).strip().splitlines()[-1:] or ["?"]
            return f"cloudkeep: CLI not usable yet (--help exit {r.returncode}: {tail[0]})"
        if "backup" not in r.stdout:
            return "cloudkeep: CLI has no 'backup' command yet"
        return None

    def version(self) -> str:
        git = ""
        with contextlib.suppress(OSError, subprocess.CalledProcessError):
            here = Path(__file__).resolve().parent
            rev = run_quiet(Cmd(["git", "rev-parse", "--short", "HEAD"], cwd=str(here)))
            dirty = run_quiet(Cmd(["git", "status", "--porcelain", "--", "../src"],
                                  cwd=str(here))).stdout.strip()
            git = f" (git {rev.stdout.strip()}{', src modified' if dirty else ''})"
        r = run_quiet(Cmd([self.exe, "--version"]), check=False, timeout=60)
        v = r.stdout.strip() if r.returncode == 0 else ""
        return (v or "cloudkeep") + git

    def globals(self, data: Path) -> list[str]:
        """Global options shared by every subcommand (and ``serve``)."""
        return ["--data", str(data), "--store", self.repo.resolve().as_uri(),
                "--passphrase-file", str(self.passfile)]

    def setup(self) -> None:
        super().setup()
        self.repo.mkdir(parents=True, exist_ok=True)
        self.last_id = None

    def init_for(self, data: Path) -> None:
        """Run ``init`` if the CLI has one (the store may also self-initialise)."""
        self.data = data
        r = run_quiet(Cmd([self.exe, "--help"]), check=False)
        if " init " in r.stdout or "│ init" in r.stdout:
            run_quiet(Cmd([self.exe, *self.globals(data), "init"]), check=False)

    def backup(self, data: Path, n: int) -> Cmd:
        if self.data is None:
            self.init_for(data)
        self.data = data
        # Plain output, as restic and borg are run: the id is read untimed afterwards.
        return Cmd([self.exe, *self.globals(data), "backup"])

    def after_backup(self, m: Measure, n: int) -> None:
        self.last_id = None

    def latest_id(self) -> str:
        """Id of the newest backup: from the last backup's JSON, else from ``list --json``."""
        if self.last_id:
            return self.last_id
        assert self.data is not None
        r = run_quiet(Cmd([self.exe, *self.globals(self.data), "list", "--json"]))
        items = parse_json_output(r.stdout)
        if isinstance(items, Mapping):
            items = next((v for v in items.values() if isinstance(v, list)), [items])
        if not items:
            raise RuntimeError("cloudkeep list --json returned no backups")
        ident = find_id(items[0])  # `cloudkeep list` is documented newest first
        if ident is None:
            raise RuntimeError(f"cannot find a backup id in: {r.stdout[:300]}")
        return ident

    def restore(self, target: Path) -> Cmd:
        assert self.data is not None
        return Cmd([self.exe, *self.globals(self.data), "restore", self.latest_id(),
                    "--target", str(target)])

    def restore_store_only(self, target: Path) -> Cmd:
        """cloudkeep takes chunks the live data still holds from it; this fetches all."""
        return Cmd([*self.restore(target).argv, "--fetch-all"])


def parse_json_output(text: str) -> Any:
    """The JSON document a ``--json`` command printed (last JSON line if there are several)."""
    text = text.strip()
    with contextlib.suppress(ValueError):
        return json.loads(text)
    for line in reversed(text.splitlines()):
        with contextlib.suppress(ValueError):
            return json.loads(line)
    return None


def find_id(doc: Any) -> str | None:
    """A backup id from a JSON object, tolerant of the exact key the CLI picked."""
    if isinstance(doc, Mapping):
        for key in ("id", "backup_id", "backup", "snapshot_id", "snapshot"):
            v = doc.get(key)
            if isinstance(v, str | int) and not isinstance(v, bool):
                return str(v)
            if isinstance(v, Mapping) and (inner := find_id(v)):
                return inner
    return None


TOOLS: dict[str, type[Tool]] = {"cloudkeep": Cloudkeep, "restic": Restic, "borg": Borg}
