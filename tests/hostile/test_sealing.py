"""Issue 11, items 4 and 9 (config values): sealed files are bound to their names, and
the config is bounded and authenticated.

The attacker is a keyless bucket writer: they copy an old manifest or index file
over a newer name (a rollback or swap), or edit the plaintext config.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.hostile.conftest import (
    CliResult,
    HostileStore,
    assert_clean_failure,
    fresh_device_env,
    tree_state,
)


def _backup(cli, store: str, data: Path, content: bytes) -> str:  # type: ignore[no-untyped-def]
    data.mkdir(exist_ok=True)
    (data / "ledger.txt").write_bytes(content)
    result = cli("--store", store, "--data", str(data), "backup", "--json")
    assert result.code == 0, result.stderr
    return str(json.loads(result.stdout)["id"])


def test_manifest_copied_over_a_newer_one_is_refused(
    hostile_store: HostileStore, cli, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    data = tmp_path / "data"
    old = _backup(cli, hostile_store.url, data, b"balance: 10\n")
    new = _backup(cli, hostile_store.url, data, b"balance: 99999\n")
    raw = hostile_store.raw
    raw.put(f"snapshots/{new}", raw.get(f"snapshots/{old}"))

    other = fresh_device_env(tmp_path, "other")
    target = tmp_path / "restored"
    result: CliResult = cli(
        "--store", hostile_store.url, "restore", new, "--target", str(target), env=other
    )
    assert_clean_failure(result)
    assert f"snapshots/{new} is damaged" in result.stderr
    assert not (target / "ledger.txt").exists()  # the old content never came back as new

    checked = cli("--store", hostile_store.url, "check", env=other)
    assert checked.code == 2, checked.stdout + checked.stderr
    assert f"damaged backup: {new}" in checked.stdout
    assert f"damaged backup: {old}" not in checked.stdout
    # The device that made the backups checks the store, not its cache: same verdict.
    assert f"damaged backup: {new}" in cli("--store", hostile_store.url, "check").stdout


def test_index_file_copied_over_another_is_reported(
    hostile_store: HostileStore, cli, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    data = tmp_path / "data"
    _backup(cli, hostile_store.url, data, b"first\n")
    _backup(cli, hostile_store.url, data, b"second, different\n")
    first, second = hostile_store.raw.names("index/")
    hostile_store.raw.put(second, hostile_store.raw.get(first))

    checked = cli("--store", hostile_store.url, "check", env=fresh_device_env(tmp_path, "other"))
    assert checked.code == 2, checked.stdout + checked.stderr
    assert f"{second} is damaged" in checked.stderr


@pytest.mark.parametrize(
    ("field", "value", "complaint"),
    [
        (
            "pack_size",
            2**40,
            "pack_size must be an integer from 65536 to 67108864, not 1099511627776",
        ),
        (
            "pack_size",
            "4194304",
            "pack_size must be an integer from 65536 to 67108864, not '4194304'",
        ),
        ("zstd_level", 99, "zstd_level must be an integer from -7 to 19, not 99"),
        (
            "chunker",
            {"sqlite_chunk_bytes": 8192, "cdc_min": 1, "cdc_avg": 2**40, "cdc_max": 2**50},
            "chunker cdc_min must be an integer from 65536 to 1048576, not 1",
        ),
        (
            "chunker",
            {"sqlite_chunk_bytes": 3000, "cdc_min": 262144, "cdc_avg": 1048576, "cdc_max": 4194304},
            "not a power of two",
        ),
        ("id", "../../../../home/u", "'id' is not 32 hex digits"),
    ],
)
def test_absurd_config_values_are_refused_before_use(
    hostile_store: HostileStore,
    cli,  # type: ignore[no-untyped-def]
    tmp_path: Path,
    field: str,
    value: object,
    complaint: str,
) -> None:
    data = tmp_path / "data"
    _backup(cli, hostile_store.url, data, b"payload\n")
    config = json.loads(hostile_store.raw.get("config"))
    config[field] = value
    hostile_store.raw.put("config", json.dumps(config).encode())
    before = hostile_store.raw.names()
    home = tree_state(tmp_path, skip=(tmp_path / "home" / "cache",))

    for command in (["list"], ["backup"], ["check"]):
        result = cli("--store", hostile_store.url, "--data", str(data), *command, timeout=60)
        assert_clean_failure(result)
        assert result.code == 2
        assert complaint in result.stderr, result.stderr
    assert hostile_store.raw.names() == before  # nothing written under a bad config
    assert tree_state(tmp_path, skip=(tmp_path / "home" / "cache",)) == home


def test_config_edited_within_bounds_fails_authentication(
    hostile_store: HostileStore, cli, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """A plausible value (bigger packs, slower zstd) is still not the key holder's."""
    data = tmp_path / "data"
    _backup(cli, hostile_store.url, data, b"payload\n")
    config = json.loads(hostile_store.raw.get("config"))
    config["pack_size"] = 64 * 1024 * 1024
    config["zstd_level"] = 19
    hostile_store.raw.put("config", json.dumps(config).encode())
    before = hostile_store.raw.names()

    for env in ({}, fresh_device_env(tmp_path, "other")):
        result = cli("--store", hostile_store.url, "--data", str(data), "backup", env=env)
        assert_clean_failure(result)
        assert "config" in result.stderr and "fails authentication" in result.stderr
    assert hostile_store.raw.names() == before
