"""``cloudkeep stats``: its figures agree with the store's own objects and the backups."""

from __future__ import annotations

import json
import os
from pathlib import Path

from tests.engine.conftest import PASSPHRASE, workspace

ENV = {"CLOUDKEEP_PASSPHRASE": PASSPHRASE}


def _size(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def test_stats_match_the_store(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    store = tmp_path / "store"
    laptop_data, desktop_data = tmp_path / "laptop", tmp_path / "desktop"
    laptop_data.mkdir()
    desktop_data.mkdir()
    shared = os.urandom(400_000)
    (laptop_data / "shared.bin").write_bytes(shared)
    (desktop_data / "shared.bin").write_bytes(shared)  # deduplicated across devices
    laptop = workspace(laptop_data, store.as_uri(), "laptop")
    desktop = workspace(desktop_data, store.as_uri(), "desktop")
    infos = [laptop.backup()]
    (laptop_data / "more.bin").write_bytes(os.urandom(100_000))
    infos.append(laptop.backup())
    infos.append(desktop.backup())

    done = cli("--data", str(laptop_data), "--store", store.as_uri(), "stats", "--json", env=ENV)
    assert done.code == 0, done.stderr
    figures = json.loads(done.stdout)
    assert figures["pack_bytes"] == _size(store / "data")
    assert figures["index_bytes"] == _size(store / "index")
    assert figures["backup_bytes"] == _size(store / "snapshots")
    assert figures["store_bytes"] == sum(
        figures[part] for part in ("pack_bytes", "index_bytes", "backup_bytes")
    )
    assert figures["packs"] == sum(1 for path in (store / "data").rglob("*") if path.is_file())
    logical = sum(info.bytes for info in infos)
    assert figures["backups"] == 3 and figures["logical_bytes"] == logical
    assert figures["dedup_ratio"] == logical / figures["store_bytes"]
    assert figures["dedup_ratio"] > 1  # the shared file is stored once
    by_device = {device["device"]: device for device in figures["devices"]}
    assert by_device["laptop"] == {
        "device": "laptop",
        "backups": 2,
        "added_bytes": infos[0].added_bytes + infos[1].added_bytes,
        "latest_bytes": infos[1].bytes,
        "latest_id": infos[1].id,
    }
    assert by_device["desktop"]["backups"] == 1
    assert by_device["desktop"]["added_bytes"] == infos[2].added_bytes < 400_000

    text = cli("--data", str(laptop_data), "--store", store.as_uri(), "stats", env=ENV)
    assert f"store: {figures['store_bytes']:,} bytes" in text.stdout
    assert f"device laptop: 2 backups, {by_device['laptop']['added_bytes']:,} bytes added" in (
        text.stdout
    )


def test_stats_of_a_missing_repository(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    done = cli("--store", (tmp_path / "nothing").as_uri(), "stats", env=ENV)
    assert done.code == 1 and len(done.stderr.strip().splitlines()) == 1
    assert "Traceback" not in done.stderr
