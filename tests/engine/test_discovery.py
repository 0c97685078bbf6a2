"""Finding the data: each system's Pieces OS folders, the one used when no --data is given,
and a clear refusal (nothing made up) when there is none."""

from __future__ import annotations

import json
import ntpath
from pathlib import Path

import pytest

from cloudkeep.errors import DataNotFound
from cloudkeep.platform import is_pieces_data_path, pieces_data_candidates, pieces_data_folders
from cloudkeep.settings import Settings
from tests.engine.conftest import PASSPHRASE, make_snippets_db

TAIL = ("com.pieces.os", "production")


def _paths(system: str, environ: dict[str, str], home: str) -> list[str]:
    return [str(c.path) for c in pieces_data_candidates(system, environ, home)]


def test_macos_looks_in_library() -> None:
    found = pieces_data_candidates("darwin", {}, "/Users/ann")
    assert [str(c.path) for c in found] == ["/Users/ann/Library/com.pieces.os/production"]
    assert found[0].where == "the macOS location"


def test_windows_looks_in_documents_then_local_app_data() -> None:
    home = "C:\\Users\\ann"
    environ = {"LOCALAPPDATA": "D:\\Local"}
    assert _paths("win32", environ, home) == [
        ntpath.join(home, "Documents", *TAIL),
        ntpath.join("D:\\Local", "Mesh Intelligent Technologies, Inc", "Pieces OS", *TAIL),
    ]
    # Without LOCALAPPDATA, its usual place under the home folder.
    assert _paths("win32", {}, home)[1] == ntpath.join(
        home, "AppData", "Local", "Mesh Intelligent Technologies, Inc", "Pieces OS", *TAIL
    )
    assert [c.where for c in pieces_data_candidates("win32", environ, home)] == [
        "the Windows location",
        "the Windows %LOCALAPPDATA% location",
    ]


def test_linux_looks_in_xdg_data_home_then_local_share() -> None:
    default = "/home/ann/.local/share/com.pieces.os/production"
    assert _paths("linux", {}, "/home/ann") == [default]
    assert _paths("linux", {"XDG_DATA_HOME": "/data/xdg"}, "/home/ann") == [
        "/data/xdg/com.pieces.os/production",
        default,
    ]
    # A relative XDG_DATA_HOME is ignored (the XDG specification), one equal to the
    # default is not listed twice; other Unixes look where Linux does.
    assert _paths("linux", {"XDG_DATA_HOME": "rel/x"}, "/home/ann") == [default]
    assert _paths("linux", {"XDG_DATA_HOME": "/home/ann/.local/share/"}, "/home/ann") == [default]
    assert _paths("freebsd14", {}, "/home/ann") == [default]


def test_this_systems_candidates_come_from_its_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("USERPROFILE", str(tmp_path))
    found = pieces_data_folders({})
    assert found and all(c.path.parts[-2:] == TAIL for c in found)
    assert found[0].path.is_relative_to(tmp_path)


@pytest.mark.parametrize(
    "source",
    [
        "/home/ann/.local/share/com.pieces.os/production",
        "/Users/ann/Library/com.pieces.os/production/",
        "C:\\Users\\ann\\Documents\\com.pieces.os\\production",
        "C:\\Users\\ann\\AppData\\Local\\Mesh Intelligent Technologies, Inc\\Pieces OS"
        "\\com.pieces.os\\production",
        "D:/Com.Pieces.OS/Production",
    ],
)
def test_pieces_folders_of_every_system_are_recognised(source: str) -> None:
    assert is_pieces_data_path(source)


@pytest.mark.parametrize(
    "source",
    ["", "/", "/home/ann/app/production", "/x/com.pieces.os", "/x/com.pieces.os/production/db"],
)
def test_other_paths_are_not_pieces_folders(source: str) -> None:
    assert not is_pieces_data_path(source)


def _linux_pieces(home: Path) -> Path:
    return home / ".local" / "share" / "com.pieces.os" / "production"


def test_settings_use_the_first_candidate_that_exists(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    environ = {"CLOUDKEEP_CONFIG_DIR": str(tmp_path / "config")}
    nothing = Settings.resolve(environ=environ)
    assert nothing.data is None and not nothing.data_given
    with pytest.raises(DataNotFound, match="--data"):
        raise nothing.no_data()

    _linux_pieces(home).mkdir(parents=True)
    xdg = tmp_path / "xdg"
    found = Settings.resolve(environ={**environ, "XDG_DATA_HOME": str(xdg)})
    assert found.data == _linux_pieces(home) and found.data_found_at == "the Linux location"
    (xdg / "com.pieces.os" / "production").mkdir(parents=True)
    first = Settings.resolve(environ={**environ, "XDG_DATA_HOME": str(xdg)})
    assert first.data == xdg / "com.pieces.os" / "production"
    assert "XDG_DATA_HOME" in first.data_found_at

    given = Settings.resolve(data=tmp_path / "mine", environ=environ)
    assert given.data == tmp_path / "mine" and given.data_given and not given.data_found_at


def test_a_file_where_the_folder_should_be_is_not_found(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    _linux_pieces(tmp_path).parent.mkdir(parents=True)
    _linux_pieces(tmp_path).write_text("not a folder")
    assert Settings.resolve(environ={"CLOUDKEEP_CONFIG_DIR": str(tmp_path / "c")}).data is None


def test_backup_without_data_lists_where_it_looked_and_makes_nothing(
    cli, isolated_dirs: Path, tmp_path: Path
) -> None:
    home = isolated_dirs
    before = sorted(p.relative_to(home) for p in home.rglob("*")) if home.exists() else []
    env = {"CLOUDKEEP_PASSPHRASE": PASSPHRASE, "XDG_DATA_HOME": str(tmp_path / "xdg")}
    result = cli("backup", env=env)
    assert result.code == 1 and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr
    line = lines[0]
    assert str(_linux_pieces(home)) in line and "the Linux location" in line
    assert str(tmp_path / "xdg" / "com.pieces.os" / "production") in line
    assert "--data" in line and "cloudkeep setup" in line
    # No data folder, no store, no key: nothing was made up.
    after = sorted(p.relative_to(home) for p in home.rglob("*")) if home.exists() else []
    assert after == before
    assert not (tmp_path / "xdg").exists()


def test_backup_finds_the_pieces_folder_and_says_where(
    cli, isolated_dirs: Path, tmp_path: Path
) -> None:
    pieces = _linux_pieces(isolated_dirs)
    make_snippets_db(pieces / "pieces.db", 50)
    store = (tmp_path / "store").as_uri()
    env = {"CLOUDKEEP_PASSPHRASE": PASSPHRASE, "CLOUDKEEP_STORE": store}
    result = cli("backup", env=env)
    assert result.code == 0, result.stderr
    assert (
        f"backing up the Pieces OS data folder {pieces} (found at the Linux location)"
        in result.stderr
    )
    assert f"of {pieces} (" in result.stdout
    listed = cli("list", env=env)
    assert listed.code == 0 and str(pieces) in listed.stdout


def test_commands_that_need_no_data_work_without_a_data_folder(
    cli, data_dir: Path, tmp_path: Path
) -> None:
    store = (tmp_path / "store").as_uri()
    env = {"CLOUDKEEP_PASSPHRASE": PASSPHRASE, "CLOUDKEEP_STORE": store}
    made = cli("--data", str(data_dir), "backup", "--json", env=env)
    assert made.code == 0, made.stderr
    backup_id = json.loads(made.stdout)["id"]
    for args in (["list"], ["check"], ["prune", "--dry-run"], ["repair-index"]):
        result = cli(*args, env=env)
        assert result.code == 0, (args, result.stderr)
    target = tmp_path / "copy"
    restored = cli("restore", backup_id, "--target", str(target), env=env)
    assert restored.code == 0, restored.stderr
    assert f"into {target}" in restored.stdout
    assert (target / "snippets.db").exists()
    deleted = cli("delete", backup_id[:-3], env=env)  # a unique beginning of the id
    assert deleted.code == 0 and f"deleted backup {backup_id}" in deleted.stdout
