"""Several devices share one store: concurrent backups, one list, cross-device restore."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.engine.conftest import PASSPHRASE, folder_state, make_snippets_db, workspace


def _device_data(root: Path, rows: int, seed: int) -> Path:
    make_snippets_db(root / "snippets.db", rows, seed=seed)
    (root / "device.txt").write_text(root.name)
    return root


def test_two_devices_back_up_concurrently_and_restore_each_other(tmp_path: Path) -> None:
    store = (tmp_path / "store").as_uri()
    workspace(tmp_path / "unused", store).init()
    laptop = _device_data(tmp_path / "laptop", 2000, 1)
    desktop = _device_data(tmp_path / "desktop", 1500, 2)
    env_base = {"CLOUDKEEP_PASSPHRASE": PASSPHRASE, "CLOUDKEEP_STORE": store}
    import os

    processes = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "cloudkeep",
                "--data",
                str(data),
                "--device-name",
                name,
                "backup",
                "--json",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **env_base},
        )
        for name, data in (("laptop", laptop), ("desktop", desktop))
        for _ in range(2)
    ]
    results = [p.communicate(timeout=120) for p in processes]
    assert all(p.returncode == 0 for p in processes), [err for _, err in results]
    made = [json.loads(out) for out, _ in results]
    assert len({b["id"] for b in made}) == 4

    ws = workspace(laptop, store)
    listed = ws.list()
    assert sorted(b.device_name for b in listed) == ["desktop", "desktop", "laptop", "laptop"]
    assert [b.id for b in listed] == sorted(
        (b.id for b in listed), key=lambda i: int(i.split("_")[1]), reverse=True
    )
    desktop_backup = next(b for b in listed if b.device_name == "desktop")
    ws.restore(desktop_backup.id, target=tmp_path / "from-desktop")
    assert folder_state(tmp_path / "from-desktop") == folder_state(desktop)
    assert ws.check(read_data=True).ok


def test_delete_while_another_device_backs_up(tmp_path: Path) -> None:
    """Reclaim waits for (or yields to) running backups: nothing they need disappears."""
    import threading

    store = (tmp_path / "store").as_uri()
    laptop = _device_data(tmp_path / "laptop", 1500, 3)
    desktop = _device_data(tmp_path / "desktop", 1500, 4)
    ws_laptop, ws_desktop = workspace(laptop, store), workspace(desktop, store, "desktop")
    old = [ws_laptop.backup() for _ in range(3)]
    errors: list[BaseException] = []

    def back_up() -> None:
        try:
            for _ in range(3):
                ws_desktop.backup()
        except BaseException as exc:
            errors.append(exc)

    worker = threading.Thread(target=back_up)
    worker.start()
    for backup in old[:-1]:
        ws_laptop.delete(backup.id)
    worker.join(timeout=120)
    assert not errors
    remaining = ws_laptop.list()
    assert len(remaining) == 4
    report = ws_laptop.check(read_data=True)
    assert report.ok, report.errors
    for number, backup in enumerate(remaining):
        ws_laptop.restore(backup.id, target=tmp_path / f"r{number}")


def test_a_backup_that_fails_before_its_handle_leaves_no_stale_listing(tmp_path: Path) -> None:
    """A backup lists the backups while the key is derived, for the handle it takes next.
    If it fails before taking it (here: a time past tomorrow), a long-lived workspace (the
    server's) must not hand that old listing to a later operation: the list would miss
    every backup made since."""
    from datetime import UTC, datetime, timedelta

    import pytest

    from cloudkeep.errors import UserError

    store = (tmp_path / "store").as_uri()
    desktop = workspace(_device_data(tmp_path / "desktop", 50, 2), store, "desktop")
    desktop.backup()
    laptop = workspace(_device_data(tmp_path / "laptop", 50, 1), store, "laptop")
    with pytest.raises(UserError, match="not between 1970 and tomorrow"):
        laptop.backup(time=datetime.now(UTC) + timedelta(days=30))
    made_since = desktop.backup()
    assert made_since.id in {info.id for info in laptop.list()}
