"""Issue 11, item 6: devices creating the same empty store at once agree on one key.

Each trial starts 2-4 real ``cloudkeep backup`` processes at once on an empty
store, each a device of its own (own config and cache folders, own data, the
same passphrase). Before the fix two master keys could survive and a backup
reported as saved was unreadable. Afterwards a fresh device must list and
restore, byte for byte, every backup whose process reported success, and every
key file in the store must hold the one master key the config names.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from cloudkeep.errors import RepositoryChanged
from cloudkeep.repository.keys import unwrap_key
from cloudkeep.repository.packs import read_header
from cloudkeep.repository.repository import Repository, file_aad
from cloudkeep.settings import Settings
from cloudkeep.storage.url import open_store
from cloudkeep.workspace import Workspace
from tests.hostile.conftest import PASSPHRASE, FolderRaw, HostileStore

TRIALS_PER_STORE = 50  # on each store: 100 trials, ~300 concurrent first backups


def _start_device(store: str, root: Path) -> subprocess.Popen[str]:
    data = root / "data"
    data.mkdir(parents=True)
    (data / "notes.bin").write_bytes(os.urandom(3000) + root.name.encode())
    env = {
        **os.environ,
        "CLOUDKEEP_STORE": store,
        "CLOUDKEEP_PASSPHRASE": PASSPHRASE,
        "CLOUDKEEP_CONFIG_DIR": str(root / "config"),
        "CLOUDKEEP_CACHE_DIR": str(root / "cache"),
    }
    argv = ["--data", str(data), "--device-name", root.name, "backup", "--json"]
    return subprocess.Popen(
        [sys.executable, "-m", "cloudkeep", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        stdin=subprocess.DEVNULL,
    )


def _fresh_device(store: str, root: Path) -> Workspace:
    settings = Settings.resolve(data=root / "data", store=store, device_name="fresh")
    return Workspace(
        Settings(
            **{
                **settings.__dict__,
                "passphrase": PASSPHRASE,
                "config_dir": root / "config",
                "cache_dir": root / "cache",
            }
        )
    )


def _run_trial(store: str, root: Path, devices: int) -> None:
    roots = [root / f"device{n}" for n in range(devices)]
    processes = [_start_device(store, r) for r in roots]
    outcomes = [p.communicate(timeout=120) for p in processes]
    saved: dict[str, Path] = {}
    for device_root, process, (out, err) in zip(roots, processes, outcomes, strict=True):
        # Every device must succeed: the losers adopt the winner's key.
        assert process.returncode == 0, (device_root.name, process.returncode, err)
        saved[json.loads(out)["id"]] = device_root / "data" / "notes.bin"

    fresh = _fresh_device(store, root / "fresh")
    listed = {info.id for info in fresh.list()}
    assert set(saved) <= listed, (sorted(saved), sorted(listed))
    for backup_id, original in saved.items():
        target = root / "restored" / backup_id
        fresh.restore(backup_id, target=target)
        assert (target / "notes.bin").read_bytes() == original.read_bytes()

    storage = open_store(store)
    config = json.loads(storage.get("config"))
    fingerprints = set()
    for info in storage.list("keys/"):
        key = unwrap_key(storage.get(info.name), PASSPHRASE)
        assert key is not None, info.name
        fingerprints.add(key.fingerprint())
    assert fingerprints == {config["key"]}


@pytest.mark.parametrize("kind", ["file", "s3"])
def test_concurrent_first_backups_agree_on_one_key(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    for trial in range(TRIALS_PER_STORE):
        if kind == "file":
            store = (tmp_path / f"store{trial}").as_uri()
        else:
            store = request.getfixturevalue("s3_server").url_for(f"race-{uuid.uuid4().hex[:12]}")
        _run_trial(store, tmp_path / f"trial{trial}", devices=2 + trial % 3)


def _second_creation(hostile_store: HostileStore, scratch: Path) -> Repository:
    """Another device's repository overwrites the config, as a racing WebDAV put can."""
    winner = Repository.init(open_store(scratch.as_uri()), PASSPHRASE)
    elsewhere = FolderRaw(scratch)
    for name in [*elsewhere.names("keys/"), "config"]:
        hostile_store.raw.put(name, elsewhere.get(name))
    return winner


def test_backup_under_a_key_that_lost_the_creation_is_never_published(
    hostile_store: HostileStore, tmp_path: Path
) -> None:
    """A store without atomic create lets a second device overwrite the config after
    the first one read it back: the first device's backup must not be published
    under its losing key; it joins the winner and backs up again."""
    first = _fresh_device(hostile_store.url, tmp_path / "first")
    (tmp_path / "first" / "data").mkdir(parents=True)
    (tmp_path / "first" / "data" / "notes.bin").write_bytes(b"first device's notes")
    first.init()
    losing_key = json.loads(hostile_store.raw.get("config"))["key"]

    winner = _second_creation(hostile_store, tmp_path / "elsewhere")

    info = first.backup()
    fresh = _fresh_device(hostile_store.url, tmp_path / "fresh")
    assert [b.id for b in fresh.list()] == [info.id]
    fresh.restore(info.id, target=tmp_path / "restored")
    assert (tmp_path / "restored" / "notes.bin").read_bytes() == b"first device's notes"

    # Nothing but its (unused) key file is left of the losing key.
    storage = open_store(hostile_store.url)
    for name in hostile_store.raw.names():
        kind, _, rest = name.partition("/")
        if kind in ("snapshots", "index"):
            winner.sealer.open(hostile_store.raw.get(name), file_aad(kind, rest))
        elif kind == "data":
            read_header(hostile_store.raw.get(name), winner.sealer)
    fingerprints = {
        key.fingerprint()
        for info_ in storage.list("keys/")
        if (key := unwrap_key(storage.get(info_.name), PASSPHRASE)) is not None
    }
    assert fingerprints == {winner.key.fingerprint(), losing_key}


def test_device_that_joined_the_losing_key_fails_clearly(
    hostile_store: HostileStore, tmp_path: Path
) -> None:
    creator = _fresh_device(hostile_store.url, tmp_path / "creator")
    creator.init()
    joined = _fresh_device(hostile_store.url, tmp_path / "joined")
    (tmp_path / "joined" / "data").mkdir(parents=True)
    (tmp_path / "joined" / "data" / "notes.bin").write_bytes(b"notes")
    joined.list()
    _second_creation(hostile_store, tmp_path / "elsewhere")
    before = hostile_store.raw.names()

    with pytest.raises(RepositoryChanged, match="nothing was published: run the backup again"):
        joined.backup()
    after = hostile_store.raw.names()
    # Nothing published, and nothing deleted: a device that did not create the
    # repository leaves what it wrote to reclaim (another device may use it already).
    assert [n for n in after if n.startswith("snapshots/")] == [
        n for n in before if n.startswith("snapshots/")
    ]
    assert set(before) <= set(after)


def test_the_publish_check_reads_the_config_whatever_its_length(
    hostile_store: HostileStore, tmp_path: Path
) -> None:
    """The check before publishing reads the config's first bytes and compares them with
    this handle's. A config replaced by one shorter or longer than ours (a range past
    the end on S3, more bytes than asked for) is read whole and refused if it names
    another key; ours written otherwise (same id and key) is still ours."""
    repo = Repository.init(open_store(hostile_store.url), PASSPHRASE)
    repo.ensure_key_current()
    winner = _second_creation(hostile_store, tmp_path / "elsewhere").config
    ours = repo.config
    for config, changed in [
        (json.dumps(winner, separators=(",", ":")), True),  # shorter than ours
        (json.dumps(winner, indent=4) + "\n" * 100, True),  # longer
        (json.dumps(ours, indent=1) + " " * 10, False),  # ours, then whitespace
        (json.dumps(ours, indent=8), False),  # ours, longer
        (json.dumps(ours, separators=(",", ":")), False),  # ours, shorter
    ]:
        hostile_store.raw.put("config", config.encode())
        if changed:
            with pytest.raises(RepositoryChanged, match="nothing was published"):
                repo.ensure_key_current()
        else:
            repo.ensure_key_current()
