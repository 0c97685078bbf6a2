"""Where the tools keep their repositories: a local folder, or S3 (a moto server), and
optionally an emulated network link (``bench/linkproxy.py``) in front of the S3 endpoint.

Each tool gets its own ``Location`` (a folder, or a bucket of its own) and every
location answers the same questions: how each tool names it, how many bytes it holds,
and which local files hold them (for dropping them from the page cache).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

HOST = "127.0.0.1"
AWS_ENV = {"AWS_ACCESS_KEY_ID": "AKIABENCHMOTO", "AWS_SECRET_ACCESS_KEY": "bench-moto-secret",
           "AWS_REGION": "us-east-1", "AWS_DEFAULT_REGION": "us-east-1"}
# Cleared for every child, so nothing of the real environment reaches a fake endpoint.
AWS_ENV_CLEARED = ("AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_ENDPOINT_URL",
                   "AWS_ENDPOINT_URL_S3")


# ----------------------------------------------------------------------------- link flag


@dataclass(frozen=True)
class Link:
    """An emulated link: ``rate_bits_per_s`` each way, ``rtt_s`` round trip."""

    rate_bits_per_s: float
    rtt_s: float

    @property
    def one_way_s(self) -> float:
        """The delay the proxy adds in each direction (half the round trip)."""
        return self.rtt_s / 2

    def describe(self) -> str:
        return f"{self.rate_bits_per_s / 1e6:g} Mbit/s each way, {self.rtt_s * 1000:g} ms RTT"


_RATE = re.compile(r"([0-9]*\.?[0-9]+)\s*([kmg]?)(bit|bps)?", re.IGNORECASE)
_TIME = re.compile(r"([0-9]*\.?[0-9]+)\s*(us|ms|s)?", re.IGNORECASE)


def parse_link(text: str) -> Link:
    """``RATE,RTT`` as ``--link`` takes it: ``100mbit,40ms`` -> 1e8 bit/s, 0.040 s RTT.

    Rates: a number of bits per second with an optional k/m/g (decimal) and ``bit``;
    times: a number with ``us``, ``ms`` or ``s`` (seconds when bare).
    """
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != 2:
        raise ValueError(f"--link takes RATE,RTT (e.g. 100mbit,40ms), not {text!r}")
    rate, rtt = _RATE.fullmatch(parts[0]), _TIME.fullmatch(parts[1])
    if rate is None:
        raise ValueError(f"not a rate: {parts[0]!r} (e.g. 100mbit)")
    if rtt is None:
        raise ValueError(f"not a round-trip time: {parts[1]!r} (e.g. 40ms)")
    bits = float(rate.group(1)) * {"": 1.0, "k": 1e3, "m": 1e6, "g": 1e9}[rate.group(2).lower()]
    secs = float(rtt.group(1)) * {"us": 1e-6, "ms": 1e-3, "s": 1.0}[(rtt.group(2) or "s").lower()]
    if bits <= 0:
        raise ValueError("the link rate must be positive")
    return Link(bits, secs)


# ----------------------------------------------------------------------------- locations


class Location:
    """One tool's repository place."""

    kind = "file"

    def cloudkeep_url(self, direct: bool = False) -> str:
        raise NotImplementedError

    def restic_repo(self, direct: bool = False) -> str:
        raise NotImplementedError

    def borg_repo(self) -> str | None:
        """The repository path for borg, None if borg cannot use this store."""
        return None

    def env(self) -> dict[str, str]:
        """Credentials and the like for the tool's process."""
        return {}

    def prepare(self) -> None:
        """Make the empty place (folder or bucket)."""

    def bytes(self) -> int:
        """Bytes stored (sum of object or file sizes: what a bucket bills)."""
        raise NotImplementedError

    def local_files(self) -> list[Path]:
        """Files holding the repository on this machine (none for S3: moto holds objects
        in its memory)."""
        return []

    def remove(self) -> None:
        """Delete the repository and all it holds."""


class FolderLocation(Location):
    """A local folder."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def cloudkeep_url(self, direct: bool = False) -> str:
        return self.path.resolve().as_uri()

    def restic_repo(self, direct: bool = False) -> str:
        return str(self.path)

    def borg_repo(self) -> str:
        return str(self.path)

    def prepare(self) -> None:
        if self.path.exists():
            shutil.rmtree(self.path)

    def bytes(self) -> int:
        total = 0
        for dirpath, _dirs, files in os.walk(self.path):
            for name in files:
                with contextlib.suppress(OSError):
                    total += os.lstat(os.path.join(dirpath, name)).st_size
        return total

    def local_files(self) -> list[Path]:
        return [Path(d, f) for d, _, fs in os.walk(self.path) for f in fs]

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


class BucketLocation(Location):
    """A bucket of its own on the moto server, reached through the link if there is one."""

    kind = "s3"

    def __init__(self, server: MotoServer, bucket: str, endpoint: str) -> None:
        self.server = server
        self.bucket = bucket
        self.endpoint = endpoint  # what the tools use: the proxy's in link mode

    def _endpoint(self, direct: bool) -> str:
        return self.server.endpoint if direct else self.endpoint

    def cloudkeep_url(self, direct: bool = False) -> str:
        return f"s3://{self.bucket}/repo?endpoint={self._endpoint(direct)}&region=us-east-1"

    def restic_repo(self, direct: bool = False) -> str:
        return f"s3:{self._endpoint(direct)}/{self.bucket}/repo"

    def env(self) -> dict[str, str]:
        return dict(AWS_ENV)

    def prepare(self) -> None:
        self.remove()
        self.server.client().create_bucket(Bucket=self.bucket)

    def bytes(self) -> int:
        return sum(size for _key, size in self.server.objects(self.bucket))

    def remove(self) -> None:
        self.server.delete_bucket(self.bucket)


# ----------------------------------------------------------------------------- moto server


def free_port() -> int:
    """An unused loopback TCP port."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


# moto's own server (werkzeug) closes the connection after every response; S3 keeps it
# open. Under uvicorn the same moto application keeps connections alive, so over an
# emulated link no tool pays a new TCP handshake per request that S3 would not charge.
KEEP_ALIVE_SERVER = """
import sys, uvicorn
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
uvicorn.run(DomainDispatcherApplication(create_backend_app), host="127.0.0.1",
            port=int(sys.argv[1]), interface="wsgi", log_level="warning")
"""


class MotoServer:
    """moto's S3 application as a separate process (under uvicorn, keeping connections
    alive as S3 does), so its CPU and memory are its own and never counted in a tool's
    process tree. It keeps every object in memory."""

    def __init__(self, log_path: Path) -> None:
        self.port = free_port()
        self.endpoint = f"http://{HOST}:{self.port}"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(log_path, "wb")  # noqa: SIM115 - lives as long as the server
        self.proc = psutil.Popen([sys.executable, "-c", KEEP_ALIVE_SERVER, str(self.port)],
                                 stdout=self._log,
                                 stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self._client: Any = None
        deadline = time.monotonic() + 30
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"moto server exited {self.proc.returncode}, see {log_path}")
            with contextlib.suppress(OSError), urllib.request.urlopen(self.endpoint, timeout=2):
                break
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"moto server not ready after 30 s, see {log_path}")
            time.sleep(0.1)

    def client(self) -> Any:
        """A boto3 S3 client talking to moto directly (never through the link)."""
        if self._client is None:
            import boto3

            self._client = boto3.client(
                "s3", endpoint_url=self.endpoint, region_name=AWS_ENV["AWS_REGION"],
                aws_access_key_id=AWS_ENV["AWS_ACCESS_KEY_ID"],
                aws_secret_access_key=AWS_ENV["AWS_SECRET_ACCESS_KEY"])
        return self._client

    def objects(self, bucket: str) -> Iterator[tuple[str, int]]:
        """(key, size) of every object in ``bucket``."""
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket)
        for page in pages:
            for obj in page.get("Contents", ()):
                yield obj["Key"], int(obj["Size"])

    def delete_bucket(self, bucket: str) -> None:
        """Empty and delete ``bucket`` (moto frees the memory); quiet if it is not there."""
        import botocore.exceptions

        c = self.client()
        try:
            keys = [k for k, _ in self.objects(bucket)]
        except botocore.exceptions.ClientError:
            return
        for i in range(0, len(keys), 1000):
            c.delete_objects(Bucket=bucket, Delete={
                "Objects": [{"Key": k} for k in keys[i:i + 1000]], "Quiet": True})
        c.delete_bucket(Bucket=bucket)

    def cpu_s(self) -> float:
        """User+sys CPU seconds the server has used so far."""
        with contextlib.suppress(psutil.Error):
            t = self.proc.cpu_times()
            return t.user + t.system
        return 0.0

    def rss(self) -> int:
        with contextlib.suppress(psutil.Error):
            return int(self.proc.memory_info().rss)
        return 0

    def peak_rss(self) -> int:
        """The server's kernel-tracked peak RSS so far."""
        with contextlib.suppress(OSError), open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
        return self.rss()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except psutil.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()


class Store:
    """The store mode of one bench run: hands each tool its ``Location``."""

    def __init__(self, kind: str, log_dir: Path, link: Link | None = None) -> None:
        if link is not None and kind != "s3":
            raise ValueError("--link needs --store s3 (the link sits in front of the S3 server)")
        self.kind = kind
        self.link = link
        self.moto: MotoServer | None = None
        self.proxy: Any = None
        if kind == "s3":
            self.moto = MotoServer(log_dir / "moto.log")
            endpoint = self.moto.endpoint
            if link is not None:
                sys.path.insert(0, str(Path(__file__).resolve().parent))
                from linkproxy import LinkProxy  # owned by the link part of issue 15

                self.proxy = LinkProxy(HOST, self.moto.port, rate_bits_per_s=link.rate_bits_per_s,
                                       latency_s=link.one_way_s)
                endpoint = f"http://{HOST}:{self.proxy.start()}"
            self.endpoint = endpoint

    def location(self, tool: str, tool_dir: Path) -> Location:
        """``tool``'s repository: ``tool_dir/repo``, or the bucket ``bench-<tool>``."""
        if self.moto is None:
            return FolderLocation(tool_dir / "repo")
        return BucketLocation(self.moto, f"bench-{tool}", self.endpoint)

    def unsupported(self, tool: str) -> str | None:
        """Why ``tool`` cannot use this store, or None."""
        if self.kind == "s3" and tool == "borg":
            return "borg has no S3 backend (skipped in --store s3)"
        return None

    def server_procs(self) -> list[psutil.Process]:
        """Processes that serve the store (their CPU is not the tools')."""
        return [self.moto.proc] if self.moto else []

    def proxy_stats(self) -> dict[str, int]:
        return dict(self.proxy.stats()) if self.proxy is not None else {}

    def describe(self) -> dict[str, Any]:
        d: dict[str, Any] = {"kind": self.kind}
        if self.moto is not None:
            d["server"] = "moto (python -m moto.server, separate process, objects in memory)"
            d["server_peak_rss_bytes"] = self.moto.peak_rss()
        if self.link is not None:
            d["link"] = {"rate_bits_per_s": self.link.rate_bits_per_s, "rtt_s": self.link.rtt_s,
                         "one_way_delay_s": self.link.one_way_s,
                         "describe": self.link.describe(), "proxy": self.proxy_stats()}
        return d

    def close(self) -> None:
        if self.proxy is not None:
            self.proxy.close()
        if self.moto is not None:
            self.moto.stop()


# ----------------------------------------------------------------------------- page cache

DROP_CACHES = Path("/proc/sys/vm/drop_caches")


def drop_page_cache(files: Iterable[Path], whole_machine: bool = False) -> str:
    """Empty the page cache for the store, the same way before every tool's restore.

    By default ``fadvise``: ``POSIX_FADV_DONTNEED`` over every file of the store (after
    fsync, so the pages are clean): the store is cold as on a new machine, while the tool's
    program stays as warm as right after installing it. ``whole_machine`` writes ``3`` to
    ``drop_caches`` instead (root only): programs and libraries go cold too, as after a
    reboot. ``none`` where neither works. Returns the method used.
    """
    os.sync()
    if whole_machine:
        with contextlib.suppress(OSError):
            DROP_CACHES.write_text("3\n")
            return "drop_caches"
    if not hasattr(os, "posix_fadvise"):
        return "none"
    done = 0
    for p in files:
        with contextlib.suppress(OSError):
            fd = os.open(p, os.O_RDONLY)
            try:
                os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                done += 1
            finally:
                os.close(fd)
    return "fadvise" if done else "none"
