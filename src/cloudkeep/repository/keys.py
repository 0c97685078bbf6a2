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
from dataclasses import dataclass
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


# ------------------------------------------------------------------ key listing
#: At most this many key files are read for ``key list`` (planted ones could be
#: thousands); the rest are counted, not read.
MAX_KEY_FILES_LISTED = 64
_MAX_SHOWN_TEXT = 64


@dataclass(frozen=True, slots=True)
class KeyInfo:
    """What a key file says of itself (store input: shown, never trusted)."""

    name: str  # keys/<32 hex>
    created: str  # ISO time, or "" if the file does not say
    host: str  # printable, at most 64 characters; "" if the file does not say
    usable: bool  # well-formed, Argon2 costs within bounds: a device would try it

    @property
    def id(self) -> str:
        return self.name.removeprefix("keys/")


def _shown_text(value: object) -> str:
    if not isinstance(value, str):
        return ""
    return "".join(c for c in value if c.isprintable())[:_MAX_SHOWN_TEXT]


def key_info(name: str, document_bytes: bytes | None) -> KeyInfo:
    """The ``KeyInfo`` of key file ``name`` holding ``document_bytes`` (None: not read)."""
    if document_bytes is None or len(document_bytes) > MAX_KEY_FILE_BYTES:
        return KeyInfo(name, "", "", usable=False)
    try:
        document = parse_json(document_bytes)
    except ValueError:
        return KeyInfo(name, "", "", usable=False)
    if not isinstance(document, dict):
        return KeyInfo(name, "", "", usable=False)
    usable = document.get("kdf") == "argon2id" and kdf_params(document) is not None
    return KeyInfo(
        name, _shown_text(document.get("created")), _shown_text(document.get("hostname")), usable
    )


# ---------------------------------------------------------------- recovery text
# The master key and the repository id, printable: 81 bytes (a version byte, the
# 16-byte id, the two 32-byte keys) and a 4-byte checksum are 136 characters of
# Crockford's base32 (no I, L, O, U: nothing to misread), in groups of four, six
# groups a line, each line numbered and followed by a two-character check of its
# number and characters, so a typo is found on its line.
RECOVERY_VERSION = 1
_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_MISREAD = {"O": "0", "I": "1", "L": "1"}
_GROUP = 4
_GROUPS_PER_LINE = 6
_PAYLOAD_BYTES = 1 + 16 + 32 + 32
_CHECKSUM_BYTES = 4
_CHARACTERS = (_PAYLOAD_BYTES + _CHECKSUM_BYTES) * 8 // 5  # 136


@dataclass(frozen=True, slots=True)
class Recovery:
    """What a recovery text holds."""

    repository_id: str
    key: MasterKey


class RecoveryTextInvalid(ValueError):
    """The recovery text does not read (a typo, a missing line): the message says where."""


def _checksum(payload: bytes) -> bytes:
    import blake3

    digest = blake3.blake3(payload, derive_key_context="cloudkeep 2026-11 recovery text")
    return digest.digest()[:_CHECKSUM_BYTES]


def _line_check(number: int, characters: str) -> str:
    import blake3

    value = int.from_bytes(blake3.blake3(f"{number}:{characters}".encode()).digest()[:2], "big")
    return _ALPHABET[(value >> 5) & 31] + _ALPHABET[value & 31]


def _encode(data: bytes) -> str:
    value = int.from_bytes(data, "big")
    count = len(data) * 8 // 5
    return "".join(_ALPHABET[(value >> (5 * (count - 1 - i))) & 31] for i in range(count))


def recovery_lines(key: MasterKey, repository_id: str) -> list[str]:
    """The numbered lines of the recovery text of ``key`` (see ``parse_recovery_text``)."""
    payload = (
        bytes([RECOVERY_VERSION]) + bytes.fromhex(repository_id) + key.encryption_key + key.id_key
    )
    text = _encode(payload + _checksum(payload))
    per_line = _GROUP * _GROUPS_PER_LINE
    lines = []
    for number, start in enumerate(range(0, len(text), per_line), 1):
        characters = text[start : start + per_line]
        groups = " ".join(characters[i : i + _GROUP] for i in range(0, len(characters), _GROUP))
        lines.append(f"{number:2d}  {groups:<29}  {_line_check(number, characters)}")
    return lines


def _normalized(token: str) -> str | None:
    """A token in the recovery alphabet (misread letters mapped), or None."""
    text = "".join(_MISREAD.get(c, c) for c in token.upper())
    return text if all(c in _ALPHABET for c in text) else None


def _data_line(line: str) -> tuple[int, str, str] | None:
    """(number, characters, check) of a line of groups; None for any other line."""
    tokens = line.replace("-", " ").split()
    if len(tokens) < 3 or not tokens[0].rstrip(".:)").isdigit():
        return None
    groups = [_normalized(token) for token in tokens[1:-1]]
    check = _normalized(tokens[-1])
    if check is None or len(check) != 2:
        return None
    if any(group is None or len(group) != _GROUP for group in groups):
        return None
    return int(tokens[0].rstrip(".:)")), "".join(g for g in groups if g), check


def parse_recovery_text(text: str) -> Recovery:
    """The key and repository id of a recovery text; ``RecoveryTextInvalid`` saying
    which line is wrong. Lines that are not numbered groups (the header) are skipped;
    case, dashes and the misread letters O, I, L do not matter."""
    lines: dict[int, str] = {}
    for raw in text[: 64 * 1024].splitlines():
        found = _data_line(raw)
        if found is None:
            continue
        number, characters, check = found
        if _line_check(number, characters) != check:
            raise RecoveryTextInvalid(
                f"line {number} of the recovery text does not match its check "
                f"{check}: a character of it is mistyped"
            )
        lines[number] = characters
    if not lines:
        raise RecoveryTextInvalid("no lines of a recovery text found (numbered groups of four)")
    expected = -(-_CHARACTERS // (_GROUP * _GROUPS_PER_LINE))
    for number in range(1, expected + 1):
        if number not in lines:
            raise RecoveryTextInvalid(f"line {number} of the recovery text is missing")
    characters = "".join(lines[number] for number in range(1, expected + 1))
    if len(characters) != _CHARACTERS or set(lines) - set(range(1, expected + 1)):
        raise RecoveryTextInvalid("the recovery text has lines that do not belong to it")
    value = 0
    for c in characters:
        value = value << 5 | _ALPHABET.index(c)
    data = value.to_bytes(_PAYLOAD_BYTES + _CHECKSUM_BYTES, "big")
    payload, checksum = data[:_PAYLOAD_BYTES], data[_PAYLOAD_BYTES:]
    if _checksum(payload) != checksum:
        raise RecoveryTextInvalid("the recovery text's checksum does not match: it is damaged")
    if payload[0] != RECOVERY_VERSION:
        raise RecoveryTextInvalid(
            f"recovery text version {payload[0]}: this cloudkeep reads version {RECOVERY_VERSION}"
        )
    from cloudkeep.repository.crypto import MasterKey

    return Recovery(payload[1:17].hex(), MasterKey(payload[17:49], payload[49:81]))
