"""Key files: the master key wrapped by a key derived from the passphrase.

Argon2id (memory-hard) makes offline guessing of the passphrase expensive for
anyone who obtains the store. Several key files may exist (one per passphrase,
or left by a device that lost a race to create the repository); a key file is
used only when it opens with the passphrase AND holds the master key whose
fingerprint the authenticated config names.

Key files are store input, so they are bounded before any work: at most
``MAX_KEY_FILE_BYTES``, Argon2 parameters between the defaults (a planted cheap
file would be a cheaper guessing oracle than the real one) and a ceiling (a
planted file must not hang or exhaust memory), and at most ``MAX_KEY_FILES_TRIED``
derivations per opening.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import socket
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from argon2.exceptions import HashingError
from argon2.low_level import Type, hash_secret_raw

from cloudkeep.repository.untrusted import parse_json

# cryptography and our crypto module are imported where used, while the key is derived.
if TYPE_CHECKING:
    from cloudkeep.repository.crypto import MasterKey

KEY_AAD = b"cloudkeep-key-v1"
# More memory than OWASP's Argon2id recommendations: memory is what makes guessing costly.
DEFAULT_KDF = {"time_cost": 2, "memory_cost_kib": 64 * 1024, "parallelism": 2}
# Accepted from a key file: never cheaper than the defaults, never more than
# 1 GiB, 10 passes, 8 lanes, and at most 16 times the default work.
KDF_BOUNDS = {
    "time_cost": (2, 10),
    "memory_cost_kib": (64 * 1024, 1024 * 1024),
    "parallelism": (1, 8),
}
MAX_KDF_WORK = 16 * DEFAULT_KDF["time_cost"] * DEFAULT_KDF["memory_cost_kib"]
MAX_KEY_FILE_BYTES = 4096
MAX_KEY_FILES_TRIED = 8


def new_key_name() -> str:
    return f"keys/{os.urandom(16).hex()}"


def _derive(passphrase: str, salt: bytes, params: dict[str, int]) -> bytes:
    return hash_secret_raw(
        passphrase.encode(),
        salt,
        time_cost=params["time_cost"],
        memory_cost=params["memory_cost_kib"],
        parallelism=params["parallelism"],
        hash_len=32,
        type=Type.ID,
    )


def wrap_key(master: MasterKey, passphrase: str) -> bytes:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    from cloudkeep.repository.crypto import NONCE_SIZE

    salt = os.urandom(16)
    nonce = os.urandom(NONCE_SIZE)
    kek = _derive(passphrase, salt, DEFAULT_KDF)
    payload = json.dumps(master.to_dict()).encode()
    document = {
        "version": 1,
        "kdf": "argon2id",
        **DEFAULT_KDF,
        "salt": base64.b64encode(salt).decode(),
        "nonce": base64.b64encode(nonce).decode(),
        "data": base64.b64encode(AESGCM(kek).encrypt(nonce, payload, KEY_AAD)).decode(),
        "created": datetime.now(UTC).isoformat(),
        "hostname": socket.gethostname(),
    }
    return json.dumps(document, indent=1).encode()


def kdf_params(document: dict) -> dict[str, int] | None:
    """The key file's Argon2 parameters if within ``KDF_BOUNDS``, else None."""
    params = {}
    for name, (low, high) in KDF_BOUNDS.items():
        value = document.get(name)
        if type(value) is not int or not low <= value <= high:
            return None
        params[name] = value
    if params["time_cost"] * params["memory_cost_kib"] > MAX_KDF_WORK:
        return None
    return params


def unwrap_key(document_bytes: bytes, passphrase: str) -> MasterKey | None:
    """The master key, or None when this passphrase does not open this key file.

    A file out of bounds (size, Argon2 parameters, salt) is None without any derivation.
    """
    if len(document_bytes) > MAX_KEY_FILE_BYTES:
        return None
    try:
        document = parse_json(document_bytes)
        if not isinstance(document, dict) or document.get("kdf") != "argon2id":
            return None
        params = kdf_params(document)
        salt = base64.b64decode(document["salt"], validate=True)
        nonce = base64.b64decode(document["nonce"], validate=True)
        data = base64.b64decode(document["data"], validate=True)
    except (ValueError, KeyError, TypeError, binascii.Error):
        return None
    if params is None or not 8 <= len(salt) <= 64:
        return None
    try:
        kek = _derive(passphrase, salt, params)
    except HashingError:  # e.g. the memory could not be allocated
        return None
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    from cloudkeep.repository.crypto import MasterKey

    try:
        payload = AESGCM(kek).decrypt(nonce, data, KEY_AAD)
        key = MasterKey.from_dict(parse_json(payload))
    except (InvalidTag, ValueError, KeyError, TypeError, AttributeError):
        return None
    if len(key.encryption_key) != 32 or len(key.id_key) != 32:
        return None
    return key
