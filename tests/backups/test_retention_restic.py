"""The retention policy against the restic installed here, on the same timestamps.

One restic repository per module: two hosts backed up with ``restic backup --time`` at
a spread of times over two years (clusters in one hour and one day, both sides of
midnight, of month and year ends and of ISO week boundaries, across daylight saving
changes), in a zone that is not UTC. For each policy, ``restic forget --dry-run
--json`` in that zone and our ``decide`` with ``TZ`` set the same must keep the same
backups for the same reasons, group by group.

restic before 0.16 lacks two rules of 0.16 (which ours follows): ``unlimited`` counts,
and keeping the oldest backup of a group while a count is left. Against such a restic,
the backups ours keeps only as the oldest are set aside and unlimited policies skipped;
the golden results of restic 0.16+ (``test_retention.py``) cover both.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from cloudkeep.backups.retention import BackupRecord, GroupDecision, decide
from cloudkeep.config import UNLIMITED, Retention

pytestmark = pytest.mark.skipif(shutil.which("restic") is None, reason="restic is not installed")

ZONE = "America/New_York"
HOSTS = ("laptop", "desktop")


def _restic_version() -> tuple[int, int]:
    out = subprocess.run(["restic", "version"], capture_output=True, text=True).stdout
    match = re.search(r"restic (\d+)\.(\d+)", out)
    assert match, out
    return int(match[1]), int(match[2])


def _wall_times(seed: int) -> list[datetime]:
    """Local wall-clock times: a random spread plus the boundaries that matter."""
    rng = random.Random(seed)
    start = datetime(2024, 1, 3, 9, 0)
    times = {start + timedelta(minutes=rng.randrange(0, 2 * 365 * 24 * 60)) for _ in range(10)}
    for year in (2024, 2025):
        times |= {
            datetime(year - 1 if year == 2024 else year, 12, 31, 23, 40),  # year end
            datetime(year, 1, 1, 0, 20),
            datetime(year, 3, 31, 23, 59),  # month end
            datetime(year, 4, 1, 0, 1),
            datetime(year, 3, 9 if year == 2024 else 8, 23, 30),  # the night DST starts
        }
    # ISO weeks: Sunday 2024-12-29 (2024-W52), Monday 2024-12-30 (2025-W01).
    times |= {datetime(2024, 12, 29, 22, 0), datetime(2024, 12, 30, 1, 0)}
    # One hour with three backups, one day with four, and the latest week daily.
    times |= {datetime(2025, 6, 14, 10, m) for m in (5, 25, 55)}
    times |= {datetime(2025, 7, 2, h, 15) for h in (1, 8, 13, 23)}
    times |= {datetime(2025, 12, 20, 18, 0) + timedelta(days=d) for d in range(7)}
    return sorted(times)


@pytest.fixture(scope="module")
def restic_repo(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[dict[str, str], list[BackupRecord]]:
    """The restic environment and its backups as our records (restic's ids and times)."""
    root = tmp_path_factory.mktemp("restic")
    (root / "data").mkdir()
    (root / "data" / "f.txt").write_text("tiny\n")
    env = {
        **os.environ,
        "RESTIC_REPOSITORY": str(root / "repo"),
        "RESTIC_PASSWORD": "retention-test",
        "HOME": str(root),
        "TZ": ZONE,
    }
    subprocess.run(["restic", "init", "-q"], env=env, check=True, capture_output=True)
    jobs = [(host, moment) for n, host in enumerate(HOSTS) for moment in _wall_times(n + 7)]

    def back_up(job: tuple[str, datetime]) -> None:
        host, moment = job
        subprocess.run(
            ["restic", "backup", "-q", "--no-cache", "--host", host, "--time",
             moment.strftime("%Y-%m-%d %H:%M:%S"), "data/f.txt"],
            env=env, cwd=root, check=True, capture_output=True,
        )  # fmt: skip

    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(back_up, jobs))
    records = [
        BackupRecord(
            snapshot["id"],
            datetime.fromisoformat(snapshot["time"]),
            snapshot["hostname"],
            ",".join(snapshot["paths"]),
        )
        for snapshot in _restic_json(env, "snapshots")
    ]
    assert len(records) == len(jobs)
    return env, records


def _restic_json(env: dict[str, str], *args: str) -> Any:
    done = subprocess.run(
        ["restic", "--no-cache", "--json", *args], env=env, check=True, capture_output=True
    )
    return json.loads(done.stdout)


def _flags(policy: Retention) -> list[str]:
    flags = []
    for rule in ("last", "hourly", "daily", "weekly", "monthly", "yearly"):
        count = getattr(policy, rule)
        if count:
            flags += [f"--keep-{rule}", "unlimited" if count == UNLIMITED else str(count)]
    if policy.within:
        flags += ["--keep-within", policy.within]
    return flags


@pytest.fixture
def local_zone(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """This process's local time is ``ZONE`` (what ``decide`` uses by default)."""
    monkeypatch.setenv("TZ", ZONE)
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


POLICIES = [
    Retention(last=7),
    Retention(hourly=10),
    Retention(daily=9),
    Retention(weekly=6),
    Retention(monthly=8),
    Retention(yearly=2),
    Retention(yearly=5),  # counts left at the oldest backup
    Retention(daily=400),
    Retention(within="10d"),
    Retention(within="3m"),
    Retention(within="1y2m"),
    Retention(within="1y6m5d7h"),
    Retention(last=2, daily=5, weekly=4, monthly=6, yearly=3),
    Retention(hourly=3, weekly=3, within="20d"),
    Retention(daily=7, monthly=12, within="1m"),
    Retention(daily=UNLIMITED),
    Retention(last=3, weekly=2, monthly=UNLIMITED, yearly=UNLIMITED),
]


def _ours_as_restic_before_0_16(group: GroupDecision) -> dict[str, list[str]]:
    """Our kept ids and reasons without the 0.16 rule that keeps the oldest backup."""
    kept = {}
    for item in group.keep:
        reasons = [r for r in item.reasons if not r.startswith("oldest ")]
        if reasons:
            kept[item.backup.id] = reasons
    return kept


@pytest.mark.parametrize("policy", POLICIES, ids=str)
def test_keeps_what_restic_keeps(
    restic_repo: tuple[dict[str, str], list[BackupRecord]], local_zone: None, policy: Retention
) -> None:
    env, records = restic_repo
    version = _restic_version()
    rules = ("last", "hourly", "daily", "weekly", "monthly", "yearly")
    if version < (0, 16) and any(getattr(policy, rule) == UNLIMITED for rule in rules):
        pytest.skip(f"restic {version[0]}.{version[1]} has no unlimited counts")
    groups = _restic_json(env, "forget", "--dry-run", *_flags(policy))
    theirs = {}
    for group in groups:
        reasons = group["reasons"] or []
        assert len(reasons) == len(group["keep"] or [])
        theirs[(group["host"], ",".join(group["paths"]))] = {
            snapshot["id"]: [m.replace("snapshot", "backup") for m in reason["matches"]]
            for snapshot, reason in zip(group["keep"] or [], reasons, strict=True)
        }
    ours = decide(records, policy)
    assert len(ours) == len(HOSTS)
    for group in ours:
        if version >= (0, 16):
            mine = {item.backup.id: list(item.reasons) for item in group.keep}
        else:
            mine = _ours_as_restic_before_0_16(group)
        assert mine == theirs[(group.device, group.source)]
        assert 0 < len(group.keep) < len(group.keep) + len(group.remove)


def test_local_time_decides(
    restic_repo: tuple[dict[str, str], list[BackupRecord]], local_zone: None
) -> None:
    """The same backups bucketed in UTC keep another set: the zone is not ignored."""
    _env, records = restic_repo
    policy = Retention(daily=30)
    local = {k.backup.id for g in decide(records, policy) for k in g.keep}
    utc = {k.backup.id for g in decide(records, policy, zone=ZoneInfo("UTC")) for k in g.keep}
    assert local != utc
