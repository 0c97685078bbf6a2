"""Damaged stores: check --read-data names exactly the affected backups; restore fails clearly."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cloudkeep.errors import RepositoryDamaged
from tests.engine.conftest import PASSPHRASE, workspace


def _two_backups(tmp_path: Path) -> tuple[Path, object, str, str]:
    """Backup A holds a unique file; backup B (later) does not: damage can be told apart."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "shared.bin").write_bytes(os.urandom(200_000))
    (data / "only-in-a.bin").write_bytes(os.urandom(200_000))
    store = tmp_path / "store"
    ws = workspace(data, store.as_uri())
    first = ws.backup()
    (data / "only-in-a.bin").unlink()
    second = ws.backup()
    return store, ws, first.id, second.id


def _pack_holding(store: Path, ws, backup_id: str, path: str) -> Path:
    repo = ws.repository()
    repo.load_index()
    manifest = ws.manifest(backup_id)
    entry = next(e for e in manifest.files if e.path == path)
    from cloudkeep.backups.manifest import decode_chunk_list

    chunk_id = decode_chunk_list(repo.read_blob(bytes.fromhex(entry.content[0])))[0][0]
    location = repo.index.lookup(chunk_id)
    return store / "data" / location.pack_id[:2] / location.pack_id, location


def _flip(path: Path, offset: int) -> None:
    content = bytearray(path.read_bytes())
    content[offset] ^= 0x40
    path.write_bytes(bytes(content))


def test_flipped_byte_in_a_blob_names_only_the_backup_using_it(tmp_path: Path, cli) -> None:
    store, ws, first, second = _two_backups(tmp_path)
    pack, location = _pack_holding(store, ws, first, "only-in-a.bin")
    _flip(pack, location.offset + 100)

    assert ws.check(read_data=False).ok  # structure is intact: only reading data tells
    report = ws.check(read_data=True)
    assert report.damaged_backups == [first]

    result = cli(
        "--data",
        str(tmp_path / "data"),
        "--store",
        store.as_uri(),
        "check",
        "--read-data",
        env={"CLOUDKEEP_PASSPHRASE": PASSPHRASE},
    )
    assert result.code == 2
    assert f"damaged backup: {first}" in result.stdout and second not in result.stdout

    with pytest.raises(RepositoryDamaged):
        ws.restore(first, target=tmp_path / "bad")
    assert not (tmp_path / "bad").exists()
    ws.restore(second, target=tmp_path / "good")
    assert (tmp_path / "good" / "shared.bin").read_bytes() == (
        tmp_path / "data" / "shared.bin"
    ).read_bytes()


def test_truncated_and_missing_packs_are_found_without_reading_data(tmp_path: Path) -> None:
    store, ws, first, _second = _two_backups(tmp_path)
    pack, _ = _pack_holding(store, ws, first, "only-in-a.bin")
    pack.write_bytes(pack.read_bytes()[: pack.stat().st_size // 2])
    report = ws.check()
    assert not report.ok and first in report.damaged_backups
    pack.unlink()
    report = ws.check()
    assert any("missing" in e for e in report.errors) and first in report.damaged_backups


def test_deleted_index_makes_every_backup_damaged(tmp_path: Path) -> None:
    store, ws, first, second = _two_backups(tmp_path)
    for index in (store / "index").iterdir():
        index.unlink()
    report = ws.check()
    assert report.damaged_backups == sorted([first, second])


def test_tampered_manifest_and_index_are_detected(tmp_path: Path) -> None:
    store, ws, first, second = _two_backups(tmp_path)
    _flip(store / "snapshots" / first, 40)
    report = ws.check()
    assert first in report.damaged_backups and second not in report.damaged_backups
    index = next((store / "index").iterdir())
    _flip(index, 30)
    import shutil

    shutil.rmtree(Path(os.environ["CLOUDKEEP_CACHE_DIR"]), ignore_errors=True)
    assert not ws.check().ok


def test_every_stored_object_is_authenticated(tmp_path: Path) -> None:
    """Flip one byte anywhere in any pack: check --read-data fails."""
    store, ws, _first, _second = _two_backups(tmp_path)
    packs = sorted((store / "data").rglob("*"))
    packs = [p for p in packs if p.is_file()]
    for number, pack in enumerate(packs):
        original = pack.read_bytes()
        _flip(pack, (number * 7919) % len(original))
        assert not ws.check(read_data=True).ok, pack
        pack.write_bytes(original)
    assert ws.check(read_data=True).ok
