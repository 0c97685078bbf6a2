"""Review: lock age is never judged by the devices' clocks on a store that stamps times.

When a client's own lock is missing from the listing (another client, or a keyless
writer, removed it between the write and the listing), it has no store time to
compare with. It used to fall back to the lock documents' wall-clock times, so a
reclaim judged a live backup's lock on a device a day behind stale and deleted it.
"""

from __future__ import annotations

import json
from pathlib import Path

from cloudkeep.repository.locks import LockTiming, RepositoryLock
from tests.hostile.conftest import HostileStore
from tests.hostile.test_stale_lock import (
    STALE_AFTER,
    SkewedDevice,
    device_env,
    repository,
    small_data,
)


def test_a_live_lock_is_not_judged_by_clocks_when_our_own_is_not_listed(
    hostile_store: HostileStore,
    cli,  # type: ignore[no-untyped-def]
    tmp_path: Path,
) -> None:
    data = small_data(tmp_path)
    env = device_env(tmp_path, "desk")
    made = cli("--data", str(data), "--store", hostile_store.url, "backup", "--json", env=env)
    assert made.code == 0 and json.loads(made.stdout)["id"], made.stderr
    behind = SkewedDevice(
        repository(hostile_store.url, tmp_path), exclusive=False, clock_offset=-86400
    )
    behind.write()  # a backup in flight on a device whose clock is a day behind
    reclaim = RepositoryLock(
        repository(hostile_store.url, tmp_path / "reclaimer"),
        exclusive=True,
        purpose="space reclaim",
        timing=LockTiming(STALE_AFTER),
    )
    # The reclaim's own lock is not in the listing (removed by another client meanwhile).
    assert f"locks/{reclaim.name}" not in hostile_store.raw.names("locks/")
    assert reclaim.conflicts() == ["backup on skewed-device"]
    assert f"locks/{behind.name}" in hostile_store.raw.names("locks/")
