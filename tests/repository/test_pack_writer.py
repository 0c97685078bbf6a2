"""``Repository.pack_writer``: what a writer deduplicates against."""

from __future__ import annotations

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
