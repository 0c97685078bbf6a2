"""Issue 11, item 5 (review): trust on first use keeps holding after creation.

The attacker is a keyless bucket writer who replaces the config with their own
(their master key's fingerprint, a valid MAC under it) and plants a key file
wrapping that key under a guessed passphrase. A device must never join it
unless it has nothing to compare with, and a store spelled two ways is one store.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from cloudkeep.errors import RepositoryChanged, RepositoryNotFound, WrongPassphrase
from cloudkeep.repository.crypto import MasterKey
from cloudkeep.repository.keys import unwrap_key
from cloudkeep.repository.repository import canonical_config
from cloudkeep.settings import Settings
from cloudkeep.workspace import Workspace
from tests.hostile.conftest import PASSPHRASE, HostileStore
from tests.hostile.test_keys import _key_file, _sealed_under


def _device(store: str, root: Path) -> Workspace:
    """One device (own config and cache folders) with a data folder to back up."""
    data = root / "data"
    data.mkdir(parents=True, exist_ok=True)
    (data / "notes.txt").write_bytes(os.urandom(16).hex().encode())
    settings = Settings.resolve(data=data, store=store, device_name=root.name)
    return Workspace(
        Settings(
            **{
                **settings.__dict__,
                "passphrase": PASSPHRASE,
                "config_dir": root / "config",
                "cache_dir": root / "cache",
            }
        )
    )


def _plant_repository(hostile_store: HostileStore, guess: str) -> MasterKey:
    """The attacker's (empty) repository over the victim's: their config, and a key file
    under ``guess`` beside the victim's key files."""
    attacker = MasterKey.generate()
    config = json.loads(hostile_store.raw.get("config"))
    for name in hostile_store.raw.names():
        if not name.startswith("keys/"):
            hostile_store.raw.delete(name)
    config["id"] = os.urandom(16).hex()
    config["key"] = attacker.fingerprint()
    config["mac"] = attacker.config_mac(canonical_config(config))
    # Sorts before the victim's key file, so it is tried first.
    hostile_store.raw.put("keys/" + "0" * 32, _key_file(attacker, guess))
    hostile_store.raw.put("config", json.dumps(config).encode())
    return attacker


def test_a_long_running_creator_never_joins_a_config_replaced_later(
    hostile_store: HostileStore, tmp_path: Path
) -> None:
    """The server's workspace created the repository with its first backup; days
    later the attacker replaces the config, having guessed the passphrase."""
    victim = _device(hostile_store.url, tmp_path / "victim")
    victim.backup()
    attacker = _plant_repository(hostile_store, PASSPHRASE)

    with pytest.raises(RepositoryChanged, match="another key"):
        victim.backup()
    assert _sealed_under(attacker, hostile_store) == []
    with pytest.raises(RepositoryChanged, match="is not the one this device joined"):
        _device(hostile_store.url, tmp_path / "victim").list()


def test_a_failed_adoption_keeps_the_trust_record(
    hostile_store: HostileStore, tmp_path: Path
) -> None:
    """The creator's first backup sees a replaced config whose key its passphrase does
    not open: it fails, and the device still refuses that config afterwards (a wrong
    guess must not turn the device into one that trusts the next config it meets)."""
    victim = _device(hostile_store.url, tmp_path / "victim")
    victim.init()
    _plant_repository(hostile_store, "a wrong guess")

    with pytest.raises(WrongPassphrase):
        victim.backup()
    attacker = _plant_repository(hostile_store, PASSPHRASE)
    with pytest.raises(RepositoryChanged, match="is not the one this device joined"):
        _device(hostile_store.url, tmp_path / "victim").backup()
    assert _sealed_under(attacker, hostile_store) == []


def test_two_spellings_of_one_store_share_the_trust_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    store = tmp_path / "store"
    _device(store.as_uri(), tmp_path / "victim").backup()
    attacker = MasterKey.generate()
    config = json.loads((store / "config").read_bytes())
    config["id"] = os.urandom(16).hex()
    config["key"] = attacker.fingerprint()
    config["mac"] = attacker.config_mac(canonical_config(config))
    (store / "keys" / ("0" * 32)).write_bytes(_key_file(attacker, PASSPHRASE))
    (store / "config").write_bytes(json.dumps(config).encode())

    for spelling in ("store", "./store/", str(store), f"{store.as_uri()}/"):
        with pytest.raises(RepositoryChanged, match="is not the one this device joined"):
            _device(spelling, tmp_path / "victim").list()


def test_one_relative_store_path_in_two_folders_is_two_stores(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    device = tmp_path / "device"
    for project in ("one", "two"):
        (tmp_path / project).mkdir()
        monkeypatch.chdir(tmp_path / project)
        _device("backups", device).backup()
    for project in ("one", "two"):
        monkeypatch.chdir(tmp_path / project)
        assert len(_device("backups", device).list()) == 1


def test_a_key_file_cheaper_than_the_defaults_is_never_opened() -> None:
    """The lower Argon2 bound itself (the fingerprint check alone also keeps a cheap
    planted file from being used, so the end-to-end test passes without the bound)."""
    attacker = MasterKey.generate()
    cheap = _key_file(attacker, PASSPHRASE, time_cost=1, memory_cost_kib=16)
    assert unwrap_key(cheap, PASSPHRASE) is None
    assert unwrap_key(_key_file(attacker, PASSPHRASE), PASSPHRASE) == attacker


def test_a_joined_device_never_starts_over_on_a_store_whose_config_vanished(
    hostile_store: HostileStore, tmp_path: Path
) -> None:
    """A keyless writer deletes the config: the next backup must not silently start a
    new repository (hiding every earlier backup) nor replace the trust record."""
    victim = _device(hostile_store.url, tmp_path / "victim")
    victim.backup()
    hostile_store.raw.delete("config")
    before = hostile_store.raw.names()

    device = _device(hostile_store.url, tmp_path / "victim")
    with pytest.raises(RepositoryNotFound, match="is gone") as refused:
        device.backup()
    record = Path(re.search(r"delete (\S+trusted-stores\S+\.json)", str(refused.value))[1])
    assert record.is_file()
    assert hostile_store.raw.names() == before
    # Deleting the record, as the message says, is the deliberate way to start over.
    record.unlink()
    device.backup()
    assert "config" in hostile_store.raw.names()
