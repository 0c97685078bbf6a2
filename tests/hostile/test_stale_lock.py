"""Issue items 7 and 9 (locks): a stale lock never publishes a backup whose data is gone.

A backup is stopped (SIGSTOP, as a suspended laptop) mid-upload past the lock
expiry while another device deletes backups and reclaims their space; resumed,
it must publish a fully restorable backup or fail clearly. Locks written by
devices whose clocks are far behind or ahead are judged by the store's clock:
a live one is respected, an abandoned one expires. Oversized, undecryptable and
malformed lock objects never block backup, restore or reclaim.
The expiry is shortened to a few seconds through CLOUDKEEP_LOCK_STALE_AFTER.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import cast

import pytest

from cloudkeep.repository.repository import Repository
from cloudkeep.settings import Settings
from cloudkeep.workspace import Workspace
from tests.faults.fault_helpers import exact_state, make_live_db, mutate_db
from tests.hostile.conftest import (
    PASSPHRASE,
    CliResult,
    HostileStore,
    S3Raw,
    assert_clean_failure,
)

STALE_AFTER = 3.0
SHORT = {"CLOUDKEEP_LOCK_STALE_AFTER": str(STALE_AFTER)}


def device_env(tmp_path: Path, name: str, **extra: str) -> dict[str, str]:
    """A device of its own: name, key file, cache; the short lock expiry."""
    home = tmp_path / f"device-{name}"
    return {
        **SHORT,
        "CLOUDKEEP_DEVICE_NAME": name,
        "CLOUDKEEP_CONFIG_DIR": str(home / "config"),
        "CLOUDKEEP_CACHE_DIR": str(home / "cache"),
        **extra,
    }


def repository(store_url: str, tmp_path: Path) -> Repository:
    """The repository as a key holder's program sees it (for crafting lock documents)."""
    settings = Settings.resolve(data=tmp_path / "unused", store=store_url, environ={})
    home = tmp_path / "crafter"
    return Workspace(
        Settings(
            **{
                **settings.__dict__,
                "passphrase": PASSPHRASE,
                "config_dir": home / "config",
                "cache_dir": home / "cache",
            }
        )
    ).repository()


def lock_document(*, exclusive: bool, clock_offset: float, host: str) -> bytes:
    return json.dumps(
        {
            "exclusive": exclusive,
            "purpose": "space reclaim" if exclusive else "backup",
            "hostname": host,
            "pid": 4242,
            "time": time.time() + clock_offset,
        }
    ).encode()


class SkewedDevice:
    """Another device holding a lock, its clock off by ``clock_offset`` seconds."""

    def __init__(self, repo: Repository, *, exclusive: bool, clock_offset: float) -> None:
        self.repo = repo
        self.name = uuid.uuid4().hex
        self.exclusive = exclusive
        self.offset = clock_offset
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def write(self) -> None:
        document = lock_document(
            exclusive=self.exclusive, clock_offset=self.offset, host="skewed-device"
        )
        self.repo.save_file("locks", self.name, document)

    def keep_alive(self) -> None:
        """Refresh the lock well within the expiry, as a live client does."""
        self.write()

        def loop() -> None:
            while not self._stop.wait(STALE_AFTER / 6):
                self.write()

        self._thread = threading.Thread(target=loop, daemon=True)
        self._thread.start()

    def crash(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join()


def small_data(tmp_path: Path) -> Path:
    data = tmp_path / "data"
    data.mkdir()
    (data / "notes.txt").write_text("remember the milk\n")
    (data / "blob.bin").write_bytes(random.Random(7).randbytes(300_000))
    return data


def backup_id(result_stdout: str) -> str:
    return str(json.loads(result_stdout)["id"])


def popen_cli(tmp_path: Path, env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "cloudkeep", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        env={**os.environ, **env},
        cwd=tmp_path,
        start_new_session=True,
    )


def fast_lister(store: HostileStore) -> Callable[[str], list[str]]:
    """Object names under a prefix, listed quickly enough to catch a backup mid-upload."""
    raw = store.raw
    if store.kind == "file":
        return raw.names
    s3 = cast("S3Raw", raw)
    client = s3._client()

    def names(prefix: str) -> list[str]:
        reply = client.list_objects_v2(Bucket=s3.bucket, Prefix=f"{s3.prefix}/{prefix}")
        return [item["Key"][len(s3.prefix) + 1 :] for item in reply.get("Contents", [])]

    return names


@pytest.fixture
def stopped_processes() -> Iterator[list[subprocess.Popen[str]]]:
    """Processes a test may leave stopped: continued and killed at the end, whatever happens."""
    processes: list[subprocess.Popen[str]] = []
    yield processes
    for process in processes:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGCONT)
            process.kill()
            process.communicate(timeout=30)


def test_suspended_backup_never_publishes_lost_data(
    hostile_store: HostileStore,
    cli,  # type: ignore[no-untyped-def]
    tmp_path: Path,
    stopped_processes: list[subprocess.Popen[str]],
) -> None:
    """SIGSTOP a backup mid-upload past the expiry; another device deletes the backup it
    deduplicates against and reclaims (no safety margin); SIGCONT: the backup is saved
    whole (check --read-data clean, restore equal) or fails clearly, never half."""
    data = tmp_path / "data"
    make_live_db(data / "snippets.db", 40, seed=11)
    store = hostile_store.url
    desk = device_env(tmp_path, "desk")
    first = cli("--data", str(data), "--store", store, "backup", "--json", env=desk)
    assert first.code == 0, first.stderr
    old_id = backup_id(first.stdout)
    ops = device_env(tmp_path, "ops", CLOUDKEEP_PRUNE_MARGIN="0")

    laptop = device_env(tmp_path, "laptop")
    names = fast_lister(hostile_store)
    for attempt in range(3):  # until the stop lands while the backup uploads
        mutate_db(data / "snippets.db", random.Random(attempt), rows=4000)
        expected = exact_state(data)
        packs_before, manifests_before = set(names("data/")), set(names("snapshots/"))
        backup = popen_cli(
            tmp_path, laptop, "--data", str(data), "--store", store, "backup", "--json"
        )
        stopped_processes.append(backup)
        while backup.poll() is None and not set(names("data/")) - packs_before:
            time.sleep(0.002)
        if backup.poll() is None:
            os.kill(backup.pid, signal.SIGSTOP)
            if set(names("snapshots/")) == manifests_before:
                break
            os.kill(backup.pid, signal.SIGCONT)  # stopped too late: it had published
        backup.communicate(timeout=60)
    else:
        pytest.fail("the backup always finished before it could be stopped mid-upload")

    time.sleep(STALE_AFTER + 2)  # past the expiry by the store's clock (S3: whole seconds)
    # Every published backup goes, the first one and any an earlier attempt published
    # (stopped too late), so the prune frees the packs the stopped backup relies on.
    published = cli("--store", store, "list", "--json", env=ops)
    assert published.code == 0, published.stderr
    victims = [b["id"] for b in json.loads(published.stdout)["iterable"]]
    assert old_id in victims
    for victim in victims:
        deleted = cli("--data", str(data), "--store", store, "delete", victim, env=ops)
        assert deleted.code == 0, deleted.stderr
        assert "other clients" not in deleted.stderr, deleted.stderr  # the lapsed lock is stale
    gone = packs_before - set(hostile_store.raw.names("data/"))
    assert gone, f"the reclaim must delete packs the stopped backup relies on: {deleted}"

    os.kill(backup.pid, signal.SIGCONT)
    out, err = backup.communicate(timeout=300)
    print(f"resumed backup: exit {backup.returncode}, {len(gone)} packs deleted under it\n{err}")
    listed = cli("--store", store, "list", "--json", env=ops)
    assert listed.code == 0, listed.stderr
    laptop_backups = [
        b["id"] for b in json.loads(listed.stdout)["iterable"] if b["device_name"] == "laptop"
    ]
    if backup.returncode != 0:
        assert_clean_failure(CliResult(backup.returncode, out, err))
        assert not laptop_backups, "a failed backup must publish nothing"
        return
    new_id = backup_id(out)
    assert laptop_backups == [new_id]
    checked = cli("--store", store, "check", "--read-data", env=ops)
    assert checked.code == 0, checked.stdout + checked.stderr
    target = tmp_path / "restored"
    restored = cli("--store", store, "restore", new_id, "--target", str(target), env=ops)
    assert restored.code == 0, restored.stderr
    assert exact_state(target) == expected


def test_live_lock_of_a_device_far_behind_is_respected(
    hostile_store: HostileStore,
    cli,  # type: ignore[no-untyped-def]
    tmp_path: Path,
    stopped_processes: list[subprocess.Popen[str]],
) -> None:
    """A reclaim on a device whose clock is a day behind holds a live exclusive lock:
    a backup waits for it (it used to judge the lock a day old and ignore it), and
    proceeds once that device stops refreshing."""
    data = small_data(tmp_path)
    store = hostile_store.url
    env = device_env(tmp_path, "desk")
    assert cli("--data", str(data), "--store", store, "backup", env=env).code == 0
    behind = SkewedDevice(repository(store, tmp_path), exclusive=True, clock_offset=-86400)
    behind.keep_alive()
    try:
        backup = popen_cli(tmp_path, env, "--data", str(data), "--store", store, "backup", "--json")
        stopped_processes.append(backup)
        with pytest.raises(subprocess.TimeoutExpired):
            backup.wait(timeout=3 * STALE_AFTER)
        assert len(hostile_store.raw.names("snapshots/")) == 1, "it ignored a live lock"
    finally:
        behind.crash()
    _out, err = backup.communicate(timeout=120)
    assert backup.returncode == 0, err
    assert len(hostile_store.raw.names("snapshots/")) == 2
    assert f"locks/{behind.name}" not in hostile_store.raw.names("locks/")


def test_live_shared_lock_far_behind_postpones_reclaim(
    hostile_store: HostileStore,
    cli,  # type: ignore[no-untyped-def]
    tmp_path: Path,
) -> None:
    """A backup on a device a day behind holds a live shared lock: a delete leaves the
    space reclaim for later instead of deleting packs under it."""
    data = small_data(tmp_path)
    store = hostile_store.url
    env = device_env(tmp_path, "desk", CLOUDKEEP_PRUNE_MARGIN="0")
    first = cli("--data", str(data), "--store", store, "backup", "--json", env=env)
    assert first.code == 0, first.stderr
    packs = hostile_store.raw.names("data/")
    behind = SkewedDevice(repository(store, tmp_path), exclusive=False, clock_offset=-86400)
    behind.keep_alive()
    try:
        deleted = cli(
            "--data", str(data), "--store", store, "delete", backup_id(first.stdout), env=env
        )
    finally:
        behind.crash()
    assert deleted.code == 0, deleted.stderr
    assert "other clients are using the repository" in deleted.stderr, deleted.stderr
    assert hostile_store.raw.names("data/") == packs


def test_abandoned_lock_of_a_device_far_ahead_expires(
    hostile_store: HostileStore,
    cli,  # type: ignore[no-untyped-def]
    tmp_path: Path,
) -> None:
    """A device whose clock is a day ahead wrote an exclusive lock and died: by the
    store's clock it is stale after the expiry, so it blocks no backup for long (it used
    to look a day young, blocking every backup until the lock wait ran out)."""
    data = small_data(tmp_path)
    store = hostile_store.url
    env = device_env(tmp_path, "desk")
    assert cli("--data", str(data), "--store", store, "backup", env=env).code == 0
    ahead = SkewedDevice(repository(store, tmp_path), exclusive=True, clock_offset=86400)
    ahead.write()
    (data / "notes.txt").write_text("changed\n")
    second = cli("--data", str(data), "--store", store, "backup", "--json", env=env, timeout=90)
    assert second.code == 0, second.stderr
    assert f"locks/{ahead.name}" not in hostile_store.raw.names("locks/")
    target = tmp_path / "restored"
    restored = cli(
        "--store", store, "restore", backup_id(second.stdout), "--target", str(target), env=env
    )
    assert restored.code == 0, restored.stderr
    assert (target / "notes.txt").read_text() == "changed\n"


def test_bad_lock_objects_never_block_backup_restore_or_reclaim(
    hostile_store: HostileStore,
    cli,  # type: ignore[no-untyped-def]
    tmp_path: Path,
) -> None:
    """An oversized lock object and an undecryptable one (keyless writer) and a sealed
    non-lock (key holder) are reported and skipped, and left in place."""
    data = small_data(tmp_path)
    store = hostile_store.url
    env = device_env(tmp_path, "desk", CLOUDKEEP_PRUNE_MARGIN="0")
    first = cli("--data", str(data), "--store", store, "backup", "--json", env=env)
    assert first.code == 0, first.stderr
    oversized, garbage, not_a_lock = (uuid.uuid4().hex for _ in range(3))
    hostile_store.raw.put(f"locks/{oversized}", b"\xff" * (8 * 1024 * 1024))
    hostile_store.raw.put(f"locks/{garbage}", os.urandom(300))
    repository(store, tmp_path).save_file("locks", not_a_lock, b'["not", "a", "lock"]')
    planted = sorted(f"locks/{name}" for name in (oversized, garbage, not_a_lock))

    (data / "notes.txt").write_text("second\n")
    second = cli("--data", str(data), "--store", store, "backup", "--json", env=env)
    assert second.code == 0, second.stderr
    assert oversized in second.stderr and garbage in second.stderr, second.stderr
    target = tmp_path / "restored"
    restored = cli(
        "--store", store, "restore", backup_id(second.stdout), "--target", str(target), env=env
    )
    assert restored.code == 0, restored.stderr
    assert exact_state(target) == exact_state(data)
    deleted = cli("--store", store, "delete", backup_id(first.stdout), env=env)
    assert deleted.code == 0, deleted.stderr
    assert "other clients" not in deleted.stderr, deleted.stderr
    assert sorted(hostile_store.raw.names("locks/")) == planted
