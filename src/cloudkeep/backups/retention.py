"""Which backups a retention policy keeps: restic's ``forget`` policy, rule for rule.

The same algorithm as restic's ``ApplyPolicy`` (``internal/data/snapshot_policy.go``,
restic 0.16 and later), over small records instead of snapshots:

- backups are grouped per device and data folder (restic: host and paths) and each
  group is decided alone;
- in a group, newest first, a backup is kept when it is the first (newest) of its
  bucket for a ``keep-*`` rule that still has a count left: last (every backup its
  own bucket), hourly (year, month, day, hour), daily, weekly (ISO year and week),
  monthly, yearly; only buckets that kept a backup use up a count; ``UNLIMITED``
  never runs out;
- the oldest backup of a group is kept too while a rule still has a count left
  (reason "oldest daily backup"...), so a young store keeps its longest history;
- ``keep-within`` keeps every backup strictly newer than the newest backup's time
  (never a future one) minus the duration; years, months and days move the wall
  clock as Go's ``AddDate`` does (Jan 31 minus 2 months is Dec 1), hours are exact.

Buckets use local time. restic reads each snapshot's time in the offset it was
recorded with; backups record UTC, so the zone of the machine deciding is used (the
same on the machine that made them). Ties in time keep the order given.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, tzinfo

from cloudkeep.config import UNLIMITED, Retention

__all__ = [
    "BackupRecord",
    "GroupDecision",
    "Kept",
    "apply_policy",
    "decide",
    "effective",
    "within_text",
]


@dataclass(frozen=True, slots=True)
class BackupRecord:
    """What the policy looks at: a backup's id, time (aware), device and data folder."""

    id: str
    time: datetime
    device: str
    source: str


@dataclass(frozen=True, slots=True)
class Kept:
    """A kept backup and every rule that kept it ("daily backup", "within 30d"...)."""

    backup: BackupRecord
    reasons: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class GroupDecision:
    """The decision for one device and data folder; both lists newest first."""

    device: str
    source: str
    keep: tuple[Kept, ...]
    remove: tuple[BackupRecord, ...]


def _last(_: datetime, number: int) -> int:
    return number


def _hour(moment: datetime, _: int) -> int:
    return moment.year * 1_000_000 + moment.month * 10_000 + moment.day * 100 + moment.hour


def _day(moment: datetime, _: int) -> int:
    return moment.year * 10_000 + moment.month * 100 + moment.day


def _week(moment: datetime, _: int) -> int:
    year, week, _weekday = moment.isocalendar()
    return year * 100 + week


def _month(moment: datetime, _: int) -> int:
    return moment.year * 100 + moment.month


def _year(moment: datetime, _: int) -> int:
    return moment.year


#: (Retention field, bucket of a local time and position, reason), in restic's order.
_RULES: tuple[tuple[str, Callable[[datetime, int], int], str], ...] = (
    ("last", _last, "last backup"),
    ("hourly", _hour, "hourly backup"),
    ("daily", _day, "daily backup"),
    ("weekly", _week, "weekly backup"),
    ("monthly", _month, "monthly backup"),
    ("yearly", _year, "yearly backup"),
)


def within_text(policy: Retention) -> str | None:
    """keep-within as restic prints it (``1y2m``: zero parts left out); None if unset or zero."""
    parts = policy.within_parts
    if parts is None or not any(parts):
        return None
    return "".join(f"{value}{unit}" for value, unit in zip(parts, "ymdh", strict=True) if value)


def effective(policy: Retention) -> bool:
    """Whether the policy names any rule that keeps something (restic refuses otherwise:
    an empty policy would remove every backup)."""
    counts = any(getattr(policy, rule) for rule, _bucket, _reason in _RULES)
    return counts or within_text(policy) is not None


def decide(
    backups: Iterable[BackupRecord],
    policy: Retention,
    now: datetime | None = None,
    zone: tzinfo | None = None,
) -> list[GroupDecision]:
    """The policy applied to each device and data folder, groups sorted by both."""
    groups: dict[tuple[str, str], list[BackupRecord]] = {}
    for backup in backups:
        groups.setdefault((backup.device, backup.source), []).append(backup)
    decisions = []
    for (device, source), members in sorted(groups.items()):
        keep, remove = apply_policy(members, policy, now, zone)
        decisions.append(GroupDecision(device, source, tuple(keep), tuple(remove)))
    return decisions


def apply_policy(
    backups: Sequence[BackupRecord],
    policy: Retention,
    now: datetime | None = None,
    zone: tzinfo | None = None,
) -> tuple[list[Kept], list[BackupRecord]]:
    """(kept with reasons, removed) of one group, newest first.

    ``now`` (default: the clock) only tells which backups lie in the future;
    ``zone`` is the zone of the buckets (default: this machine's local time).
    ``ValueError`` for a policy that keeps nothing (see ``effective``).
    """
    if not effective(policy):
        raise ValueError("an empty retention policy would remove every backup")
    ordered = sorted(backups, key=lambda backup: backup.time, reverse=True)  # stable
    if not ordered:
        return [], []
    local = [_in_zone(backup.time, zone) for backup in ordered]
    counts = [getattr(policy, rule) for rule, _bucket, _reason in _RULES]
    last_bucket: list[int | None] = [None] * len(_RULES)
    within = within_text(policy)
    cutoff = _cutoff(ordered, policy, now, zone) if within else None
    keep: list[Kept] = []
    remove: list[BackupRecord] = []
    oldest = len(ordered) - 1
    for number, backup in enumerate(ordered):
        reasons: list[str] = []
        if within and (cutoff is None or backup.time > cutoff):
            reasons.append(f"within {within}")
        for rule, (_name, bucket, reason) in enumerate(_RULES):
            if counts[rule] > 0 or counts[rule] == UNLIMITED:
                value = bucket(local[number], number)
                if value != last_bucket[rule] or number == oldest:
                    if value == last_bucket[rule]:  # kept only as the oldest
                        reason = f"oldest {reason}"
                    last_bucket[rule] = value
                    if counts[rule] > 0:
                        counts[rule] -= 1
                    reasons.append(reason)
        if reasons:
            keep.append(Kept(backup, tuple(reasons)))
        else:
            remove.append(backup)
    return keep, remove


def _aware(moment: datetime) -> datetime:
    """A time without an offset (a hand-written manifest) counts as UTC."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _in_zone(moment: datetime, zone: tzinfo | None) -> datetime:
    return _aware(moment).astimezone(zone)


def _cutoff(
    ordered: list[BackupRecord], policy: Retention, now: datetime | None, zone: tzinfo | None
) -> datetime | None:
    """The time keep-within keeps backups after; None: every backup is within.

    Relative to the newest backup that is not in the future (restic's
    ``findLatestTimestamp``); with none, restic measures from year 1: all are kept.
    """
    parts = policy.within_parts
    assert parts is not None
    years, months, days, hours = parts
    clock = _aware(now) if now is not None else datetime.now(UTC)
    past = [_aware(backup.time) for backup in ordered if _aware(backup.time) < clock]
    if not past:
        return None
    latest = _in_zone(max(past), zone)
    try:
        moved = _add_date(latest, -years, -months, -days, zone)
        return moved - timedelta(hours=hours)
    except (OverflowError, ValueError):
        return None  # before year 1: every backup is newer


def _add_date(
    moment: datetime, years: int, months: int, days: int, zone: tzinfo | None
) -> datetime:
    """Go's ``Time.AddDate`` in ``moment``'s zone: the wall clock's date moves, overflowing
    days and months carry over (Oct 31 + 1 month = Dec 1), the time of day stays."""
    month_index = moment.month - 1 + months
    year = moment.year + years + month_index // 12
    month = month_index % 12 + 1
    day = date(year, month, 1) + timedelta(days=moment.day - 1 + days)
    wall = datetime.combine(day, moment.timetz().replace(tzinfo=None))
    if zone is not None:
        return wall.replace(tzinfo=zone)
    try:
        return wall.astimezone()  # a naive time is read as local time, DST included
    except (OverflowError, OSError):  # outside what the platform's mktime handles
        return wall.replace(tzinfo=moment.tzinfo)
