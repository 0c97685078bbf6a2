"""The backup list cache: changes made while a (slow) listing is in flight are not lost."""

from __future__ import annotations

import json
import threading
import time
from datetime import UTC, datetime, timedelta

import pytest

from cloudkeep.api.cache import BackupListCache
from cloudkeep.errors import RepositoryNotFound, WrongPassphrase
from cloudkeep.wire import Backup, PlatformEnum, grouped_timestamp

BASE = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


def backup(n: int) -> Backup:
    created = BASE + timedelta(minutes=n)
    stamp = str(int(created.timestamp() * 1_000_000))
    return Backup(
        id=f"0.1.0_{stamp}",
        version="0.1.0",
        timestamp=stamp,
        bytes=n,
        created=grouped_timestamp(created),
        device_name="d",
        platform=PlatformEnum.LINUX,
    )


def ids(cache: BackupListCache) -> list[str]:
    listing = cache.peek()
    assert listing is not None
    return [b["id"] for b in json.loads(listing.body)["iterable"]]


def test_changes_during_a_load_are_replayed_onto_its_result() -> None:
    release = threading.Event()
    listing_started = threading.Event()

    def slow_loader() -> list[Backup]:
        listing_started.set()
        release.wait(10)
        return [backup(1), backup(2)]  # what the store held when the listing began

    cache = BackupListCache(slow_loader)
    loader = threading.Thread(target=cache.load)
    loader.start()
    listing_started.wait(10)
    cache.add(backup(3))  # a creation completing while the listing runs
    cache.remove(backup(1).id)  # a deletion likewise
    release.set()
    loader.join(10)
    assert ids(cache) == [backup(3).id, backup(2).id]  # newest first


def test_missing_repository_is_an_empty_list_and_other_errors_are_not_cached() -> None:
    cache = BackupListCache(lambda: (_ for _ in ()).throw(RepositoryNotFound("none")))
    assert json.loads(cache.load().body) == {"iterable": []}

    calls = {"n": 0}

    def locked() -> list[Backup]:
        calls["n"] += 1
        raise WrongPassphrase("wrong passphrase")

    failing = BackupListCache(locked)
    for _ in range(2):
        with pytest.raises(WrongPassphrase):
            failing.load()
    assert calls["n"] == 2 and failing.peek() is None


def test_stale_list_is_served_while_refreshing() -> None:
    generation = {"n": 1}
    cache = BackupListCache(lambda: [backup(i) for i in range(generation["n"])], ttl=0.05)
    cache.load()
    assert len(ids(cache)) == 1
    generation["n"] = 3
    time.sleep(0.1)
    assert not cache.is_fresh()
    cache.refresh_in_background()
    deadline = time.monotonic() + 5
    while len(ids(cache)) != 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(ids(cache)) == 3 and cache.is_fresh()
