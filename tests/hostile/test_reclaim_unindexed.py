"""Issue item 8: reclaim never deletes data it cannot account for.

After an index file is lost, deleting a backup must leave the newest backup
restorable (reclaim reads the headers of packs no index names and counts their
blobs); reclaim refuses when a backup needs data found in no pack; packs no index
names that are younger than the safety margin (a backup in flight) survive, and
objects in ``data/`` that are not packs of the repository are left alone.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

from cloudkeep.repository.index import IndexFile
from cloudkeep.repository.packs import BlobType
from tests.faults.fault_helpers import exact_state, make_live_db, mutate_db
from tests.hostile.conftest import HostileStore, assert_clean_failure
from tests.hostile.test_stale_lock import device_env, repository


def backup(cli, store: str, data: Path, env: dict[str, str]) -> str:  # type: ignore[no-untyped-def]
    done = cli("--data", str(data), "--store", store, "backup", "--json", env=env)
    assert done.code == 0, done.stderr
    return str(json.loads(done.stdout)["id"])


def new_names(before: list[str], after: list[str]) -> list[str]:
    return sorted(set(after) - set(before))


def test_lost_index_file_then_delete_keeps_newest_restorable(
    hostile_store: HostileStore,
    cli,  # type: ignore[no-untyped-def]
    tmp_path: Path,
) -> None:
    """A backup wrote two index files (one per 64 packs in a big backup) and the one
    naming only data packs is lost; those packs are shared with the newest backup.
    Deleting an older backup used to delete them (not indexed = not kept)."""
    data = tmp_path / "data"
    make_live_db(data / "snippets.db", 4, seed=3)
    store, raw = hostile_store.url, hostile_store.raw
    env = device_env(tmp_path, "desk", CLOUDKEEP_PRUNE_MARGIN="0")
    (data / "old.bin").write_bytes(random.Random(0).randbytes(5_000_000))
    first = backup(cli, store, data, env)
    (data / "old.bin").unlink()  # only the first backup holds it: its delete frees space
    (data / "new.bin").write_bytes(random.Random(1).randbytes(9_000_000))
    mutate_db(data / "snippets.db", random.Random(1), rows=200)
    index_before = raw.names("index/")
    second = backup(cli, store, data, env)
    second_index = new_names(index_before, raw.names("index/"))
    mutate_db(data / "snippets.db", random.Random(2), rows=20)
    newest_state = exact_state(data)
    # Another device: no parent to reuse, its chunks deduplicate against the second's packs.
    newest = backup(cli, store, data, {**env, "CLOUDKEEP_DEVICE_NAME": "laptop"})

    repo = repository(store, tmp_path)
    for name in second_index:  # as two index files, then the data-only one is lost
        packs = repo.read_index_file(name.removeprefix("index/")).packs
        kept = {p: e for p, e in packs.items() if any(x.type != BlobType.DATA for x in e)}
        assert len(kept) < len(packs), "the second backup must have data-only packs"
        repo.write_index_file(IndexFile(kept))
        raw.delete(name)

    deleted = cli("--store", store, "delete", first, env=env)
    assert deleted.code == 0, deleted.stderr
    assert "freed" in deleted.stderr, deleted.stderr  # it did prune, carefully
    checked = cli("--store", store, "check", "--read-data", env=env)
    assert checked.code == 0, checked.stdout + checked.stderr
    for backup_id, folder in ((newest, "newest"), (second, "second")):
        target = tmp_path / folder
        restored = cli("--store", store, "restore", backup_id, "--target", str(target), env=env)
        assert restored.code == 0, restored.stderr
    assert exact_state(tmp_path / "newest") == newest_state


def test_reclaim_refuses_when_a_backup_needs_missing_data(
    hostile_store: HostileStore,
    cli,  # type: ignore[no-untyped-def]
    tmp_path: Path,
) -> None:
    """A pack the newest backup needs is gone from the store: deleting an older backup
    must not go on to delete packs (the store is not what the index says), and says so."""
    data = tmp_path / "data"
    make_live_db(data / "snippets.db", 4, seed=5)
    store, raw = hostile_store.url, hostile_store.raw
    env = device_env(tmp_path, "desk", CLOUDKEEP_PRUNE_MARGIN="0")
    (data / "old.bin").write_bytes(random.Random(0).randbytes(5_000_000))
    first = backup(cli, store, data, env)
    (data / "old.bin").unlink()
    (data / "new.bin").write_bytes(random.Random(1).randbytes(9_000_000))
    packs_before = raw.names("data/")
    backup(cli, store, data, env)
    repo = repository(store, tmp_path)
    data_only = [
        pack_id
        for name in repo.list_files("index")
        for pack_id, entries in repo.read_index_file(name).packs.items()
        if f"data/{pack_id[:2]}/{pack_id}" not in packs_before
        and all(entry.type == BlobType.DATA for entry in entries)
    ]
    assert data_only, "the second backup must have stored packs of its own"
    raw.delete(f"data/{data_only[0][:2]}/{data_only[0]}")
    packs = raw.names("data/")

    deleted = cli("--store", store, "delete", first, env=env)
    assert_clean_failure(deleted)
    assert "nothing was deleted" in deleted.stderr and "run 'cloudkeep check'" in deleted.stderr
    assert raw.names("data/") == packs


def test_young_unindexed_packs_survive_reclaim(
    hostile_store: HostileStore,
    cli,  # type: ignore[no-untyped-def]
    tmp_path: Path,
) -> None:
    """Packs no index names and no backup uses, as a backup in flight leaves them, are
    kept while younger than the margin (store time), by every reclaim; past it they go.
    A planted object named like a pack is neither deleted nor a reason to fail."""
    data = tmp_path / "data"
    make_live_db(data / "snippets.db", 4, seed=9)
    store, raw = hostile_store.url, hostile_store.raw
    env = device_env(tmp_path, "desk")
    first = backup(cli, store, data, env)
    state = exact_state(data)
    mutate_db(data / "snippets.db", random.Random(4), rows=800)
    packs_before, index_before = raw.names("data/"), raw.names("index/")
    second = backup(cli, store, data, env)
    in_flight = new_names(packs_before, raw.names("data/"))
    for name in [*new_names(index_before, raw.names("index/")), f"snapshots/{second}"]:
        raw.delete(name)  # as if the second backup were still uploading
    junk = "data/ab/ab" + "0" * 62
    raw.put(junk, os.urandom(5000))

    for _ in range(2):
        done = cli("--store", store, "reclaim", env=env)
        assert done.code == 0, done.stderr
        assert set(in_flight) <= set(raw.names("data/")), "a young unindexed pack was deleted"
    done = cli("--store", store, "reclaim", env={**env, "CLOUDKEEP_PRUNE_MARGIN": "0"})
    assert done.code == 0, done.stderr
    assert not set(in_flight) & set(raw.names("data/")), "past the margin they are garbage"
    assert junk in raw.names("data/")
    raw.delete(junk)
    checked = cli("--store", store, "check", "--read-data", env=env)
    assert checked.code == 0, checked.stdout + checked.stderr
    target = tmp_path / "restored"
    restored = cli("--store", store, "restore", first, "--target", str(target), env=env)
    assert restored.code == 0, restored.stderr
    assert exact_state(target) == state


def test_a_planted_copy_of_a_real_packs_header_is_never_adopted(
    hostile_store: HostileStore,
    cli,  # type: ignore[no-untyped-def]
    tmp_path: Path,
) -> None:
    """A keyless writer copies a real pack's header and trailer over garbage under a new
    name. Counted as holding the real pack's blobs, it would let reclaim repack or delete
    the real pack; it must fail adoption (its content does not hash to its name)."""
    data = tmp_path / "data"
    make_live_db(data / "snippets.db", 2, seed=5)
    store, raw = hostile_store.url, hostile_store.raw
    env = device_env(tmp_path, "desk", CLOUDKEEP_PRUNE_MARGIN="0")
    first = backup(cli, store, data, env)
    mutate_db(data / "snippets.db", random.Random(3), rows=30)
    state = exact_state(data)
    newest = backup(cli, store, data, env)
    real = sorted(raw.names("data/"))[0]
    content = bytearray(raw.get(real))
    content[: len(content) // 2] = os.urandom(len(content) // 2)  # the frames, not the header
    fake_id = os.urandom(32).hex()
    raw.put(f"data/{fake_id[:2]}/{fake_id}", bytes(content))

    deleted = cli("--store", store, "delete", first, env=env)
    assert deleted.code == 0, deleted.stderr
    repo = repository(store, tmp_path)
    repo.load_index()
    assert fake_id not in repo.index.pack_ids()
    assert f"data/{fake_id[:2]}/{fake_id}" in raw.names("data/")  # not ours: left alone
    target = tmp_path / "restored"
    restored = cli("--store", store, "restore", newest, "--target", str(target), env=env)
    assert restored.code == 0, restored.stderr
    assert exact_state(target) == state
