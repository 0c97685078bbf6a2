"""``forget``, ``backup --time`` and ``delete`` of several ids, through the real CLI and
the operations on a real store: what is kept, that a dry run changes nothing, that
one run prunes once, and that races and reruns never delete what was not decided."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from cloudkeep.backups.forget import execute_forget, plan_forget
from cloudkeep.config import Retention
from cloudkeep.operations import Delete, Forget, run
from cloudkeep.storage.base import Payload
from cloudkeep.storage.url import open_store
from cloudkeep.workspace import Workspace
from tests.conftest import PassThroughStorage
from tests.engine.conftest import PASSPHRASE, workspace

ENV = {"CLOUDKEEP_PASSPHRASE": PASSPHRASE, "CLOUDKEEP_PRUNE_MARGIN": "0"}
START = datetime(2025, 1, 6, 9, 0, tzinfo=UTC)


class LockCounting(PassThroughStorage):
    """Counts the repository locks written: forget takes none, each prune one."""

    def __init__(self, inner: PassThroughStorage | object) -> None:
        super().__init__(inner)  # type: ignore[arg-type]
        self.locks: set[str] = set()

    def put(self, name: str, data: Payload, *, create_only: bool = False) -> None:
        if name.startswith("locks/"):
            self.locks.add(name)
        super().put(name, data, create_only=create_only)


def _files(root: Path) -> dict[str, int]:
    return {
        path.relative_to(root).as_posix(): path.stat().st_size
        for path in root.rglob("*")
        if path.is_file()
    }


def _counting_workspace(
    data: Path, store: str, device: str = "laptop"
) -> tuple[Workspace, LockCounting]:
    ws = workspace(data, store, device)
    counting = LockCounting(open_store(store))
    ws._storage = counting  # the real store, observed
    return ws, counting


def _back_up_days(ws: Workspace, data: Path, days: int) -> list[str]:
    """One backup a day of fresh content (each adds its own pack), oldest first."""
    ids = []
    for day in range(days):
        (data / "file.bin").write_bytes(os.urandom(200_000))
        ids.append(ws.backup(time=START + timedelta(days=day)).id)
    return ids


@pytest.fixture
def data(tmp_path: Path) -> Path:
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "notes.txt").write_text("hello\n")
    return folder


def test_backup_time_through_the_cli(cli, tmp_path: Path, data: Path) -> None:  # type: ignore[no-untyped-def]
    args = ["--data", str(data), "--store", (tmp_path / "store").as_uri()]
    berlin = {**ENV, "TZ": "Europe/Berlin"}
    first = cli(*args, "backup", "--json", "--time", "2025-01-02 15:04:05", env=berlin)
    assert first.code == 0, first.stderr
    again = cli(*args, "backup", "--json", "--time", "2025-01-02 15:04:05", env=berlin)
    iso = cli(*args, "backup", "--json", "--time", "2024-07-01T08:00:00-04:00", env=berlin)
    assert again.code == 0 and iso.code == 0, again.stderr + iso.stderr
    listed = json.loads(cli(*args, "list", "--json", env=ENV).stdout)["iterable"]
    created = {item["id"]: item["created"]["value"] for item in listed}
    one, two, three = (json.loads(r.stdout)["id"] for r in (first, again, iso))
    stamp = int(datetime(2025, 1, 2, 14, 4, 5, tzinfo=UTC).timestamp()) * 1_000_000
    assert one == f"{one.split('_')[0]}_{stamp}"  # 15:04:05 in Berlin is 14:04:05 UTC
    assert created[one].startswith("2025-01-02T14:04:05")
    assert two != one and int(two.split("_")[1]) > stamp  # same time: still unique ids
    assert created[three].startswith("2024-07-01T12:00:00")
    for bad, says in (("3025-01-01 00:00:00", "not between 1970"), ("yesterday", "not a time")):
        refused = cli(*args, "backup", "--time", bad, env=ENV)
        assert refused.code == 1 and says in refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1 and "Traceback" not in refused.stderr


def test_forget_dry_run_changes_nothing_then_forget_prunes(  # type: ignore[no-untyped-def]
    cli, tmp_path: Path, data: Path
) -> None:
    store = tmp_path / "store"
    args = ["--data", str(data), "--store", store.as_uri()]
    for day in range(5):
        (data / "file.bin").write_bytes(os.urandom(100_000))
        moment = (START + timedelta(days=day)).strftime("%Y-%m-%dT%H:%M:%S+00:00")
        assert cli(*args, "backup", "--time", moment, env=ENV).code == 0
    before = _files(store)
    dry = cli(*args, "forget", "--keep-last", "2", "--dry-run", "--json", env=ENV)
    assert dry.code == 0, dry.stderr
    plan = json.loads(dry.stdout)
    assert plan["dry_run"] and plan["deleted"] == [] and plan["pruned"] is None
    (group,) = plan["groups"]
    assert group["source"] == str(data) and len(group["keep"]) == 2 and len(group["remove"]) == 3
    assert [r["matches"] for r in group["reasons"]] == [["last backup"], ["last backup"]]
    assert _files(store) == before
    text = cli(*args, "forget", "--keep-last", "2", "--dry-run", "--prune", env=ENV)
    assert "would remove 3 backups" in text.stdout and _files(store) == before
    assert "then the prune would free " in text.stdout
    would = json.loads(
        cli(*args, "forget", "--keep-last", "2", "--dry-run", "--prune", "--json", env=ENV).stdout
    )["pruned"]
    assert would["dry_run"] and would["plan"]["bytes_freed"] > 250_000
    assert _files(store) == before

    done = cli(*args, "forget", "--keep-last", "2", "--prune", "--json", env=ENV)
    assert done.code == 0, done.stderr
    report = json.loads(done.stdout)
    assert len(report["deleted"]) == 3 and report["pruned"]["stopped"] is None
    assert report["pruned"]["bytes_freed"] == would["plan"]["bytes_freed"]
    listed = json.loads(cli(*args, "list", "--json", env=ENV).stdout)["iterable"]
    assert sorted(item["id"] for item in listed) == sorted(b["id"] for b in group["keep"])
    assert cli(*args, "check", "--read-data", env=ENV).code == 0


def test_only_a_dry_run_prune_may_ignore_stored_backups(tmp_path: Path, data: Path) -> None:
    from cloudkeep.backups.prune import prune

    ws = workspace(data, (tmp_path / "store").as_uri())
    backup_id = ws.backup().id
    with pytest.raises(ValueError):
        prune(ws.repository(), without=frozenset({backup_id}))
    assert prune(ws.repository(), dry_run=True, without=frozenset({backup_id})).plan.delete


def test_forget_prunes_once_after_all_deletions(
    tmp_path: Path, data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CLOUDKEEP_PRUNE_MARGIN", "0")
    store = (tmp_path / "store").as_uri()
    ids = _back_up_days(workspace(data, store), data, 5)
    ws, counting = _counting_workspace(data, store)
    result = run(Forget(Retention(last=2), prune=True), ws)
    assert result.deleted == tuple(ids[:3]) and result.unlisted == tuple(ids[:3])
    assert result.pruned is not None and result.pruned.packs_deleted == 3
    assert len(counting.locks) == 1  # one prune for three deletions
    (group,) = result.groups
    assert [kept.backup.id for kept in group.keep] == ids[:2:-1]


def test_delete_of_several_ids_prunes_once(  # type: ignore[no-untyped-def]
    cli, tmp_path: Path, data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CLOUDKEEP_PRUNE_MARGIN", "0")
    store = (tmp_path / "store").as_uri()
    ids = _back_up_days(workspace(data, store), data, 5)
    ws, counting = _counting_workspace(data, store)
    result = run(Delete(ids[0], (ids[1],)), ws)
    assert result.unlisted == (ids[0], ids[1]) and result.pruned is not None
    assert result.pruned.packs_deleted == 2 and len(counting.locks) == 1

    args = ["--data", str(data), "--store", store]
    unknown = cli(*args, "delete", ids[2], "9.9.9_1", env=ENV)
    assert unknown.code == 1 and "no backup 9.9.9_1" in unknown.stderr
    assert (tmp_path / "store" / "snapshots" / ids[2]).exists()  # one unknown: none deleted
    both = cli(*args, "delete", ids[2], ids[3], env=ENV)
    assert both.code == 0, both.stderr
    assert both.stdout.splitlines() == [f"deleted backup {ids[2]}", f"deleted backup {ids[3]}"]
    assert both.stderr.count("freed") == 1
    assert sorted(os.listdir(tmp_path / "store" / "snapshots")) == [ids[4]]


def test_configured_policy_and_refusal(cli, tmp_path: Path, data: Path) -> None:  # type: ignore[no-untyped-def]
    args = ["--data", str(data), "--store", (tmp_path / "store").as_uri()]
    config = tmp_path / "config"
    env = {**ENV, "CLOUDKEEP_CONFIG_DIR": str(config)}
    for day in range(3):
        moment = (START + timedelta(days=day)).isoformat()
        assert cli(*args, "backup", "--time", moment, env=env).code == 0
    refused = cli(*args, "forget", env=env)
    assert refused.code == 1 and "no retention policy" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    config.mkdir(exist_ok=True)
    (config / "config.toml").write_text('[retention]\nkeep_daily = "unlimited"\nkeep_last = 1\n')
    shown = cli(*args, "forget", "--dry-run", env=env)
    assert shown.code == 0, shown.stderr
    assert "applying policy: keep-last 1, keep-daily unlimited" in shown.stdout
    assert "oldest daily backup" not in shown.stdout and "would remove 0 backups" in shown.stdout
    flags = cli(*args, "forget", "--keep-within", "1d", "--dry-run", "--json", env=env)
    (group,) = json.loads(flags.stdout)["groups"]
    # The flags replace the configured policy; within 1d of Jan 8 09:00 is strictly after
    # Jan 7 09:00: only the newest.
    assert len(group["keep"]) == 1 and len(group["remove"]) == 2
    for bad in (["--keep-last", "-1"], ["--keep-within", "3w"], ["--keep-daily", "x"]):
        wrong = cli(*args, "forget", *bad, env=env)
        assert wrong.code == 1 and len(wrong.stderr.strip().splitlines()) == 1, wrong.stderr


def test_device_filter_and_groups(tmp_path: Path, data: Path) -> None:
    store = (tmp_path / "store").as_uri()
    other = tmp_path / "other"
    other.mkdir()
    (other / "x.txt").write_text("x")
    laptop, desktop = workspace(data, store, "laptop"), workspace(other, store, "desktop")
    for day in range(3):
        laptop.backup(time=START + timedelta(days=day))
        desktop.backup(time=START + timedelta(days=day, hours=1))
    result = run(Forget(Retention(last=1), device="desktop"), laptop)
    assert [(g.device, g.source) for g in result.groups] == [("desktop", str(other))]
    assert len(result.deleted) == 2
    remaining = {info.device_name for info in laptop.list()}
    assert remaining == {"laptop", "desktop"} and len(laptop.list()) == 4


def test_a_backup_made_meanwhile_is_never_deleted_and_a_rerun_finishes(
    tmp_path: Path, data: Path
) -> None:
    store = (tmp_path / "store").as_uri()
    ws = workspace(data, store)
    _back_up_days(ws, data, 4)
    repo = ws.repository()
    plan = plan_forget(repo, Retention(daily=2))
    assert len(plan.doomed) == 2
    # Published after the plan, with a time inside the removed range: not decided on.
    late = ws.backup(time=START + timedelta(hours=5)).id
    # A crash after the first deletion...
    repo.delete_backup(plan.doomed[0])
    execute_forget(repo, plan)  # ...and the rest (the first is already gone: no error)
    names = set(repo.list_backups())
    assert late in names and not names & set(plan.doomed)
    rerun = run(Forget(Retention(daily=2)), ws)
    kept_before = {k.backup.id for g in plan.groups for k in g.keep}
    assert {k.backup.id for g in rerun.groups for k in g.keep} == kept_before
    assert rerun.deleted == (late,)  # the next run decides on it like on any other
