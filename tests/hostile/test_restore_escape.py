"""A key holder's crafted backups against another device's restore (issue 11, items 2 and 3).

The attacker holds the repository key (a second device): it writes manifests
whose entries aim outside the restore target (absolute and ``..`` paths, files
beneath a restored symlink, a folder on a symlink, duplicates, NUL, special
file types, setuid modes), and a blob whose frame says one id while its content
is another. Each is built with the real Repository API and saved where the
victim's store lists backups; the victim then restores with the real CLI.
Nothing outside the restore target may change, the refusal must be one clear
line with exit code 1 or 2, and ``check --read-data`` must name the backup.
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import replace
from pathlib import Path

import pytest

from cloudkeep.backups.manifest import FileEntry, Manifest, encode_chunk_list, new_backup_id
from cloudkeep.repository.packs import BlobType
from cloudkeep.repository.repository import Repository
from cloudkeep.storage.url import open_store
from tests.hostile.conftest import (
    PASSPHRASE,
    CliResult,
    HostileStore,
    assert_clean_failure,
    tree_state,
)

EVIL = b"attacker's content!"


class Victim:
    """A device with a data folder, backed up to the hostile store, restoring into a target."""

    def __init__(self, tmp_path: Path, store: HostileStore, cli, home: Path) -> None:  # type: ignore[no-untyped-def]
        self.store, self.cli, self.home = store, cli, home
        self.data = tmp_path / "data"
        (self.data / "config").mkdir(parents=True)
        (self.data / "config" / "app.json").write_text('{"theme": "dark"}')
        (self.data / "notes.txt").write_text("my notes\n" * 100)
        self.restores = tmp_path / "restores"
        self.restores.mkdir()
        self.target = self.restores / "target"

    def run(self, *args: str) -> CliResult:
        result: CliResult = self.cli("--data", str(self.data), "--store", self.store.url, *args)
        return result

    def backup(self) -> str:
        done = self.run("backup", "--json")
        assert done.code == 0, done.stderr
        backup_id: str = json.loads(done.stdout)["id"]
        return backup_id

    def outside(self) -> tuple[dict[str, tuple[int, str]], ...]:
        """Everything a restore into ``target`` must leave alone."""
        return (
            tree_state(self.home, skip=(self.home / "cache",)),
            tree_state(self.restores, skip=(self.target,)),
            tree_state(self.data),
        )


def attacker_repo(store: HostileStore) -> Repository:
    return Repository.open(open_store(store.url), PASSPHRASE)


def plant(repo: Repository, manifest: Manifest, files: list[FileEntry]) -> str:
    """Save ``manifest`` with ``files`` as a new backup, as a key holder can."""
    backup_id = new_backup_id(int(manifest.timestamp) + 1)
    forged = replace(manifest, id=backup_id, timestamp=str(int(manifest.timestamp) + 1))
    forged.files = files
    repo.save_file("snapshots", backup_id, forged.encode())
    return backup_id


def _attacks(home: Path, legit: FileEntry) -> dict[str, list[FileEntry]]:
    """Hostile entry lists; ``legit`` is a real file entry whose content they reuse."""

    def file(path: str, mode: int = 0o644) -> FileEntry:
        return replace(legit, path=path, mode=mode, content=list(legit.content))

    return {
        "absolute path": [file(str(home / ".ssh" / "id_ed25519"))],
        "dot-dot path": [file("../../home/.profile")],
        "dot-dot inside": [FileEntry("a", "dir", 0o755), file("a/../../../home/.profile")],
        "file under a restored symlink": [
            FileEntry("ssh", "symlink", 0o777, target=str(home / ".ssh")),
            file("ssh/id_ed25519"),
        ],
        "folder entry on a symlink": [
            FileEntry("docs", "symlink", 0o777, target=str(home / "documents")),
            FileEntry("docs", "dir", 0o777),
        ],
        "folder beneath a symlink": [
            FileEntry("docs", "symlink", 0o777, target=str(home / "documents")),
            FileEntry("docs/new", "dir", 0o777),
        ],
        "fifo type": [FileEntry("pipe", "fifo", 0o644)],
        "device type": [FileEntry("disk", "chardev", 0o666)],
        "duplicate": [file("notes.txt"), file("notes.txt", 0o600)],
        "NUL in a path": [file("notes\x00.txt")],
        "backslash dot-dot": [file("..\\..\\home\\.profile")],
        "negative size": [replace(file("notes.txt"), size=-1)],
    }


ATTACKS = list(_attacks(Path("/h"), FileEntry("x", "file")).keys())


@pytest.mark.parametrize("attack", ATTACKS)
def test_crafted_manifest_never_writes_outside_the_target(
    attack: str, tmp_path: Path, hostile_store: HostileStore, guarded_home: Path, cli
) -> None:
    victim = Victim(tmp_path, hostile_store, cli, guarded_home)
    real_id = victim.backup()
    repo = attacker_repo(hostile_store)
    manifest = Manifest.decode(repo.load_file("snapshots", real_id), real_id)
    legit = next(entry for entry in manifest.files if entry.path == "notes.txt")
    forged_id = plant(repo, manifest, _attacks(guarded_home, legit)[attack])
    before = victim.outside()

    restored = victim.run("restore", forged_id, "--target", str(victim.target))
    assert_clean_failure(restored)
    assert forged_id in restored.stderr and "unsafe" in restored.stderr, restored.stderr
    assert victim.outside() == before
    assert not victim.target.exists()

    in_place = victim.run("restore", forged_id, "--force")
    assert_clean_failure(in_place)
    assert victim.outside() == before

    checked = victim.run("check", "--read-data")
    assert checked.code == 2, checked.stdout + checked.stderr
    assert f"damaged backup: {forged_id}" in checked.stdout
    assert "unsafe to restore" in checked.stderr
    assert f"damaged backup: {real_id}" not in checked.stdout


def test_setuid_and_sticky_bits_are_never_restored(
    tmp_path: Path, hostile_store: HostileStore, guarded_home: Path, cli
) -> None:
    """Modes keep only permission bits: a legitimate backup of a setgid folder (shared
    group folders) still restores, so special bits are dropped rather than refused; and
    the umask caps what is left, so no forged mode makes a file writable by others."""
    victim = Victim(tmp_path, hostile_store, cli, guarded_home)
    real_id = victim.backup()
    repo = attacker_repo(hostile_store)
    manifest = Manifest.decode(repo.load_file("snapshots", real_id), real_id)
    legit = next(entry for entry in manifest.files if entry.path == "notes.txt")
    forged_id = plant(
        repo,
        manifest,
        [
            FileEntry("shared", "dir", 0o3777),
            replace(legit, path="shared/tool", mode=0o6755, content=list(legit.content)),
            replace(legit, path="shared/open", mode=0o666, content=list(legit.content)),
        ],
    )
    before = victim.outside()
    umask = os.umask(0o022)  # the victim's CLI inherits it
    try:
        restored = victim.run("restore", forged_id, "--target", str(victim.target))
    finally:
        os.umask(umask)
    assert restored.code == 0, restored.stderr
    assert stat.S_IMODE((victim.target / "shared").stat().st_mode) == 0o755
    assert stat.S_IMODE((victim.target / "shared" / "tool").stat().st_mode) == 0o755
    assert stat.S_IMODE((victim.target / "shared" / "open").stat().st_mode) == 0o644
    assert (victim.target / "shared" / "tool").read_text() == "my notes\n" * 100
    assert victim.outside() == before


def test_a_blob_whose_content_lies_about_its_id_is_never_restored(
    tmp_path: Path, hostile_store: HostileStore, guarded_home: Path, cli
) -> None:
    """A key holder plants a frame whose authenticated member table names blob X while
    its bytes are the attacker's: the victim's restore must refuse, not return them."""
    victim = Victim(tmp_path, hostile_store, cli, guarded_home)
    real_id = victim.backup()
    repo = attacker_repo(hostile_store)
    manifest = Manifest.decode(repo.load_file("snapshots", real_id), real_id)
    claimed = repo.sealer.blob_id(b"the honest content.")  # as long as EVIL
    writer = repo.pack_writer()
    assert writer.add(BlobType.DATA, claimed, EVIL)  # member table: X; content: EVIL
    chunk_list = encode_chunk_list([(claimed, len(EVIL))])
    list_id = repo.sealer.blob_id(chunk_list)
    writer.add(BlobType.TREE, list_id, chunk_list)
    writer.flush()
    writer.close()
    forged_id = plant(
        repo,
        manifest,
        [
            FileEntry("config", "dir", 0o755),
            FileEntry("config/app.json", "file", 0o644, size=len(EVIL), content=[list_id.hex()]),
        ],
    )
    before = victim.outside()
    for extra in ((), ("--fetch-all",)):
        restored = victim.run("restore", forged_id, "--target", str(victim.target), *extra)
        assert_clean_failure(restored)
        assert "does not match its id" in restored.stderr, restored.stderr
        assert not victim.target.exists()
        assert victim.outside() == before
    in_place = victim.run("restore", forged_id)
    assert_clean_failure(in_place)
    assert (victim.data / "config" / "app.json").read_text() == '{"theme": "dark"}'
    for path in victim.restores.rglob("*"):
        assert not path.is_file() or EVIL not in path.read_bytes()

    checked = victim.run("check", "--read-data")
    assert checked.code == 2 and f"damaged backup: {forged_id}" in checked.stdout
    assert f"damaged backup: {real_id}" not in checked.stdout
    assert "does not match its id" in checked.stderr


def test_the_restorer_itself_never_follows_a_symlink(tmp_path: Path) -> None:
    """Defence in depth: a manifest that got past validation (built in memory here) still
    cannot make the restorer write through a symlink it created."""
    from cloudkeep.backups.restore.write import Tree
    from cloudkeep.errors import RepositoryDamaged

    outside = tmp_path / "outside"
    outside.mkdir()
    staging = tmp_path / "staging"
    staging.mkdir()
    tree = Tree(staging)
    try:
        tree.symlink("link", str(outside))
        with pytest.raises(RepositoryDamaged, match="not a folder"):
            tree.open("link/file", os.O_WRONLY | os.O_CREAT | os.O_EXCL)
        with pytest.raises(RepositoryDamaged, match="not a folder"):
            tree.mkdir("link/sub")
        with pytest.raises(OSError):
            tree.open("link", os.O_RDONLY | os.O_DIRECTORY)
        with pytest.raises(RepositoryDamaged, match="taken"):
            tree.mkdir("link")
    finally:
        tree.close()
    assert list(outside.iterdir()) == []
