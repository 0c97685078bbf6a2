"""Issue item 3: ``kill -9`` at random moments of ``delete`` and its space reclaim.

After every kill no blob a remaining backup needs is gone (``check --read-data`` clean,
a remaining backup restores exactly), and a rerun (``delete`` again if the backup is
still listed, else ``reclaim``) finishes the job: no pack is left that no index names
or that holds no blob a backup needs.
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import time
from pathlib import Path

import httpx

from tests.faults.fault_helpers import (
    KillWindow,
    Setup,
    exact_state,
    kill_group,
    make_data_folder,
    mutate_db,
    scaled,
    start_server,
)

TRIALS = scaled(10)
SERVER_TRIALS = scaled(3)


def garbage(setup: Setup) -> tuple[set[str], set[str]]:
    """Packs no index names, and indexed packs holding no blob any backup needs."""
    from cloudkeep.backups.catalog import load_manifests
    from cloudkeep.backups.usage import blob_users

    repo = setup.workspace().repository()
    repo.bypass_cache()
    repo.load_index()
    indexed: dict[str, set[bytes]] = {}
    for name in repo.list_files("index"):
        for pack_id, entries in repo.read_index_file(name).packs.items():
            indexed.setdefault(pack_id, set()).update(e.blob_id for e in entries)
    stored = set(repo.list_packs())
    manifests, broken = load_manifests(repo)
    assert not broken
    users, problems = blob_users(repo, manifests)
    assert not problems
    dead = {pack for pack, blobs in indexed.items() if not blobs & users.keys()}
    return stored - indexed.keys(), dead


def _rerun_prune(setup: Setup) -> subprocess.CompletedProcess[str]:
    """``prune`` after a kill, with no safety margin for young unindexed packs.

    A kill between deleting the old index files and deleting the packs leaves those
    packs unindexed and young (every pack here is seconds old); the margin shelters
    them for an hour as it would a suspended backup's packs (tests/hostile covers
    that), so only without it does one rerun show that nothing else is left behind.
    """
    setup.extra_env["CLOUDKEEP_PRUNE_MARGIN"] = "0"
    try:
        return setup.run("prune")
    finally:
        del setup.extra_env["CLOUDKEEP_PRUNE_MARGIN"]


def _new_backup(setup: Setup, rnd: random.Random, expected: dict[str, dict[str, str]]) -> None:
    """A backup that replaces a tenth of the rows and a whole file: its predecessors'
    packs become partly (repack) or wholly (drop) unused once they are deleted."""
    mutate_db(setup.data / "snippets.db", rnd, rows=1500)
    (setup.data / "cache" / "blob.bin").write_bytes(rnd.randbytes(3_000_000))
    done = setup.run("backup", "--json")
    assert done.returncode == 0, done.stderr
    expected[json.loads(done.stdout)["id"]] = exact_state(setup.data)


def test_kill_delete_and_reclaim_at_random_moments(
    tmp_path: Path, live_db_template: Path, rng: random.Random
) -> None:
    setup = Setup(tmp_path, tmp_path / "production", (tmp_path / "store").as_uri())
    make_data_folder(setup.data, live_db_template, rng)
    expected: dict[str, dict[str, str]] = {}
    for _ in range(3):
        _new_backup(setup, rng, expected)
    ws = setup.workspace()
    outcomes = {"killed": 0, "manifest already gone": 0}
    restores = 0
    kill_window = KillWindow(0.3, 1.2)
    for trial in range(TRIALS):
        victim = rng.choice(sorted(expected)[:-1])
        process = setup.popen("delete", victim, log=tmp_path / f"delete-{trial}.log")
        delay = kill_window.delay(rng)
        started = time.monotonic()
        try:
            process.wait(timeout=delay)
            kill_window.finished_in(time.monotonic() - started)
        except subprocess.TimeoutExpired:
            kill_group(process)
        label = f"trial {trial} (delete {victim}, kill at {delay:.2f}s)"
        log = (tmp_path / f"delete-{trial}.log").read_text(errors="replace")
        assert process.returncode in (0, -signal.SIGKILL), f"{label}: {log}"
        outcomes["killed"] += process.returncode == -signal.SIGKILL

        listed = {b.id for b in ws.list()}
        assert listed <= expected.keys(), f"{label}: unknown backups {listed - expected.keys()}"
        assert expected.keys() - listed <= {victim}, f"{label}: other backups vanished"
        report = ws.check(read_data=True)
        assert report.ok, f"{label}: {report.errors}"
        remaining = sorted(listed - {victim})
        target = tmp_path / f"restored-{trial}"
        survivor = rng.choice(remaining)
        ws.restore(survivor, target=target)
        restores += 1
        assert exact_state(target) == expected[survivor], f"{label}: {survivor} differs"

        if victim in listed:
            rerun = setup.run("delete", victim)
        else:
            outcomes["manifest already gone"] += 1
            rerun = _rerun_prune(setup)
        assert rerun.returncode == 0, f"{label}: rerun failed: {rerun.stderr}"
        del expected[victim]
        unindexed, dead = garbage(setup)
        assert not unindexed and not dead, f"{label}: rerun left {unindexed} / {dead}"
        _new_backup(setup, rng, expected)

    done = setup.run("check", "--read-data")
    assert done.returncode == 0, done.stdout + done.stderr
    for backup_id, state in expected.items():
        target = tmp_path / f"final-{backup_id}"
        ws.restore(backup_id, target=target)
        assert exact_state(target) == state
    print(f"delete kills {TRIALS}: {outcomes}, restores {restores + len(expected)}")
    assert outcomes["killed"] >= TRIALS // 2


def test_kill_server_during_background_reclaim(
    tmp_path: Path, live_db_template: Path, rng: random.Random
) -> None:
    """The server answers 204 once the manifest is gone and reclaims in the background:
    kill it (whole group) at a random moment after the 204."""
    setup = Setup(tmp_path, tmp_path / "production", (tmp_path / "store").as_uri())
    make_data_folder(setup.data, live_db_template, rng)
    expected: dict[str, dict[str, str]] = {}
    for _ in range(3):
        _new_backup(setup, rng, expected)
    ws = setup.workspace()
    unfinished = 0
    for trial in range(SERVER_TRIALS):
        victim = rng.choice(sorted(expected)[:-1])
        server = start_server(setup)
        delay = rng.uniform(0.0, 0.25)
        try:
            response = httpx.post(f"{server.url}/backups/{victim}/delete", timeout=60)
            assert response.status_code == 204, response.text
            time.sleep(delay)  # the random kill moment, not a synchronisation
            kill_group(server.process)
        finally:
            server.stop()
        del expected[victim]
        label = f"server trial {trial} (kill {delay:.2f}s after the 204)"
        listed = {b.id for b in ws.list()}
        assert listed == expected.keys(), f"{label}: {listed ^ expected.keys()}"
        report = ws.check(read_data=True)
        assert report.ok, f"{label}: {report.errors}"
        survivor = rng.choice(sorted(expected))
        ws.restore(survivor, target=tmp_path / f"server-restored-{trial}")
        assert exact_state(tmp_path / f"server-restored-{trial}") == expected[survivor]
        unfinished += any(garbage(setup))
        rerun = _rerun_prune(setup)
        assert rerun.returncode == 0, f"{label}: {rerun.stderr}"
        unindexed, dead = garbage(setup)
        assert not unindexed and not dead, f"{label}: rerun left {unindexed} / {dead}"
        _new_backup(setup, rng, expected)
    print(f"server delete kills {SERVER_TRIALS}: reclaim unfinished at the kill {unfinished}")
