"""``cloudkeep status`` as a user runs it: real CLI processes, a real store, and the
status file a server writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from api_helpers import PASSPHRASE, make_notes_db

from cloudkeep.status import Outcome, ScheduleStatus, save_status, status_path

UNREACHABLE = "s3://bucket/prefix?endpoint=http://127.0.0.1:9&region=us-east-1"


def cloudkeep(root: Path, *args: str, store: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CLOUDKEEP_", "AWS_"))}
    env.update(
        HOME=str(root / "home"),
        CLOUDKEEP_CONFIG_DIR=str(root / "config"),
        CLOUDKEEP_CACHE_DIR=str(root / "cache"),
        CLOUDKEEP_PASSPHRASE=PASSPHRASE,
        CLOUDKEEP_DEVICE_NAME="laptop",
        CLOUDKEEP_STORE_RETRY_DEADLINE="1",
        CLOUDKEEP_STORE_TIMEOUT="1",
        AWS_ACCESS_KEY_ID="test",
        AWS_SECRET_ACCESS_KEY="test",
    )
    command = [sys.executable, "-m", "cloudkeep", "--data", str(root / "data")]
    command += ["--store", store or (root / "store").as_uri(), *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)


def test_status_tells_the_age_of_the_last_backup_and_fails_max_age(tmp_path: Path) -> None:
    make_notes_db(tmp_path / "data" / "notes.db", ["a"])
    fresh = cloudkeep(tmp_path, "status")
    assert fresh.returncode == 0, fresh.stderr
    assert "none yet" in fresh.stdout
    assert "no schedule is set" in fresh.stdout
    assert cloudkeep(tmp_path, "status", "--max-age", "1h").returncode == 4
    assert cloudkeep(tmp_path, "backup").returncode == 0
    done = cloudkeep(tmp_path, "status", "--json", "--max-age", "1h")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["last_backup"]["source"] == "store"
    assert 0 <= report["last_backup"]["age_seconds"] < 3600
    assert report["server"] is None and report["last_failure"] is None
    bad = cloudkeep(tmp_path, "status", "--max-age", "soon")
    assert bad.returncode == 1 and "is not a duration" in bad.stderr


def test_status_falls_back_to_the_status_file_when_the_store_is_down(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    good = datetime.now(UTC) - timedelta(hours=30)
    failed = datetime.now(UTC) - timedelta(minutes=5)
    save_status(
        status_path(tmp_path / "cache", tmp_path / "data", UNREACHABLE),
        ScheduleStatus(
            data=str(tmp_path / "data"),
            store=UNREACHABLE,
            device_name="laptop",
            schedule="hourly",
            last_good_id="0.1.0_1796000000000000",
            last_good_time=good,
            last_run_time=failed,
            last_run_outcome=Outcome.FAILED,
            last_run_detail="store unreachable after 3 attempts",
            last_failure_time=failed,
            last_failure_reason="store unreachable after 3 attempts",
            consecutive_failures=4,
            store_unreachable_since=good + timedelta(minutes=50),
            server_pid=2**22 + 12345,  # no such process: the server is gone
            heartbeat=failed,
        ),
    )
    shown = cloudkeep(tmp_path, "status", store=UNREACHABLE)
    assert shown.returncode == 0, shown.stderr
    lines = {line.split("  ", 1)[0]: line for line in shown.stdout.splitlines()}
    assert "1d 6h ago: 0.1.0_1796000000000000" in lines["last backup"]
    assert "from this device's status file; cannot list the store" in lines["last backup"]
    assert "unreachable" in lines["last backup"]
    assert "no schedule is set" in lines["next backup"]  # the server is gone
    assert "store unreachable after 3 attempts (4 in a row, still failing)" in shown.stdout
    assert "unreachable since" in shown.stdout
    stale = cloudkeep(tmp_path, "status", "--offline", "--max-age", "1d", store=UNREACHABLE)
    assert stale.returncode == 4
    assert "Traceback" not in shown.stderr + stale.stderr
