"""Fixtures of the adversarial suite: a store an attacker can write raw, and a home to guard.

Every test here plays an attacker (a keyless bucket writer, or a second device
holding the key) against a real store: a folder store and the moto S3 server.
``hostile_store`` gives the store URL a victim uses and a ``RawStore`` through
which the attacker writes, reads, lists and deletes objects by name, bypassing
cloudkeep. ``guarded_home`` is a fake home with files an attack must never
touch; ``tree_state`` snapshots a folder so a test can assert nothing changed.
"""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import pytest

PASSPHRASE = "hostile-suite passphrase 51c0"


@pytest.fixture(autouse=True)
def isolated_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No test reads or writes the real user's key file, cache or settings."""
    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("CLOUDKEEP_CONFIG_DIR", str(home / "config"))
    monkeypatch.setenv("CLOUDKEEP_CACHE_DIR", str(home / "cache"))
    for name in (
        "CLOUDKEEP_DATA",
        "CLOUDKEEP_STORE",
        "CLOUDKEEP_PASSPHRASE_FILE",
        "CLOUDKEEP_DEVICE_NAME",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CLOUDKEEP_PASSPHRASE", PASSPHRASE)
    monkeypatch.setenv("CLOUDKEEP_STORE_RETRY_DEADLINE", "5")
    return home


class RawStore(Protocol):
    """The attacker's view of the store: objects by name, no cloudkeep in between."""

    def put(self, name: str, data: bytes) -> None: ...
    def get(self, name: str) -> bytes: ...
    def names(self, prefix: str = "") -> list[str]: ...
    def delete(self, name: str) -> None: ...


@dataclass
class FolderRaw:
    root: Path

    def put(self, name: str, data: bytes) -> None:
        # Names may hold '..': the attacker writes what the bucket would list, and a
        # folder store cannot hold such a name, so it is kept at the joined path.
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)

    def get(self, name: str) -> bytes:
        return (self.root / name).read_bytes()

    def names(self, prefix: str = "") -> list[str]:
        base = self.root / prefix if prefix else self.root
        if not base.exists():
            return []
        return sorted(p.relative_to(self.root).as_posix() for p in base.rglob("*") if p.is_file())

    def delete(self, name: str) -> None:
        (self.root / name).unlink(missing_ok=True)


@dataclass
class S3Raw:
    endpoint: str
    bucket: str
    prefix: str

    def _client(self):  # type: ignore[no-untyped-def]
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id=os.environ.get("AWS_ACCESS_KEY_ID", "x"),
            aws_secret_access_key=os.environ.get("AWS_SECRET_ACCESS_KEY", "x"),
        )

    def put(self, name: str, data: bytes) -> None:
        """Any key at all, '../' segments included: S3 keys are opaque strings."""
        self._client().put_object(Bucket=self.bucket, Key=f"{self.prefix}/{name}", Body=data)

    def get(self, name: str) -> bytes:
        reply = self._client().get_object(Bucket=self.bucket, Key=f"{self.prefix}/{name}")
        return bytes(reply["Body"].read())

    def names(self, prefix: str = "") -> list[str]:
        client = self._client()
        found: list[str] = []
        token: dict[str, str] = {}
        while True:
            reply = client.list_objects_v2(
                Bucket=self.bucket, Prefix=f"{self.prefix}/{prefix}", **token
            )
            found += [item["Key"][len(self.prefix) + 1 :] for item in reply.get("Contents", [])]
            if not reply.get("IsTruncated"):
                return sorted(found)
            token = {"ContinuationToken": reply["NextContinuationToken"]}

    def delete(self, name: str) -> None:
        self._client().delete_object(Bucket=self.bucket, Key=f"{self.prefix}/{name}")


@dataclass
class HostileStore:
    kind: str  # "file" | "s3"
    url: str
    raw: RawStore


@pytest.fixture(params=["file", "s3"])
def hostile_store(request: pytest.FixtureRequest, tmp_path: Path) -> HostileStore:
    """A fresh, empty store (folder, then moto S3) and the attacker's raw access to it."""
    if request.param == "file":
        root = tmp_path / "store"
        root.mkdir()
        return HostileStore("file", root.as_uri(), FolderRaw(root))
    server = request.getfixturevalue("s3_server")
    prefix = f"h-{uuid.uuid4().hex[:12]}"
    return HostileStore("s3", server.url_for(prefix), S3Raw(server.endpoint, server.bucket, prefix))


def fresh_device_env(tmp_path: Path, name: str) -> dict[str, str]:
    """Environment of a second device for ``cli``: nothing cached, nothing remembered."""
    return {
        "CLOUDKEEP_CONFIG_DIR": str(tmp_path / name / "config"),
        "CLOUDKEEP_CACHE_DIR": str(tmp_path / name / "cache"),
    }


@pytest.fixture
def guarded_home(isolated_dirs: Path) -> Path:
    """A home with the files attacks aim at: a private key, a shell profile, a secret folder."""
    ssh = isolated_dirs / ".ssh"
    ssh.mkdir(parents=True)
    (ssh / "id_ed25519").write_text("-----BEGIN OPENSSH PRIVATE KEY-----\nsecret\n")
    os.chmod(ssh / "id_ed25519", 0o600)
    (isolated_dirs / ".profile").write_text("export PATH=$PATH\n")
    (isolated_dirs / "documents").mkdir()
    (isolated_dirs / "documents" / "thesis.txt").write_text("four years of work\n")
    return isolated_dirs


def tree_state(root: Path, *, skip: tuple[Path, ...] = ()) -> dict[str, tuple[int, str]]:
    """Every entry under ``root`` (not following symlinks): its mode and content hash.

    Entries under ``skip`` (cloudkeep's own cache, say) are left out.
    """
    state: dict[str, tuple[int, str]] = {}
    if not root.exists():
        return state
    for folder, dirnames, filenames in os.walk(root):
        here = Path(folder)
        if any(here == s or s in here.parents for s in skip):
            dirnames[:] = []
            continue
        for name in dirnames + filenames:
            path = here / name
            if any(path == s for s in skip):
                continue
            info = path.lstat()
            if stat.S_ISREG(info.st_mode):
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
            elif stat.S_ISLNK(info.st_mode):
                digest = "->" + os.readlink(path)
            else:
                digest = ""
            state[path.relative_to(root).as_posix()] = (info.st_mode, digest)
    return state


@dataclass
class CliResult:
    code: int
    stdout: str
    stderr: str


def assert_clean_failure(result: CliResult, codes: tuple[int, ...] = (1, 2)) -> None:
    """A refused input: exit code 1 or 2 and one line of error, never a traceback or 70."""
    assert result.code in codes, (result.code, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    assert result.stderr.strip(), "a failure must say why"


@pytest.fixture
def cli(tmp_path: Path) -> Iterator:
    """Run the real console entry point in a subprocess (environment of the test)."""

    def run(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> CliResult:
        done = subprocess.run(
            [sys.executable, "-m", "cloudkeep", *args],
            capture_output=True,
            text=True,
            env={**os.environ, **(env or {})},
            timeout=timeout,
            cwd=tmp_path,
            stdin=subprocess.DEVNULL,
        )
        return CliResult(done.returncode, done.stdout, done.stderr)

    yield run
