"""Issue item 1: ``kill -9`` of the CLI and of the server at random moments of a backup.

After every kill: ``check --read-data`` is clean (leftover unindexed packs are only
warnings), the list holds no partial backup (every listed backup restores to the
state it was taken of), no earlier backup is lost, and the next backup succeeds.
Kill moments come from a seeded RNG (seed printed; ``CLOUDKEEP_FAULT_SEED`` replays).
"""

from __future__ import annotations

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
    start_server,
    wait_gone,
)

CLI_TRIALS = scaled(12)
SERVER_TRIALS = scaled(8)
S3_TRIALS = scaled(4)


class Ledger:
    """What each backup must restore to, and the invariants checked after each crash."""

    def __init__(self, setup: Setup, rnd: random.Random) -> None:
        self.setup = setup
        self.ws = setup.workspace()
        self.rnd = rnd
        self.expected: dict[str, dict[str, str]] = {}
        self.killed_midway = 0
        self.restores = 0

    def backup_now(self, state: dict[str, str]) -> str:
        """The next backup (through the CLI) must succeed after any crash."""
        done = self.setup.run("backup", "--json")
        assert done.returncode == 0, done.stderr
        listed = {b.id for b in self.ws.list()}
        new = listed - self.expected.keys()
        assert len(new) == 1, new
        backup_id = new.pop()
        self.expected[backup_id] = state
        return backup_id

    def after_crash(self, state: dict[str, str], label: str, cli_check: bool) -> None:
        listed = {b.id for b in self.ws.list()}
        lost = self.expected.keys() - listed
        assert not lost, f"{label}: earlier backups lost: {lost}"
        new = listed - self.expected.keys()
        assert len(new) <= 1, f"{label}: more new backups than started: {new}"
        if cli_check:
            done = self.setup.run("check", "--read-data")
            assert done.returncode == 0, f"{label}: {done.stdout}\n{done.stderr}"
            assert "no errors were found" in done.stdout
        else:
            report = self.ws.check(read_data=True)
            assert report.ok, f"{label}: {report.errors}"
            assert all("not indexed" in w for w in report.warnings), report.warnings
        # A backup that made it into the list must be complete: restore it.
        for backup_id in new:
            self.expected[backup_id] = state
            self.restore_and_compare(backup_id, label)
        earlier = sorted(self.expected.keys() - new)
        if earlier:
            self.restore_and_compare(self.rnd.choice(earlier), label)

    def restore_and_compare(self, backup_id: str, label: str) -> None:
        target = self.setup.root / f"restored-{self.restores}"
        self.restores += 1
        self.ws.restore(backup_id, target=target)
        assert exact_state(target) == self.expected[backup_id], f"{label}: {backup_id} differs"

    def restore_all(self) -> None:
        for backup_id in sorted(self.expected):
            self.restore_and_compare(backup_id, "final")


def _wait_in_progress(response: httpx.Response, timeout: float) -> None:
    """Read the NDJSON stream until the engine reports progress (the backup is running)."""
    deadline = time.monotonic() + timeout
    for line in response.iter_lines():
        if '"IN-PROGRESS"' in line or time.monotonic() > deadline:
            return
        assert '"FAILED"' not in line, line


def _cli_kill_trials(
    setup: Setup, template: Path, rnd: random.Random, trials: int, window: tuple[float, float]
) -> Ledger:
    make_data_folder(setup.data, template, rnd)
    ledger = Ledger(setup, rnd)
    ledger.backup_now(exact_state(setup.data))
    kill_window = KillWindow(*window)
    durations: list[float] = []  # of the backups that finished before their kill
    for trial in range(trials):
        mutate_db(setup.data / "snippets.db", rnd)
        state = exact_state(setup.data)
        log = setup.root / f"cli-{trial}.log"
        process = setup.popen("backup", log=log)
        delay = kill_window.delay(rnd)
        started = time.monotonic()
        try:
            process.wait(timeout=delay)
            durations.append(time.monotonic() - started)
            kill_window.finished_in(durations[-1])
        except subprocess.TimeoutExpired:
            kill_group(process)
        if process.returncode == -signal.SIGKILL:
            ledger.killed_midway += 1
        else:
            assert process.returncode == 0, log.read_text()
        ledger.after_crash(state, f"cli trial {trial} (kill at {delay:.2f}s)", trial % 4 == 3)
        ledger.backup_now(state)  # the next backup after a crash must succeed
    assert ledger.killed_midway >= trials // 2, "kills should mostly land mid-backup"
    ledger.backup_now(exact_state(setup.data))
    done = setup.run("check", "--read-data")
    assert done.returncode == 0, done.stdout + done.stderr
    ledger.restore_all()
    print(
        f"cli trials {trials}, killed mid-backup {ledger.killed_midway}, "
        f"backups {len(ledger.expected)}, restores {ledger.restores}, "
        f"finished before the kill in {[round(d, 2) for d in durations]} s"
    )
    return ledger


def test_kill_cli_backup_at_random_moments(
    tmp_path: Path, live_db_template: Path, rng: random.Random
) -> None:
    setup = Setup(tmp_path, tmp_path / "production", (tmp_path / "store").as_uri())
    _cli_kill_trials(setup, live_db_template, rng, CLI_TRIALS, (0.2, 1.1))


def test_kill_cli_backup_on_s3(
    tmp_path: Path,
    live_db_template: Path,
    rng: random.Random,
    s3_server,  # type: ignore[no-untyped-def]
) -> None:
    """The same on S3 (moto): uploads cut mid-request, no rename-into-place."""
    store = s3_server.url_for(f"crash-{rng.randrange(16**8):08x}")
    setup = Setup(tmp_path, tmp_path / "production", store)
    _cli_kill_trials(setup, live_db_template, rng, S3_TRIALS, (0.2, 1.2))


def test_kill_server_during_backup(
    tmp_path: Path, live_db_template: Path, rng: random.Random
) -> None:
    """Half the trials kill only the server's pid (its engine process is orphaned), half
    the whole process group (server and engine die together, like a power cut)."""
    setup = Setup(tmp_path, tmp_path / "production", (tmp_path / "store").as_uri())
    make_data_folder(setup.data, live_db_template, rng)
    ledger = Ledger(setup, rng)
    ledger.backup_now(exact_state(setup.data))
    for trial in range(SERVER_TRIALS):
        mutate_db(setup.data / "snippets.db", rng)
        state = exact_state(setup.data)
        server = start_server(setup)
        whole_group = trial % 2 == 0
        delay = rng.uniform(0.0, 0.8)
        try:
            with (
                httpx.Client(timeout=30) as http,
                http.stream(
                    "POST",
                    f"{server.url}/backups/create/streamed",
                    headers={"Accept": "application/x-ndjson"},
                ) as response,
            ):
                assert response.status_code == 200
                _wait_in_progress(response, timeout=20)
                time.sleep(delay)  # the random kill moment, not a synchronisation
                members = session_pids(server.process.pid)
                if whole_group:
                    kill_group(server.process)
                else:
                    server.process.send_signal(signal.SIGKILL)
                    server.process.wait(timeout=10)
            ledger.killed_midway += 1
            # Nothing of the killed server may go on touching the data or the store.
            leftover = wait_gone(members, timeout=30)
            assert not leftover, f"processes outlived the killed server: {leftover}"
        finally:
            server.stop()
        ledger.after_crash(
            state, f"server trial {trial} (group={whole_group}, +{delay:.2f}s)", trial == 3
        )
        ledger.backup_now(state)  # the next backup after a crash must succeed
    server = start_server(setup)
    try:
        created = httpx.post(f"{server.url}/backups/create", timeout=120)
        assert created.status_code == 200, created.text
        ledger.expected[created.json()["id"]] = exact_state(setup.data)
    finally:
        server.stop()
    ledger.restore_all()
    print(
        f"server trials {SERVER_TRIALS}, backups {len(ledger.expected)}, restores {ledger.restores}"
    )
