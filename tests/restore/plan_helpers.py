"""Planned fetches as plain values, and plans made from them, for the restore's tests."""

from __future__ import annotations

from typing import TYPE_CHECKING

from cloudkeep.backups.manifest import encode_chunk_list
from cloudkeep.backups.restore.plan import Fetches, SlicePlan, chunk_entries
from cloudkeep.repository.crypto import ID_SIZE

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray


def entries(chunks: list[tuple[bytes, int]]) -> NDArray[np.void]:
    """A chunk list of (blob id, size) pairs as the restore reads it."""
    return chunk_entries(encode_chunk_list(chunks))


def targets_of(fetches: Fetches) -> dict[bytes, list[tuple[int, int]]]:
    """Each blob to fetch and its (file, offset) places, in the order planned."""
    ids, files, offsets = fetches.arrays()
    raw = ids.tobytes()
    targets: dict[bytes, list[tuple[int, int]]] = {}
    for at, (file, offset) in enumerate(zip(files.tolist(), offsets.tolist(), strict=True)):
        targets.setdefault(raw[at * ID_SIZE : (at + 1) * ID_SIZE], []).append((file, offset))
    return targets


def fetches_of(targets: dict[bytes, list[tuple[int, int]]]) -> Fetches:
    """The fetches of a slice that wants each blob at its (file, offset) places."""
    plan = SlicePlan()
    for blob_id, places in targets.items():
        for file, offset in places:
            plan.add_missing(file, [(offset, 0, blob_id)])
    return plan.fetch
