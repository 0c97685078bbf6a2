"""Issue item 6: two devices back up to one S3 store while a third deletes old backups.

Two server processes (own data folders, device names, caches) create backups in a
loop; meanwhile a CLI on a third "device" deletes the oldest backups, each delete
trying the exclusive space reclaim. Afterwards the store checks clean, no deleted
backup is listed, and every listed backup restores to exactly the state it was taken of.
"""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path

import httpx

from tests.faults.fault_helpers import (
    Setup,
    exact_state,
    make_live_db,
    mutate_db,
    scaled,
    start_server,
)

BACKUPS_PER_DEVICE = scaled(6)
DELETES = scaled(5)


def test_two_devices_back_up_while_a_third_deletes(
    tmp_path: Path,
    s3_server,
    rng: random.Random,  # type: ignore[no-untyped-def]
) -> None:
    store = s3_server.url_for(f"shared-{rng.randrange(16**8):08x}")
    devices = []
    for name in ("laptop", "desktop"):
        root = tmp_path / name
        setup = Setup(root, root / "production", store, device=name)
        make_live_db(setup.data / "snippets.db", 8, seed=rng.randint(0, 10**6))
        (setup.data / f"{name}.txt").write_text(name)
        devices.append(setup)
    janitor = Setup(tmp_path / "janitor", tmp_path / "janitor" / "unused", store, device="ops")
    janitor.data.mkdir(parents=True)
    # One first backup makes the repository, so the devices do not race to create it.
    assert devices[0].run("backup").returncode == 0
    expected: dict[str, dict[str, str]] = {}
    expected_lock = threading.Lock()
    errors: list[str] = []
    seeds = [rng.randint(0, 10**6) for _ in devices]

    def device_loop(setup: Setup, seed: int) -> None:
        local = random.Random(seed)
        server = start_server(setup)
        try:
            with httpx.Client(base_url=server.url, timeout=180) as http:
                for _ in range(BACKUPS_PER_DEVICE):
                    mutate_db(setup.data / "snippets.db", local, rows=200)
                    state = exact_state(setup.data)
                    response = http.post("/backups/create")
                    if response.status_code != 200:
                        errors.append(f"{setup.device}: {response.status_code} {response.text}")
                        return
                    with expected_lock:
                        expected[response.json()["id"]] = state
        except Exception as exc:  # reported below, with the server's log
            errors.append(f"{setup.device}: {exc!r}\n{server.output()[-2000:]}")
        finally:
            server.stop()

    threads = [
        threading.Thread(target=device_loop, args=pair) for pair in zip(devices, seeds, strict=True)
    ]
    for thread in threads:
        thread.start()
    deleted: list[str] = []
    postponed = 0
    deadline = time.monotonic() + 240
    while len(deleted) < DELETES and time.monotonic() < deadline:
        with expected_lock:
            candidates = sorted(expected, key=lambda i: int(i.rsplit("_", 1)[1]))
        if len(candidates) < 3:
            if not any(t.is_alive() for t in threads):
                break
            time.sleep(0.2)  # poll for the devices' next backups
            continue
        victim = candidates[0]
        done = janitor.run("delete", victim, timeout=120)
        assert done.returncode == 0, done.stderr
        postponed += "other clients" in done.stderr
        with expected_lock:
            del expected[victim]
        deleted.append(victim)
    for thread in threads:
        thread.join(timeout=300)
        assert not thread.is_alive(), "a device loop did not finish"
    assert not errors, errors
    assert len(deleted) == DELETES, deleted

    # Finish any reclaim the backups postponed, then judge the store.
    assert janitor.run("reclaim").returncode == 0
    done = janitor.run("check", "--read-data")
    assert done.returncode == 0, done.stdout + done.stderr
    ws = janitor.workspace()
    listed = {b.id: b for b in ws.list()}
    assert not set(deleted) & listed.keys()
    assert expected.keys() <= listed.keys()
    assert {listed[i].device_name for i in expected} == {"laptop", "desktop"}
    for number, (backup_id, state) in enumerate(sorted(expected.items())):
        target = tmp_path / f"restored-{number}"
        ws.restore(backup_id, target=target)
        assert exact_state(target) == state, backup_id
    print(
        f"backups {2 * BACKUPS_PER_DEVICE + 1} from 2 devices, deleted {len(deleted)} "
        f"(reclaim postponed {postponed}), restored {len(expected)}"
    )
