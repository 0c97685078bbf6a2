"""Issue 11, item 5: key files are bounded, and a device keeps the repository it joined.

The attacker is a keyless bucket writer. They plant key files with absurd Argon2
costs (to hang or exhaust the victim), key files wrapping their own master key
under a guessed passphrase (if the guess is right, the victim used to seal new
backups under the attacker's key: plaintext for the attacker, and a confirmed
guess), or replace the whole repository identity (config and key).
"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from cloudkeep.repository.crypto import DecryptionFailed, MasterKey, Sealer
from cloudkeep.repository.keys import KEY_AAD, _derive
from cloudkeep.repository.packs import PackFormatError, read_header
from cloudkeep.repository.repository import canonical_config, file_aad
from tests.hostile.conftest import PASSPHRASE, HostileStore, assert_clean_failure, fresh_device_env


def _key_file(master: MasterKey, passphrase: str, **costs: int) -> bytes:
    """A key file as an attacker writes it: any Argon2 costs they like."""
    params = {"time_cost": 2, "memory_cost_kib": 64 * 1024, "parallelism": 2, **costs}
    salt, nonce = os.urandom(16), os.urandom(12)
    sealed = b""
    if (
        params["memory_cost_kib"] <= 64 * 1024
        and max(params["time_cost"], params["parallelism"]) <= 2
    ):
        kek = _derive(passphrase, salt, params)
        sealed = AESGCM(kek).encrypt(nonce, json.dumps(master.to_dict()).encode(), KEY_AAD)
    return json.dumps(
        {
            "version": 1,
            "kdf": "argon2id",
            **params,
            "salt": base64.b64encode(salt).decode(),
            "nonce": base64.b64encode(nonce).decode(),
            "data": base64.b64encode(sealed or os.urandom(80)).decode(),
        }
    ).encode()


def _backup(cli, store: str, data: Path, env: dict[str, str] | None = None) -> str:  # type: ignore[no-untyped-def]
    data.mkdir(exist_ok=True)
    (data / "diary.txt").write_bytes(os.urandom(16).hex().encode())
    result = cli("--store", store, "--data", str(data), "backup", "--json", env=env or {})
    assert result.code == 0, result.stderr
    return str(json.loads(result.stdout)["id"])


def _sealed_under(key: MasterKey, hostile_store: HostileStore) -> list[str]:
    """Every object in the store that opens under ``key`` (files, and packs' headers)."""
    sealer = Sealer(key)
    found = []
    for name in hostile_store.raw.names():
        kind, _, rest = name.partition("/")
        content = hostile_store.raw.get(name)
        try:
            if kind in ("snapshots", "index", "locks"):
                sealer.open(content, file_aad(kind, rest))
            elif kind == "data":
                read_header(content, sealer)
            else:
                continue
        except (DecryptionFailed, PackFormatError):
            continue
        found.append(name)
    return found


def test_key_files_with_absurd_costs_are_skipped_without_deriving(
    hostile_store: HostileStore, cli, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    data = tmp_path / "data"
    backup_id = _backup(cli, hostile_store.url, data)
    attacker = MasterKey.generate()
    planted = {
        # Names that sort before any real key file, so a fresh device meets them first.
        "keys/" + "0" * 32: _key_file(attacker, PASSPHRASE, memory_cost_kib=2**32 - 1),
        "keys/" + "0" * 31 + "1": _key_file(attacker, PASSPHRASE, time_cost=2**31),
        "keys/" + "0" * 31 + "2": _key_file(attacker, PASSPHRASE, parallelism=2**24),
        # Each cost within its bound, the product 80x the default work.
        "keys/" + "0" * 31 + "3": _key_file(
            attacker, PASSPHRASE, memory_cost_kib=1024 * 1024, time_cost=10
        ),
        "keys/" + "0" * 31 + "4": b"{" + b" " * (8 * 1024 * 1024) + b"}",
        "keys/" + "0" * 31 + "5": b'{"kdf": "argon2id", "salt": 7}',
    }
    for name, content in planted.items():
        hostile_store.raw.put(name, content)

    for env in ({}, fresh_device_env(tmp_path, "other")):
        result = cli("--store", hostile_store.url, "list", "--json", env=env, timeout=60)
        assert result.code == 0, result.stderr
        assert [b["id"] for b in json.loads(result.stdout)["iterable"]] == [backup_id]


def test_cheap_key_file_is_no_guessing_oracle(
    hostile_store: HostileStore, cli, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """A cheaper Argon2 than the defaults would let the victim test guesses cheaply."""
    data = tmp_path / "data"
    _backup(cli, hostile_store.url, data)
    attacker = MasterKey.generate()
    hostile_store.raw.put(
        "keys/" + "0" * 32, _key_file(attacker, PASSPHRASE, time_cost=1, memory_cost_kib=16)
    )
    before = set(hostile_store.raw.names())
    _backup(cli, hostile_store.url, data, env=fresh_device_env(tmp_path, "other"))
    assert set(hostile_store.raw.names()) > before
    assert _sealed_under(attacker, hostile_store) == []


@pytest.mark.parametrize("device", ["joined", "fresh"])
def test_key_file_that_opens_with_the_passphrase_but_holds_another_key_is_never_used(
    hostile_store: HostileStore, cli, tmp_path: Path, device: str
) -> None:  # type: ignore[no-untyped-def]
    """The attacker guessed the passphrase right: the victim still seals nothing for them."""
    data = tmp_path / "data"
    _backup(cli, hostile_store.url, data)
    attacker = MasterKey.generate()
    hostile_store.raw.put("keys/" + "0" * 32, _key_file(attacker, PASSPHRASE))
    config_before = hostile_store.raw.get("config")

    env = {} if device == "joined" else fresh_device_env(tmp_path, "other")
    newest = _backup(cli, hostile_store.url, data, env=env)
    listed = cli("--store", hostile_store.url, "list", "--json", env=env)
    assert listed.code == 0, listed.stderr

    assert _sealed_under(attacker, hostile_store) == []
    manifest = hostile_store.raw.get(f"snapshots/{newest}")
    with pytest.raises(DecryptionFailed):
        Sealer(attacker).open(manifest, file_aad("snapshots", newest))
    assert hostile_store.raw.get("config") == config_before


def _replace_repository(hostile_store: HostileStore, *, keep_id: bool) -> MasterKey:
    """The attacker's own (empty) repository at the victim's store, under a guessed passphrase."""
    attacker = MasterKey.generate()
    config = json.loads(hostile_store.raw.get("config"))
    if not keep_id:
        config["id"] = os.urandom(16).hex()
    config["key"] = attacker.fingerprint()
    config["mac"] = attacker.config_mac(canonical_config(config))
    for name in hostile_store.raw.names():
        hostile_store.raw.delete(name)
    hostile_store.raw.put("keys/" + "a" * 32, _key_file(attacker, PASSPHRASE))
    hostile_store.raw.put("config", json.dumps(config).encode())
    return attacker


@pytest.mark.parametrize(
    ("keep_id", "changed"), [(False, "repository id"), (True, "key fingerprint")]
)
def test_replaced_repository_is_refused_by_a_device_that_joined(
    hostile_store: HostileStore, cli, tmp_path: Path, keep_id: bool, changed: str
) -> None:  # type: ignore[no-untyped-def]
    data = tmp_path / "data"
    _backup(cli, hostile_store.url, data)
    attacker = _replace_repository(hostile_store, keep_id=keep_id)
    before = hostile_store.raw.names()

    for command in (["backup"], ["list"]):
        result = cli("--store", hostile_store.url, "--data", str(data), *command)
        assert_clean_failure(result, codes=(1,))
        assert "is not the one this device joined" in result.stderr
        assert changed in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
    assert hostile_store.raw.names() == before
    assert _sealed_under(attacker, hostile_store) == []

    # The message names the record to delete to accept a deliberate re-creation.
    record = Path(result.stderr.split("delete ", 1)[1].split(" and run again", 1)[0])
    assert record.is_file() and record.stat().st_mode & 0o077 == 0
    record.unlink()
    _backup(cli, hostile_store.url, data)
    assert json.loads(record.read_text())["key"] == attacker.fingerprint()
