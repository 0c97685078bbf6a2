"""Issue 11, item 9: everything read from the store is bounded before it is authenticated.

A keyless attacker plants a 2 GiB lock (a backup once took 5.8 GiB of memory), a
huge or undecryptable manifest, a garbage index file; a key holder crafts zstd
headers declaring terabytes. Each is refused without being read or allocated,
named in a clear error, and skipped so that every other backup stays listable,
restorable and backed up to.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from test_store_names import backup_id, make_data, rows_of

from cloudkeep.errors import RepositoryDamaged
from cloudkeep.repository.frames import FRAME_AAD, BlobDamaged, FrameDamaged
from cloudkeep.repository.index import IndexFile, IndexFormatError
from cloudkeep.repository.packs import MAX_HEADER_SIZE, PackFormatError, header_start
from cloudkeep.repository.repository import Repository
from cloudkeep.repository.untrusted import (
    MAX_STORED_SIZE,
    DecompressionFailed,
    decompress_bounded,
)
from cloudkeep.storage.url import open_store
from tests.hostile.conftest import CliResult, FolderRaw, HostileStore, assert_clean_failure

MIB = 1024 * 1024
#: Runs a command and writes the peak RSS (KiB) of its process tree to argv[1].
_MEASURE = (
    "import resource, subprocess, sys\n"
    "code = subprocess.call(sys.argv[2:])\n"
    "peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss\n"
    "open(sys.argv[1], 'w').write(str(peak))\n"
    "sys.exit(code)\n"
)


def measured(tmp_path: Path, *args: str, env: dict[str, str]) -> tuple[CliResult, int]:
    """Run the CLI; return its result and its peak resident memory in bytes."""
    peak_file = tmp_path / "peak"
    done = subprocess.run(
        [sys.executable, "-c", _MEASURE, str(peak_file), sys.executable, "-m", "cloudkeep", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=300,
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
    )
    return CliResult(done.returncode, done.stdout, done.stderr), int(peak_file.read_text()) * 1024


def plant_huge(store: HostileStore, name: str, size: int) -> None:
    """An object the store reports as ``size`` bytes: sparse on a folder store."""
    if isinstance(store.raw, FolderRaw):
        path = store.raw.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("wb") as handle:
            handle.truncate(size)
    else:
        store.raw.put(name, bytes(size))


def huge_size(store: HostileStore, limit: int) -> int:
    """2 GiB on a folder store (sparse, free); on S3 just past ``limit`` and 512 MiB at least
    (a backup's own peak, ~130 MiB, must stay far below half of it)."""
    return 2 * 1024 * MIB if store.kind == "file" else max(limit + 1, 512 * MIB)


def zstd_declaring(size: int) -> bytes:
    """A zstd frame whose header declares ``size`` bytes of content and that holds none."""
    descriptor = 0xE0  # 8-byte content size field, single segment
    empty_last_raw_block = b"\x01\x00\x00"
    return struct.pack("<IBQ", 0xFD2FB528, descriptor, size) + empty_last_raw_block


def test_a_huge_lock_is_refused_unread(
    hostile_store: HostileStore, guarded_home: Path, tmp_path: Path
) -> None:
    data = make_data(tmp_path / "data")
    env = {"CLOUDKEEP_STORE": hostile_store.url, "CLOUDKEEP_DATA": str(data)}
    first, baseline = measured(tmp_path, "backup", env=env)
    assert first.code == 0, first.stderr
    name = "locks/" + "9" * 32
    size = huge_size(hostile_store, MAX_STORED_SIZE["locks"])
    plant_huge(hostile_store, name, size)

    result, peak = measured(tmp_path, "backup", env=env)
    # Not a byte of it was read: the backup uses what a backup uses.
    assert peak < baseline + 64 * MIB, (peak, baseline)
    assert peak < size // 2
    if result.code != 0:  # a bad lock may stop the backup, if it says which one
        assert_clean_failure(result)
        assert name in result.stderr and "not read" in result.stderr

    repo = Repository.open(open_store(hostile_store.url), os.environ["CLOUDKEEP_PASSPHRASE"])
    repo.list_files("locks")
    with pytest.raises(RepositoryDamaged, match=name):
        repo.load_file("locks", name.split("/")[1])


def test_a_huge_manifest_is_skipped_by_list_and_reported_by_check(
    hostile_store: HostileStore, guarded_home: Path, tmp_path: Path, cli
) -> None:
    data = make_data(tmp_path / "data")
    env = {"CLOUDKEEP_STORE": hostile_store.url, "CLOUDKEEP_DATA": str(data)}
    saved = cli("backup", env=env)
    assert saved.code == 0, saved.stderr
    planted = "0.1.0_1700000000000000"
    plant_huge(hostile_store, f"snapshots/{planted}", huge_size(hostile_store, 256 * MIB))

    listed, peak = measured(tmp_path, "list", "--json", env=env)
    assert listed.code == 0, listed.stderr
    assert [b["id"] for b in json.loads(listed.stdout)["iterable"]] == [backup_id(saved.stdout)]
    assert f"skipped backup {planted}" in listed.stderr and "not read" in listed.stderr
    assert peak < 200 * MIB
    checked = cli("check", env=env)
    assert checked.code == 2, checked.stdout + checked.stderr
    assert f"damaged backup: {planted}" in checked.stdout
    assert "Traceback" not in checked.stderr


def test_an_undecryptable_manifest_blocks_no_other_backup(
    hostile_store: HostileStore, guarded_home: Path, tmp_path: Path, cli
) -> None:
    """Listed with a warning, reported by check; the others list, restore and back up."""
    data = make_data(tmp_path / "data")
    env = {"CLOUDKEEP_STORE": hostile_store.url, "CLOUDKEEP_DATA": str(data)}
    first = cli("backup", env=env)
    assert first.code == 0, first.stderr
    first_rows = rows_of(data / "app.db")
    make_data(data, rows=30)
    second = cli("backup", env=env)
    assert second.code == 0, second.stderr
    planted = "0.1.0_1900000000000000"  # newest of all: the next backup's parent candidate
    hostile_store.raw.put(f"snapshots/{planted}", os.urandom(500))

    listed = cli("list", "--json", env=env)
    assert listed.code == 0, listed.stderr
    ids = [b["id"] for b in json.loads(listed.stdout)["iterable"]]
    assert ids == [backup_id(second.stdout), backup_id(first.stdout)]
    assert f"skipped backup {planted}" in listed.stderr
    checked = cli("check", env=env)
    assert checked.code == 2 and f"damaged backup: {planted}" in checked.stdout, checked.stdout
    assert "Traceback" not in checked.stderr

    for saved, rows in ((first, first_rows), (second, rows_of(data / "app.db"))):
        target = tmp_path / f"out-{backup_id(saved.stdout)}"
        restored = cli("restore", backup_id(saved.stdout), "--target", str(target), env=env)
        assert restored.code == 0, restored.stderr
        assert rows_of(target / "app.db") == rows
    assert cli("backup", env=env).code == 0
    # Deleting it is the way out (space reclaim waits while a backup is unreadable).
    assert cli("delete", planted, env=env).code == 0
    assert cli("check", env=env).code == 0


def test_a_planted_index_file_blocks_no_backup_or_restore(
    hostile_store: HostileStore, guarded_home: Path, tmp_path: Path, cli
) -> None:
    data = make_data(tmp_path / "data")
    env = {"CLOUDKEEP_STORE": hostile_store.url, "CLOUDKEEP_DATA": str(data)}
    saved = cli("backup", env=env)
    assert saved.code == 0, saved.stderr
    name = "index/" + "7" * 32
    hostile_store.raw.put(name, os.urandom(300))
    make_data(data, rows=40)

    again = cli("backup", env=env)
    assert again.code == 0, again.stderr
    assert name in again.stderr  # skipped, with a warning
    target = tmp_path / "out"
    restored = cli("restore", backup_id(again.stdout), "--target", str(target), env=env)
    assert restored.code == 0, restored.stderr
    assert rows_of(target / "app.db") == rows_of(data / "app.db")
    checked = cli("check", env=env)
    assert checked.code == 2 and name in checked.stderr, checked.stderr


def test_zstd_headers_declaring_terabytes_allocate_nothing(tmp_path: Path) -> None:
    """A key holder's compressed content is bounded by what its header declares."""
    bomb = zstd_declaring(1 << 40)
    with pytest.raises(DecompressionFailed, match="1,099,511,627,776"):
        decompress_bounded(bomb, 64 * MIB)
    with pytest.raises(IndexFormatError):
        IndexFile.scan(bomb)
    repo = Repository.init(open_store((tmp_path / "store").as_uri()), "frame passphrase")
    table = struct.pack("<I", 0)
    sealed = repo.sealer.seal(table + b"\x01" + bomb, FRAME_AAD)
    with pytest.raises(FrameDamaged, match="more than a frame may hold"):
        repo.open_frame(sealed)
    with pytest.raises(FrameDamaged):
        repo.open_frames([sealed])


def test_frame_tables_and_encodings_are_bounded_by_the_bytes_present(tmp_path: Path) -> None:
    """A key holder's frame: a member count of 2**32 - 1, an unknown encoding, a raw
    payload shorter than its table, a blob that is not what its table says."""
    repo = Repository.init(open_store((tmp_path / "store").as_uri()), "frame passphrase")
    blob = b"a blob of the frame"
    blob_id = repo.sealer.blob_id(blob)
    one = struct.pack("<I", 1) + struct.pack("<32sI", blob_id, len(blob))
    for plaintext, reason in (
        (struct.pack("<I", 0xFFFFFFFF) + bytes(40), "member table is malformed"),
        (one, "member table is malformed"),  # no encoding byte
        (one + b"\x07" + blob, "unknown payload encoding"),
    ):
        sealed = repo.sealer.seal(plaintext, FRAME_AAD)
        with pytest.raises(FrameDamaged, match=reason):
            repo.open_frame(sealed)
        with pytest.raises(FrameDamaged, match=reason):
            repo.open_frames([sealed])
    short = repo.open_frame(repo.sealer.seal(one + b"\x00" + blob[:5], FRAME_AAD))
    with pytest.raises(BlobDamaged, match="past the end"):
        repo.blob_in_frame(short, blob_id, 0, len(blob))
    lying = repo.open_frame(repo.sealer.seal(one + b"\x00" + blob.upper(), FRAME_AAD))
    with pytest.raises(BlobDamaged, match="does not match its id"):
        repo.blob_in_frame(lying, blob_id, 0, len(blob), rehash=True)


def test_pack_trailers_and_index_counts_are_bounded_by_the_bytes_present() -> None:
    with pytest.raises(PackFormatError, match="larger than any header"):
        header_start(10 * 1024 * MIB, MAX_HEADER_SIZE + 1)
    with pytest.raises(PackFormatError, match="before the start"):
        header_start(100, 97)
    assert header_start(100, 96) == 0
    import zstandard

    claims_billions = b"CKIX\x02" + struct.pack("<I", 0xFFFFFFFF) + bytes(36)
    with pytest.raises(IndexFormatError, match="more packs than it holds"):
        IndexFile.scan(zstandard.ZstdCompressor().compress(claims_billions))


def test_a_lock_rewritten_since_it_was_listed_is_read_whole(
    hostile_store: HostileStore, tmp_path: Path
) -> None:
    """Locks are rewritten every minute: a size from an older listing must not cut one short."""
    repo = Repository.init(open_store(hostile_store.url), "lock passphrase")
    name = "6" * 32
    for first, then in ((b"short", os.urandom(3000)), (os.urandom(3000), b"short again")):
        repo.save_file("locks", name, first)
        assert repo.list_files("locks") == [name]
        repo.save_file("locks", name, then)  # rewritten after the listing
        assert repo.load_file("locks", name) == then
