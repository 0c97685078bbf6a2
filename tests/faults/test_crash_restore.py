"""Issue item 2: ``kill -9`` at random moments of a restore over the live data folder.

The data folder must afterwards hold entirely the old state or entirely the restored
backup (compared file by file, SQLite by every row), never a mix and never be missing;
rerunning the restore completes and cleans the killed run's staging folder.
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
    session_pids,
    sqlite_state,
    start_server,
    wait_gone,
)

CLI_TRIALS = scaled(10)
SERVER_TRIALS = scaled(6)
FILE_TRIALS = scaled(6)


def _two_backups(setup: Setup, rnd: random.Random) -> dict[str, dict[str, str]]:
    """Two backups whose states differ in the database and in a plain file."""
    states = {}
    for _ in range(2):
        mutate_db(setup.data / "snippets.db", rnd, rows=400)
        (setup.data / "cache" / "blob.bin").write_bytes(rnd.randbytes(700_000))
        done = setup.run("backup", "--json")
        assert done.returncode == 0, done.stderr
        states[json.loads(done.stdout)["id"]] = exact_state(setup.data)
    return states


def _leftovers(setup: Setup) -> list[str]:
    """Staging or aside folders a restore left beside the data folder."""
    return sorted(
        p.name
        for p in setup.data.parent.iterdir()
        if p.name.startswith(f".{setup.data.name}.cloudkeep-restore-")
        or p.name == f"{setup.data.name}.cloudkeep-old"
    )


def _judge(setup: Setup, before: dict[str, str], wanted: dict[str, str], label: str) -> bool:
    """Old or new, never mixed or missing; True if the restore had already swapped."""
    assert setup.data.is_dir(), f"{label}: the data folder is missing"
    now = exact_state(setup.data)
    assert now in (before, wanted), f"{label}: the data folder is a mix of old and new"
    return now == wanted


def _rerun(setup: Setup, backup_id: str, wanted: dict[str, str], label: str) -> None:
    done = setup.run("restore", backup_id)
    assert done.returncode == 0, f"{label}: rerun failed: {done.stderr}"
    assert exact_state(setup.data) == wanted, f"{label}: rerun did not restore"
    assert _leftovers(setup) == [], f"{label}: staging left after the rerun"


def test_kill_cli_restore_at_random_moments(
    tmp_path: Path, live_db_template: Path, rng: random.Random
) -> None:
    setup = Setup(tmp_path, tmp_path / "production", (tmp_path / "store").as_uri())
    make_data_folder(setup.data, live_db_template, rng)
    states = _two_backups(setup, rng)
    ids = sorted(states)
    outcomes = {"old": 0, "new": 0}
    kill_window = KillWindow(0.3, 1.3)
    for trial in range(CLI_TRIALS):
        before = exact_state(setup.data)
        backup_id = next(i for i in ids if states[i] != before)
        process = setup.popen("restore", backup_id, log=tmp_path / f"restore-{trial}.log")
        delay = kill_window.delay(rng)
        started = time.monotonic()
        try:
            process.wait(timeout=delay)
            kill_window.finished_in(time.monotonic() - started)
        except subprocess.TimeoutExpired:
            kill_group(process)
        label = f"trial {trial} (kill at {delay:.2f}s, rc {process.returncode})"
        if process.returncode not in (0, -signal.SIGKILL):
            raise AssertionError(f"{label}: {(tmp_path / f'restore-{trial}.log').read_text()}")
        swapped = _judge(setup, before, states[backup_id], label)
        outcomes["new" if swapped else "old"] += 1
        _rerun(setup, backup_id, states[backup_id], label)
    print(f"restore kills {CLI_TRIALS}: folder found old {outcomes['old']}, new {outcomes['new']}")
    assert outcomes["old"] >= 2, "kills should land before the swap too"


def test_kill_server_during_restore(
    tmp_path: Path, live_db_template: Path, rng: random.Random
) -> None:
    setup = Setup(tmp_path, tmp_path / "production", (tmp_path / "store").as_uri())
    make_data_folder(setup.data, live_db_template, rng)
    states = _two_backups(setup, rng)
    ids = sorted(states)
    for trial in range(SERVER_TRIALS):
        before = exact_state(setup.data)
        backup_id = next(i for i in ids if states[i] != before)
        server = start_server(setup)
        delay = rng.uniform(0.0, 0.6)
        try:
            with (
                httpx.Client(timeout=30) as http,
                http.stream(
                    "POST",
                    f"{server.url}/backup/{backup_id}/restore/streamed",
                    headers={"Accept": "application/x-ndjson"},
                ) as response,
            ):
                assert response.status_code == 200
                for line in response.iter_lines():
                    assert '"FAILED"' not in line, line
                    if '"IN-PROGRESS"' in line or '"COMPLETED"' in line:
                        break
                time.sleep(delay)  # the random kill moment, not a synchronisation
                members = session_pids(server.process.pid)
                if trial % 2 == 0:
                    kill_group(server.process)
                else:
                    server.process.send_signal(signal.SIGKILL)
                    server.process.wait(timeout=10)
            assert not wait_gone(members, timeout=30), "the engine outlived the server"
        finally:
            server.stop()
        label = f"server trial {trial} (+{delay:.2f}s)"
        _judge(setup, before, states[backup_id], label)
        _rerun(setup, backup_id, states[backup_id], label)


def test_staging_of_a_killed_unreaped_restore_is_cleaned(tmp_path: Path) -> None:
    """Found by the server kill trials: a killed restore stays a zombie until its parent
    (or init, ~2 s here) reaps it, and ``kill(pid, 0)`` still succeeds on a zombie, so the
    rerun kept the killed run's staging folder (a full copy of the database)."""
    from cloudkeep.backups.restore.in_place import clean_stale_staging

    live = tmp_path / "production"
    live.mkdir()
    child = subprocess.Popen(["sleep", "60"])
    try:
        child.send_signal(signal.SIGKILL)
        deadline = time.monotonic() + 10
        while Path(f"/proc/{child.pid}/stat").read_text().split(") ", 1)[1][0] != "Z":
            assert time.monotonic() < deadline, "the child did not die"
            time.sleep(0.01)
        staging = tmp_path / f".production.cloudkeep-restore-{child.pid}-0123abcd"
        (staging / "sub").mkdir(parents=True)
        (staging / "sub" / "snippets.db").write_bytes(b"x" * 1000)
        clean_stale_staging(live)  # the killed run is a zombie right now: not reaped yet
        assert not staging.exists()
        assert live.is_dir()
    finally:
        child.wait(timeout=10)


def test_kill_single_file_restore_into_the_live_database(
    tmp_path: Path, live_db_template: Path, rng: random.Random
) -> None:
    """A single-SQLite-file source is restored through SQLite's backup API into the live
    file: a kill mid-way must leave the old database (SQLite rolls the write back)."""
    live = tmp_path / "app" / "snippets.db"
    make_data_folder(tmp_path / "app", live_db_template, rng)
    setup = Setup(tmp_path, live, (tmp_path / "store").as_uri())
    states: dict[str, str] = {}
    for _ in range(2):
        mutate_db(live, rng, rows=400)
        done = setup.run("backup", "--json")
        assert done.returncode == 0, done.stderr
        states[json.loads(done.stdout)["id"]] = sqlite_state(live)
    outcomes = {"old": 0, "new": 0}
    kill_window = KillWindow(0.3, 1.3)
    for trial in range(FILE_TRIALS):
        before = sqlite_state(live)
        backup_id = next(i for i in sorted(states) if states[i] != before)
        process = setup.popen("restore", backup_id, log=tmp_path / f"file-{trial}.log")
        delay = kill_window.delay(rng)
        started = time.monotonic()
        try:
            process.wait(timeout=delay)
            kill_window.finished_in(time.monotonic() - started)
        except subprocess.TimeoutExpired:
            kill_group(process)
        label = f"file trial {trial} (kill at {delay:.2f}s, rc {process.returncode})"
        assert process.returncode in (0, -signal.SIGKILL), label
        assert live.is_file(), f"{label}: the database is missing"
        now = sqlite_state(live)
        assert now in (before, states[backup_id]), f"{label}: mixed database"
        outcomes["new" if now == states[backup_id] else "old"] += 1
        done = setup.run("restore", backup_id)
        assert done.returncode == 0, f"{label}: rerun failed: {done.stderr}"
        assert sqlite_state(live) == states[backup_id]
        assert not [p for p in live.parent.iterdir() if ".cloudkeep-restore-" in p.name]
    print(f"single-file restore kills {FILE_TRIALS}: {outcomes}")
