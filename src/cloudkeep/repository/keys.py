"""Key files: the master key wrapped by a key derived from the passphrase.

Argon2id (memory-hard) makes offline guessing of the passphrase expensive for
anyone who obtains the store. Several key files may exist (one per passphrase);
any of them opens the repository.
"""

from __future__ import annotations

import base64
import json
import os
import socket
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from argon2.low_level import Type, hash_secret_raw

# cryptography and our crypto module (~10 ms of import) are imported where used:
# a caller deriving the key in a thread imports them meanwhile, not before.
if TYPE_CHECKING:
    from cloudkeep.repository.crypto import MasterKey

KEY_AAD = b"cloudkeep-key-v1"
# 64 MiB, 2 passes, 2 lanes: ~90 ms here, paid by every command; more memory than
# OWASP's Argon2id recommendations (19-46 MiB), which is what makes guessing costly.
DEFAULT_KDF = {"time_cost": 2, "memory_cost_kib": 64 * 1024, "parallelism": 2}


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


def first_unwrapped(documents: list[bytes], passphrase: str) -> MasterKey | None:
    """The master key from the first key file this passphrase opens, or None."""
    for document in documents:
        key = unwrap_key(document, passphrase)
        if key is not None:
            return key
    return None


def unwrap_key(document_bytes: bytes, passphrase: str) -> MasterKey | None:
    """The master key, or None when this passphrase does not open this key file."""
    try:
        document = json.loads(document_bytes)
        if document.get("kdf") != "argon2id":
            return None
        params = {k: int(document[k]) for k in DEFAULT_KDF}
        kek = _derive(passphrase, base64.b64decode(document["salt"]), params)
    except (ValueError, KeyError, TypeError):
        return None
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    from cloudkeep.repository.crypto import MasterKey

    try:
        payload = AESGCM(kek).decrypt(
            base64.b64decode(document["nonce"]), base64.b64decode(document["data"]), KEY_AAD
        )
        return MasterKey.from_dict(json.loads(payload))
    except (InvalidTag, ValueError, KeyError, TypeError):
        return None
