"""The retention policy against restic's own golden results, and its edges.

``data/restic_policy_golden.json`` holds the input times and the kept times with
reasons of restic's ``TestApplyPolicy`` (its golden files), for every rule this
policy has: each count alone and combined, ``unlimited`` and keep-within with
months and years. restic's buckets there are UTC, so the zone given is UTC.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from cloudkeep.backups.retention import BackupRecord, apply_policy, decide, effective
from cloudkeep.config import UNLIMITED, Retention

GOLDEN = json.loads((Path(__file__).parent / "data" / "restic_policy_golden.json").read_text())


def _time(text: str) -> datetime:
    return datetime.fromisoformat(text)


def _records(times: list[str]) -> list[BackupRecord]:
    return [BackupRecord(f"b{n}", _time(t), "laptop", "/data") for n, t in enumerate(times)]


def _ours(reason: str) -> str:
    """restic's reason in our words: a snapshot is a backup."""
    return reason.replace("snapshot", "backup")


@pytest.mark.parametrize("case", GOLDEN["cases"], ids=lambda case: case["golden"])
def test_matches_restic_golden_files(case: dict) -> None:
    policy = Retention(**case["policy"])
    keep, remove = apply_policy(_records(GOLDEN["times"]), policy, zone=UTC)
    assert [(k.backup.time, list(k.reasons)) for k in keep] == [
        (_time(t), [_ours(m) for m in matches]) for t, matches in case["keep"]
    ]
    assert len(keep) + len(remove) == len(GOLDEN["times"])


def test_empty_policy_is_refused() -> None:
    assert not effective(Retention())
    assert not effective(Retention(within="0d"))  # restic: a zero duration is no rule
    with pytest.raises(ValueError):
        apply_policy(_records(["2024-01-01T00:00:00Z"]), Retention())


def test_buckets_use_the_zone_given() -> None:
    """23:30 and 00:30 UTC on consecutive days are one day in New York (19:30, 20:30)."""
    records = _records(["2024-03-01T23:30:00Z", "2024-03-02T00:30:00Z"])
    utc, _ = apply_policy(records, Retention(daily=5), zone=UTC)
    new_york, _ = apply_policy(records, Retention(daily=5), zone=ZoneInfo("America/New_York"))
    assert len(utc) == 2
    assert [k.backup.id for k in new_york] == ["b1", "b0"]
    assert new_york[1].reasons == ("oldest daily backup",)


def test_iso_weeks_cross_the_year() -> None:
    """2024-12-30 and 2025-01-05 are ISO week 1 of 2025; 2024-12-29 is week 52 of 2024."""
    records = _records(["2024-12-29T12:00:00Z", "2024-12-30T12:00:00Z", "2025-01-05T12:00:00Z"])
    keep, remove = apply_policy(records, Retention(weekly=2), zone=UTC)
    assert [k.backup.id for k in keep] == ["b2", "b0"]
    assert [r.id for r in remove] == ["b1"]


def test_within_is_calendar_arithmetic_from_the_newest() -> None:
    """1m before Mar 31 2023 is "Feb 31" = Mar 3 (Go's AddDate), not 30 days before."""
    records = _records(["2023-03-03T11:59:59Z", "2023-03-03T12:00:01Z", "2023-03-31T12:00:00Z"])
    keep, remove = apply_policy(records, Retention(within="1m"), zone=UTC)
    assert [k.backup.id for k in keep] == ["b2", "b1"]
    assert [r.id for r in remove] == ["b0"]
    assert keep[0].reasons == ("within 1m",)


def test_within_ignores_future_backups_as_the_newest() -> None:
    now = datetime(2024, 6, 1, tzinfo=UTC)
    records = _records(["2024-05-01T00:00:00Z", "2024-05-30T00:00:00Z", "2030-01-01T00:00:00Z"])
    keep, remove = apply_policy(records, Retention(within="2d"), now=now, zone=UTC)
    assert [k.backup.id for k in keep] == ["b2", "b1"]  # measured from May 30, not 2030
    assert [r.id for r in remove] == ["b0"]


def test_within_far_in_the_past_keeps_everything() -> None:
    records = _records(["0002-01-01T00:00:00Z", "0001-06-01T00:00:00Z"])
    keep, _ = apply_policy(records, Retention(within="5y"), zone=UTC)
    assert len(keep) == 2


def test_unlimited_keeps_every_bucket() -> None:
    start = datetime(2024, 1, 1, tzinfo=UTC)
    records = [BackupRecord(f"b{n}", start + timedelta(hours=7 * n), "d", "/s") for n in range(100)]
    keep, _ = apply_policy(records, Retention(daily=UNLIMITED), zone=UTC)
    days = {record.time.date() for record in records}
    assert len(keep) == len(days) + 1  # the newest of each day, and the oldest


def test_groups_per_device_and_folder() -> None:
    base = datetime(2024, 1, 1, tzinfo=UTC)
    records = [
        BackupRecord("a1", base, "laptop", "/one"),
        BackupRecord("a2", base + timedelta(hours=1), "laptop", "/one"),
        BackupRecord("b1", base, "laptop", "/two"),
        BackupRecord("c1", base, "desktop", "/one"),
    ]
    groups = decide(records, Retention(last=1))
    assert [(g.device, g.source) for g in groups] == [
        ("desktop", "/one"),
        ("laptop", "/one"),
        ("laptop", "/two"),
    ]
    assert [k.backup.id for k in groups[1].keep] == ["a2"]
    assert [r.id for r in groups[1].remove] == ["a1"]
    assert all(g.keep for g in groups)  # every group keeps its newest
