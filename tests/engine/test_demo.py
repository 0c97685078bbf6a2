"""``cloudkeep demo`` as a newcomer runs it: a real process, an empty home, no settings."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

STEPS = ("build", "backup", "check-live", "change", "backup-again", "restore", "verify")


@pytest.fixture
def newcomer(tmp_path: Path) -> dict[str, str]:
    """The environment of a fresh machine: an empty home, no CLOUDKEEP_* or XDG_*
    variables, temporary files in a folder of the test's own."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("CLOUDKEEP_", "XDG_", "APPDATA", "LOCALAPPDATA"))
    }
    home = tmp_path / "home"
    home.mkdir()
    temp = tmp_path / "temp"
    temp.mkdir()
    env.update(HOME=str(home), USERPROFILE=str(home), TMPDIR=str(temp), TEMP=str(temp))
    env["TMP"] = str(temp)
    return env


def _demo(env: dict[str, str], *args: str, size: str = "4") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cloudkeep", "demo", "--size-mib", size, *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        cwd=env["TMPDIR"],
    )


def _written(root: Path) -> list[str]:
    return sorted(path.relative_to(root).as_posix() for path in root.rglob("*"))


def test_demo_tells_the_story_and_leaves_nothing_behind(newcomer: dict[str, str]) -> None:
    done = _demo(newcomer)
    assert done.returncode == 0, done.stderr
    titles = (
        "make an app folder",
        "back up while the app writes",
        "check its live database",
        "change 1% of the rows",
        "back up again",
        "restore on a new machine",
        "verify the restore",
    )
    for number, title in enumerate(titles, 1):
        assert f"{number}. {title}: " in done.stdout  # the story, step by step
        assert f"{number}. {title} " in done.stdout  # and its figures in the table
    assert ": consistent (" in done.stdout
    assert "The new machine's copy is verified: 5 databases" in done.stdout
    assert "cloudkeep setup" in done.stdout.splitlines()[-1]
    assert "Traceback" not in done.stderr
    # Nothing in the home (no config, trust record or key), the temporary folder gone.
    assert _written(Path(newcomer["HOME"])) == []
    assert _written(Path(newcomer["TMPDIR"])) == []


def test_demo_json_figures_add_up(newcomer: dict[str, str], tmp_path: Path) -> None:
    # The user's own settings are neither read nor changed (a broken one included).
    config = Path(newcomer["HOME"]) / ".config" / "cloudkeep"
    config.mkdir(parents=True)
    (config / "config.toml").write_text("store = [not toml\n")
    (config / "repository.key").write_text("the user's own key\n")
    folder = tmp_path / "demo"
    done = _demo(newcomer, "--json", "--path", str(folder))
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["verified"] is True and report["problems"] == []
    assert report["kept"] is True and report["folder"] == str(folder)
    steps = {step["name"]: step for step in report["steps"]}
    assert tuple(steps) == STEPS
    assert all(step["seconds"] > 0 for step in report["steps"])

    first, second = steps["backup"], steps["backup-again"]
    assert len(set(report["backups"])) == 2
    assert 0 < first["added_bytes"] <= first["store_bytes"]
    # 1% of the rows changed: the second backup adds a small part of the first.
    assert 0 < second["added_bytes"] < first["added_bytes"] / 5
    assert second["store_bytes"] - first["store_bytes"] >= second["added_bytes"]
    assert first["ratio"] > 1 and second["ratio"] > first["ratio"]  # compression, then dedup
    assert 0 < report["changed_rows"] < report["rows"] * 0.02

    live = report["live"]
    assert live["consistent"] is True and live["transactions"] >= 1
    assert live["events_before"] <= live["events_in_backup"] <= live["events_after"]
    # A new machine fetches everything: the whole folder as of the second backup.
    assert report["fetched_bytes"] == steps["restore"]["folder_bytes"] == second["folder_bytes"]
    assert report["databases"] == 5 and report["files"] > 0

    # The folder is kept, with its own key (0600), trust records and store.
    assert {path.name for path in folder.iterdir()} == {"laptop", "new-machine", "store"}
    key = folder / "laptop" / "config" / "repository.key"
    if os.name == "posix":
        assert key.stat().st_mode & 0o777 == 0o600
    assert key.read_text() != "the user's own key\n"
    assert _written(Path(newcomer["HOME"])) == [
        ".config",
        ".config/cloudkeep",
        ".config/cloudkeep/config.toml",
        ".config/cloudkeep/repository.key",
    ]
    assert (config / "repository.key").read_text() == "the user's own key\n"


def test_demo_refuses_a_folder_in_use_in_one_line(newcomer: dict[str, str], tmp_path: Path) -> None:
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "notes.txt").write_text("mine")
    done = _demo(newcomer, "--path", str(taken))
    assert done.returncode == 1
    assert (
        done.stderr.strip()
        == f"cloudkeep: error: --path {taken} is not empty: give a new or empty folder"
    )
    assert _written(taken) == ["notes.txt"]

    done = _demo(newcomer, size="0")
    assert done.returncode == 1
    assert done.stderr.strip() == "cloudkeep: error: --size-mib must be between 1 and 4096"
