"""Measurement and tool drivers shared by ``run.py`` and ``service.py``.

Every tool is driven through its CLI as a child process, so wall time, CPU time and
peak RSS are measured the same way for cloudkeep, restic and borg.
"""

from __future__ import annotations

import contextlib
import os
import platform
import resource
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil
from stores import AWS_ENV_CLEARED, FolderLocation, Location

MIB = 1024 * 1024
POLL_S = 0.02
PASSPHRASE = "cloudkeep-bench-passphrase-not-secret"
CLEARED_ENV = (*AWS_ENV_CLEARED, "CLOUDKEEP_DATA", "CLOUDKEEP_STORE", "CLOUDKEEP_PASSPHRASE",
               "CLOUDKEEP_PASSPHRASE_FILE", "CLOUDKEEP_CONFIG_DIR", "CLOUDKEEP_CACHE_DIR")


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
    server_cpu_s: float = 0.0
    bench_cpu_s: float = 0.0
    processes: int = 0
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

    The tree is the process and all its descendants at each poll (children of children
    included, e.g. a spawned engine process). Polling can miss a short spike, so the
    kernel's per-process high-water mark is kept too and the reported peak is
    max(peak summed RSS, largest single-process VmHWM). ``per_process`` keeps each
    process's peak and command line, for reporting one process of a tree on its own.
    """

    def __init__(self, proc: psutil.Process) -> None:
        super().__init__(daemon=True)
        self.proc = proc
        self.stop = threading.Event()
        self.peak_sum = 0
        self.hwm: dict[int, int] = {}
        self.cmdlines: dict[int, str] = {}

    def _sample(self) -> None:
        try:
            procs = [self.proc, *self.proc.children(recursive=True)]
        except psutil.Error:
            return
        total = 0
        for p in procs:
            with contextlib.suppress(psutil.Error, OSError):
                rss = p.memory_info().rss
                total += rss
                self.hwm[p.pid] = max(self.hwm.get(p.pid, 0), rss, _vm_hwm(p.pid))
                if p.pid not in self.cmdlines:
                    self.cmdlines[p.pid] = " ".join(p.cmdline())
        self.peak_sum = max(self.peak_sum, total)

    def run(self) -> None:
        while not self.stop.is_set():
            self._sample()
            self.stop.wait(POLL_S)

    @property
    def peak(self) -> int:
        return max(self.peak_sum, max(self.hwm.values(), default=0))

    def per_process(self) -> list[dict[str, Any]]:
        """Peak RSS of each process seen in the tree, root first."""
        return [{"pid": pid, "cmdline": self.cmdlines.get(pid, ""), "peak_rss_bytes": hwm}
                for pid, hwm in sorted(self.hwm.items(), key=lambda kv: kv[0] != self.proc.pid)]


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


def _cpu_of(procs: Iterable[psutil.Process]) -> float:
    total = 0.0
    for p in procs:
        with contextlib.suppress(psutil.Error):
            t = p.cpu_times()
            total += t.user + t.system
    return total


def run_measured(cmd: Cmd, log_path: Path, size: Callable[[], int] | None = None,
                 servers: Iterable[psutil.Process] = ()) -> Measure:
    """Run ``cmd`` to completion and measure it; stdout+stderr go to ``log_path``.

    CPU comes from RUSAGE_CHILDREN deltas, which include every descendant the tool waited
    for, i.e. user+sys of the whole tree. Only one measured child runs at a time.
    ``size`` gives the repository's bytes (read before and after); ``servers`` are
    processes serving the store (moto): their CPU is recorded apart and, like this
    process's own (RSS sampler, link proxy), not counted as other load.
    """
    servers = list(servers)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    before = size() if size else 0
    env = child_env(cmd.env)
    out_path = log_path.with_suffix(".stdout")
    me = psutil.Process()
    with open(log_path, "wb") as err, open(out_path, "wb") as out:
        err.write(f"$ {' '.join(cmd.argv)}\n".encode())
        err.flush()
        load = os.getloadavg()[0]
        busy0, server0, self0 = _busy_cpu_s(), _cpu_of(servers), _cpu_of([me])
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
        server_cpu, self_cpu = _cpu_of(servers) - server0, _cpu_of([me]) - self0
    user = ru1.ru_utime - ru0.ru_utime
    sys_ = ru1.ru_stime - ru0.ru_stime
    stdout = out_path.read_text(errors="replace")
    return Measure(wall_s=round(wall, 4), cpu_s=round(user + sys_, 4), user_s=round(user, 4),
                   sys_s=round(sys_, 4), peak_rss_bytes=sampler.peak, rc=rc, log=str(log_path),
                   stdout=stdout, repo_bytes_before=before, loadavg_1m=round(load, 2),
                   other_cpu_s=round(max(0.0, busy - user - sys_ - server_cpu - self_cpu), 3),
                   server_cpu_s=round(server_cpu, 3), bench_cpu_s=round(self_cpu, 3),
                   processes=len(sampler.hwm),
                   repo_bytes_after=size() if size else 0)


def compile_bytecode() -> None:
    """Write the bytecode of cloudkeep's modules, as installing a wheel does: an editable
    install under PYTHONDONTWRITEBYTECODE=1 would compile every module at every start."""
    import compileall

    import cloudkeep

    compileall.compile_dir(str(Path(cloudkeep.__file__).parent), quiet=1)


def child_env(extra: Mapping[str, str]) -> dict[str, str]:
    """The environment of a tool's process: ours, without settings that could point a tool
    at a real account, store, data folder or configuration, plus ``extra``."""
    env = {k: v for k, v in os.environ.items()
           if k not in CLEARED_ENV and not k.startswith(("RESTIC_", "BORG_"))}
    return {**env, **extra}


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
    return subprocess.run(cmd.argv, env=child_env(cmd.env), cwd=cmd.cwd, check=check,
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


def new_machine_env(machine: Path) -> dict[str, str]:
    """A fresh, empty home for a restore "on a new machine": nothing the backups left
    (caches, configuration, trusted stores, a Pieces OS data folder) is found there."""
    home = machine / "home"
    for sub in (".config", ".cache", ".local/share"):
        (home / sub).mkdir(parents=True, exist_ok=True)
    return {"HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config"),
            "XDG_CACHE_HOME": str(home / ".cache"),
            "XDG_DATA_HOME": str(home / ".local/share")}


class Tool:
    """A backup tool driven through its CLI against one encrypted repository."""

    name = "tool"

    def __init__(self, workdir: Path, location: Location | None = None,
                 exe: str | None = None) -> None:
        self.workdir = workdir
        self.loc = location or FolderLocation(workdir / "repo")
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
        """Environment for every invocation on the backing-up machine."""
        return self.loc.env()

    def setup(self) -> None:
        """Create an empty encrypted repository (not measured)."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.passfile.write_text(PASSPHRASE + "\n")
        self.loc.prepare()

    def backup(self, data: Path, n: int) -> Cmd:
        """Command for the n-th backup (1-based) of ``data``."""
        raise NotImplementedError

    def restore_new_machine(self, target: Path, machine: Path, direct: bool = False) -> Cmd:
        """Command restoring the latest backup into the empty folder ``target`` as a new
        machine would: only the store and the passphrase, every cache and configuration
        folder fresh and empty under ``machine``. ``direct``: reach S3 without the link."""
        raise NotImplementedError

    def restore_reuse(self, target: Path, direct: bool = False) -> Cmd | None:
        """A restore that may take chunks from the live data folder (None: the tool never
        does); ``direct`` as for ``restore_new_machine``."""
        return None

    def after_backup(self, m: Measure, n: int) -> None:
        """Hook to remember what a backup printed."""

    def _cmd(self, *args: str, cwd: Path | None = None, env: dict[str, str] | None = None
             ) -> Cmd:
        return Cmd([self.exe, *args], env=self.env() if env is None else env,
                   cwd=str(cwd) if cwd else None)


class Restic(Tool):
    """restic: repository format 2 (the 0.14 default), compression 'auto' (default)."""

    name = "restic"

    def env(self) -> dict[str, str]:
        return {**self.loc.env(), "RESTIC_REPOSITORY": self.loc.restic_repo(),
                "RESTIC_PASSWORD_FILE": str(self.passfile),
                "RESTIC_CACHE_DIR": str(self.workdir / "cache"), "RESTIC_PROGRESS_FPS": "0.2"}

    def version(self) -> str:
        return run_quiet(self._cmd("version")).stdout.strip()

    def setup(self) -> None:
        super().setup()
        run_quiet(self._cmd("init"))

    def backup(self, data: Path, n: int) -> Cmd:
        return self._cmd("backup", "--host", "bench", str(data))

    def restore_new_machine(self, target: Path, machine: Path, direct: bool = False) -> Cmd:
        env = {**self.env(), **new_machine_env(machine),
               "RESTIC_REPOSITORY": self.loc.restic_repo(direct),
               "RESTIC_CACHE_DIR": str(machine / "restic-cache")}
        return self._cmd("restore", "latest", "--target", str(target), env=env)


class Borg(Tool):
    """borg 1.x: repokey-blake2 encryption, default compression (lz4); local folders only."""

    name = "borg"

    def env(self) -> dict[str, str]:
        return {"BORG_PASSPHRASE": PASSPHRASE, "BORG_BASE_DIR": str(self.workdir / "base"),
                "BORG_RELOCATED_REPO_ACCESS_IS_OK": "yes"}

    def version(self) -> str:
        return run_quiet(self._cmd("--version")).stdout.strip()

    @property
    def repo(self) -> str:
        repo = self.loc.borg_repo()
        if repo is None:
            raise RuntimeError("borg has no S3 backend")
        return repo

    def setup(self) -> None:
        super().setup()
        run_quiet(self._cmd("init", "--encryption=repokey-blake2", self.repo))
        self.last = 0

    def backup(self, data: Path, n: int) -> Cmd:
        self.last = n
        return self._cmd("create", f"{self.repo}::bench-{n}", str(data))

    def restore_new_machine(self, target: Path, machine: Path, direct: bool = False) -> Cmd:
        env = {**self.env(), **new_machine_env(machine),
               "BORG_BASE_DIR": str(machine / "borg-base"),
               "BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK": "no"}
        return self._cmd("extract", f"{self.repo}::bench-{self.last}", cwd=target, env=env)


class Cloudkeep(Tool):
    """cloudkeep CLI: ``cloudkeep --data D --store URL --passphrase-file F <cmd>``, with its
    own configuration and cache folders (never the user's)."""

    name = "cloudkeep"

    def __init__(self, workdir: Path, location: Location | None = None,
                 exe: str | None = None) -> None:
        default = Path(sys.executable).with_name("cloudkeep")
        super().__init__(workdir, location, exe or (str(default) if default.exists() else None))
        self.data: Path | None = None

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

    def env(self) -> dict[str, str]:
        device = self.workdir / "device"
        return {**self.loc.env(), "CLOUDKEEP_CONFIG_DIR": str(device / "config"),
                "CLOUDKEEP_CACHE_DIR": str(device / "cache")}

    def globals(self, data: Path | None, direct: bool = False) -> list[str]:
        """Global options shared by every subcommand (and ``serve``)."""
        return [*(["--data", str(data)] if data is not None else []),
                "--store", self.loc.cloudkeep_url(direct), "--passphrase-file", str(self.passfile)]

    def setup(self) -> None:
        super().setup()
        if isinstance(self.loc, FolderLocation):
            self.loc.path.mkdir(parents=True, exist_ok=True)
        self.data = None

    def init_for(self, data: Path) -> None:
        """Run ``init`` if the CLI has one (the store may also self-initialise)."""
        self.data = data
        r = run_quiet(Cmd([self.exe, "--help"]), check=False)
        if " init " in r.stdout or "│ init" in r.stdout:
            run_quiet(Cmd([self.exe, *self.globals(data), "init"], env=self.env()), check=False)

    def backup(self, data: Path, n: int) -> Cmd:
        if self.data is None:
            self.init_for(data)
        self.data = data
        return Cmd([self.exe, *self.globals(data), "backup"], env=self.env())

    def restore_new_machine(self, target: Path, machine: Path, direct: bool = False) -> Cmd:
        env = {**self.loc.env(), **new_machine_env(machine),
               "CLOUDKEEP_CONFIG_DIR": str(machine / "cloudkeep-config"),
               "CLOUDKEEP_CACHE_DIR": str(machine / "cloudkeep-cache")}
        return Cmd([self.exe, *self.globals(None, direct), "restore", "latest",
                    "--target", str(target)], env=env)

    def restore_reuse(self, target: Path, direct: bool = False) -> Cmd:
        """Into ``target``, taking the chunks the live data (``--data``) still holds."""
        assert self.data is not None
        return Cmd([self.exe, *self.globals(self.data, direct), "restore", "latest",
                    "--target", str(target)], env=self.env())


TOOLS: dict[str, type[Tool]] = {"cloudkeep": Cloudkeep, "restic": Restic, "borg": Borg}
