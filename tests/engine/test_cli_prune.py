"""``cloudkeep prune``: --dry-run prints the plan and changes nothing; ``reclaim`` still works."""

from __future__ import annotations

import json
import os
from pathlib import Path


def _files(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*") if p.is_file()}


def test_prune_dry_run_then_prune(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    data, store = tmp_path / "data", (tmp_path / "store").as_uri()
    data.mkdir()
    args = ["--data", str(data), "--store", store]
    env = {"CLOUDKEEP_PASSPHRASE": "prune passphrase", "CLOUDKEEP_PRUNE_MARGIN": "0"}
    (data / "old.bin").write_bytes(os.urandom(3_000_000))
    first = json.loads(cli(*args, "backup", "--json", env=env).stdout)["id"]
    (data / "old.bin").unlink()
    (data / "new.bin").write_bytes(os.urandom(1_000_000))
    assert cli(*args, "backup", env=env).code == 0
    removed = cli(*args, "delete", first, env=env)
    assert removed.code == 0 and "freed" in removed.stderr, removed.stderr
    packs = tmp_path / "store" / "data"

    (data / "new.bin").unlink()
    (data / "third.bin").write_bytes(os.urandom(500_000))
    second = json.loads(cli(*args, "list", "--json", env=env).stdout)["iterable"][0]["id"]
    assert cli(*args, "backup", env=env).code == 0
    (tmp_path / "store" / "snapshots" / second).unlink()  # as if delete died after this
    before = _files(packs)

    dry = cli(*args, "prune", "--dry-run", env=env)
    assert dry.code == 0, dry.stderr
    assert dry.stdout.startswith("would free ") and "delete 1 packs" in dry.stdout
    planned = json.loads(cli(*args, "prune", "--dry-run", "--json", env=env).stdout)
    assert planned["dry_run"] and planned["plan"]["packs_deleted"] == 1
    assert _files(packs) == before

    pruned = cli(*args, "reclaim", "--json", env=env)  # the hidden former name
    assert pruned.code == 0, pruned.stderr
    done = json.loads(pruned.stdout)
    assert done["bytes_freed"] == planned["plan"]["bytes_freed"] > 1_000_000
    assert done["packs_deleted"] == 1 and done["stopped"] is None
    assert len(_files(packs)) == len(before) - 1
    commands = [line.split()[1] for line in cli("--help").stdout.splitlines() if "│ " in line]
    assert "prune" in commands and "reclaim" not in commands
    checked = cli(*args, "check", "--read-data", env=env)
    assert checked.code == 0, checked.stdout + checked.stderr
