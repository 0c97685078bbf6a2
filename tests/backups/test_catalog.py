"""load_manifests: every readable backup, and why each other one does not read."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cloudkeep.backups.catalog import choose_latest, load_manifest, load_manifests, match_prefix
from cloudkeep.backups.manifest import Manifest
from cloudkeep.errors import AmbiguousBackupId, BackupNotFound, InvalidBackupId
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


def _manifest(backup_id: str, device: str, timestamp: str = "") -> Manifest:
    """A listed backup as ``choose_latest`` sees it (its own ``timestamp`` text may lie)."""
    return Manifest(
        id=backup_id,
        version="0.1.0",
        timestamp=timestamp or backup_id.split("_")[1],
        bytes=0,
        created="2026-01-01T00:00:00+00:00",
        device_name=device,
        platform="LINUX",
        hostname=device,
        source="/data",
        kind="folder",
        files=[],
    )


def test_latest_goes_by_the_id_time_never_by_the_manifests_own_text() -> None:
    listed = [
        _manifest("0.1.0_300", "a", timestamp="not a number"),
        _manifest("0.1.0_900", "b"),
        _manifest("0.1.0_100", "a", timestamp="999999"),
    ]
    assert choose_latest(listed, "a", None).id == "0.1.0_300"
    assert choose_latest(listed, "c", "b").id == "0.1.0_900"
    with pytest.raises(AmbiguousBackupId, match="--device NAME"):
        choose_latest(listed, "c", None)
    with pytest.raises(BackupNotFound, match="no backups yet"):
        choose_latest([], "a", None)
    # A hostile device name is shown escaped, on one line.
    odd = [_manifest("0.1.0_1", "x\n\x1b[2J"), _manifest("0.1.0_2", "y")]
    with pytest.raises(AmbiguousBackupId) as refused:
        choose_latest(odd, "c", None)
    assert "\n" not in str(refused.value) and "\x1b" not in str(refused.value)


def test_prefixes_name_one_backup_or_say_why_not() -> None:
    names = ["0.1.0_1000", "0.1.0_1001", "0.1.0_2000", "0.1.0_200"]
    assert match_prefix(names, "0.1.0_2000", "s") == "0.1.0_2000"
    assert match_prefix(names, "0.1.0_200", "s") == "0.1.0_200"  # exact beats prefix
    assert match_prefix(names, "0.1.0_1001", "s") == "0.1.0_1001"
    with pytest.raises(AmbiguousBackupId, match=r"begins 4 backups .* and 1 more"):
        match_prefix(names, "0.1", "s")
    with pytest.raises(BackupNotFound, match=r"no backup 0\.2 in s"):
        match_prefix(names, "0.2", "s")
    with pytest.raises(InvalidBackupId):
        match_prefix(names, "snapshots/0.1", "s")
