"""load_manifests: every readable backup, and why each other one does not read."""

from __future__ import annotations

import os
from pathlib import Path

from cloudkeep.backups.catalog import load_manifest, load_manifests
from cloudkeep.repository.repository import Repository
from cloudkeep.storage.url import open_store
from tests.backups.test_prune_plan import Layout


def test_readable_damaged_and_undecodable_backups(tmp_path: Path) -> None:
    layout = Layout(tmp_path)
    repo: Repository = layout.repo
    good = layout.backup(layout.chunk_list("P", [], {}), 0)
    repo.storage.put("snapshots/0.1.0_1", os.urandom(300))  # planted: does not decrypt
    repo.save_backup("0.1.0_2", b'{"not": "a manifest"}')  # sealed, but no manifest
    repo.storage.put("snapshots/not a backup", b"x")  # no backup's name: ignored

    manifests, broken = load_manifests(repo)
    assert [m.id for m in manifests] == [good]
    assert set(broken) == {"0.1.0_1", "0.1.0_2"}
    assert "snapshots/0.1.0_1 is damaged" in broken["0.1.0_1"]
    assert broken["0.1.0_2"].startswith("snapshots/0.1.0_2 is damaged: it holds backup")
    assert load_manifest(repo, good).id == good
    fresh = Repository.open(open_store((tmp_path / "store").as_uri()), "prune pass")
    assert [m.id for m in load_manifests(fresh)[0]] == [good]
