"""``Repository.pack_writer``: what a writer deduplicates against."""

from __future__ import annotations

import os
from pathlib import Path

from cloudkeep.repository.index import MasterIndex
from cloudkeep.repository.packs import BlobType
from cloudkeep.repository.repository import Repository
from cloudkeep.storage.url import open_store


def test_a_writer_given_known_packs_deduplicates_only_against_them(tmp_path: Path) -> None:
    repo = Repository.init(open_store((tmp_path / "store").as_uri()), "writer pass")
    content = b"a blob every writer sees"
    blob_id = repo.blob_id(content)
    first = repo.pack_writer()
    assert first.add(BlobType.DATA, blob_id, content)
    first.flush()
    first.close()
    (stored_pack,) = repo.index.pack_ids()

    # The default writer follows the repository's index, even one loaded after it was made.
    again = repo.pack_writer()
    repo.load_index()
    assert again.known(blob_id) and not again.add(BlobType.DATA, blob_id, content)
    again.close()

    # A prune's writer knows only the packs it keeps: the blob is copied into a new pack,
    # and the repository's own index is left as it was.
    loaded = repo.index
    repack = repo.pack_writer(known={})
    assert not repack.known(blob_id) and repack.add(BlobType.DATA, blob_id, content)
    (index_file,) = repack.flush()
    repack.close()
    (new_pack,) = repo.read_index_file(index_file).packs
    assert new_pack != stored_pack and repo.index is loaded
    assert repo.index.pack_ids() == [stored_pack]

    kept = repo.read_index()
    assert blob_id in MasterIndex.of(kept)
    with_kept = repo.pack_writer(known=kept)
    assert with_kept.known(blob_id)
    with_kept.close()


def test_the_first_pack_is_cut_early_so_uploads_start_soon(tmp_path: Path) -> None:
    """Over a slow link the first upload should not wait for a whole pack of new data."""
    from cloudkeep.repository.pack_writer import FIRST_PACK_FRACTION, PackWriter

    repo = Repository.init(open_store((tmp_path / "store").as_uri()), "writer pass")
    pack_size = 256 * 1024
    writer = PackWriter(repo, pack_size)
    blob = 64 * 1024
    for _ in range(12):  # 768 KiB that does not compress
        content = os.urandom(blob)
        writer.add(BlobType.DATA, repo.blob_id(content), content)
    (index_file,) = writer.flush()
    writer.close()
    sizes = sorted(
        sum(entry.length for entry in entries)
        for entries in repo.read_index_file(index_file).packs.values()
    )
    assert min(sizes) < pack_size // FIRST_PACK_FRACTION + blob
    assert max(sizes) >= pack_size
