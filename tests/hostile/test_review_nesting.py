"""Review: JSON nested past the interpreter's recursion limit, planted in the store.

``json.loads`` raises ``RecursionError`` (not ``ValueError``) for ``[[[[...``
about a thousand deep, which fits in a 4 KiB key file. Before the fix a keyless
writer's planted key file made every device that had not joined yet crash with
exit 70, and a planted config did the same on every device; a key holder's lock
or manifest of that shape crashed every backup or listing.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from cloudkeep.repository.repository import Repository
from cloudkeep.storage.url import open_store
from tests.hostile.conftest import PASSPHRASE, HostileStore, assert_clean_failure, tree_state

DEEP = b"[" * 4000  # nested past the recursion limit, within a key file's 4 KiB


def make_data(root: Path) -> Path:
    root.mkdir(parents=True)
    (root / "notes.txt").write_text("what the user wrote\n")
    return root


def test_deeply_nested_key_file_and_config_fail_clearly(
    hostile_store: HostileStore, guarded_home: Path, tmp_path: Path, cli
) -> None:
    data = make_data(tmp_path / "data")
    env = {"CLOUDKEEP_STORE": hostile_store.url, "CLOUDKEEP_DATA": str(data)}
    saved = cli("backup", "--json", env=env)
    assert saved.code == 0, saved.stderr
    backup_id = json.loads(saved.stdout)["id"]
    before = tree_state(guarded_home, skip=(guarded_home / "cache", guarded_home / "config"))

    hostile_store.raw.put("keys/" + "0" * 32, DEEP)  # tried before the real key file
    fresh = {
        **env,
        "CLOUDKEEP_CONFIG_DIR": str(tmp_path / "fresh-config"),
        "CLOUDKEEP_CACHE_DIR": str(tmp_path / "fresh-cache"),
    }
    for device in (env, fresh):
        listed = cli("list", "--json", env=device)
        assert listed.code == 0, listed.stderr
        assert [b["id"] for b in json.loads(listed.stdout)["iterable"]] == [backup_id]

    hostile_store.raw.put("config", DEEP)
    for device in (env, fresh):
        refused = cli("list", env=device)
        assert_clean_failure(refused)
        assert "config" in refused.stderr and "internal error" not in refused.stderr
    assert tree_state(guarded_home, skip=(guarded_home / "cache", guarded_home / "config")) == (
        before
    )


def test_deeply_nested_lock_and_manifest_block_nothing(
    hostile_store: HostileStore, guarded_home: Path, tmp_path: Path, cli
) -> None:
    data = make_data(tmp_path / "data")
    env = {"CLOUDKEEP_STORE": hostile_store.url, "CLOUDKEEP_DATA": str(data)}
    first = cli("backup", "--json", env=env)
    assert first.code == 0, first.stderr
    repo = Repository.open(open_store(hostile_store.url), PASSPHRASE)
    deep = b"[" * 100_000
    repo.save_file("locks", os.urandom(16).hex(), deep)  # a key holder's lock
    planted = "0.1.0_1700000000000000"
    repo.save_file("snapshots", planted, deep)

    second = cli("backup", "--json", env=env)
    assert second.code == 0, second.stderr
    ids = [json.loads(first.stdout)["id"], json.loads(second.stdout)["id"]]
    listed = cli("list", "--json", env=env)
    assert listed.code == 0, listed.stderr
    assert sorted(b["id"] for b in json.loads(listed.stdout)["iterable"]) == sorted(ids)
    restored = cli("restore", ids[1], "--target", str(tmp_path / "copy"), env=env)
    assert restored.code == 0, restored.stderr
    assert (tmp_path / "copy" / "notes.txt").read_text() == "what the user wrote\n"
    checked = cli("check", env=env)
    assert_clean_failure(checked, codes=(2,))
    assert f"damaged backup: {planted}" in checked.stdout
    assert "internal error" not in checked.stderr
