"""Client-side encryption and keyed content ids.

Every stored object is sealed with AES-256-GCM under the repository's master
key, with associated data binding it to its role and name (a frame to its
role, a file to its kind and name) so objects cannot be swapped for one another
undetected. Blob ids are
keyed BLAKE3 hashes, so a storage provider cannot confirm guesses about the
content by hashing candidate plaintexts.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import blake3
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

NONCE_SIZE = 12
TAG_SIZE = 16
OVERHEAD = NONCE_SIZE + TAG_SIZE
ID_SIZE = 32


class DecryptionFailed(Exception):
    """Ciphertext was tampered with, truncated, or sealed under another key."""


@dataclass(frozen=True, slots=True)
class MasterKey:
    encryption_key: bytes
    id_key: bytes

    @classmethod
    def generate(cls) -> MasterKey:
        return cls(os.urandom(32), os.urandom(32))

    def to_dict(self) -> dict[str, str]:
        return {"encryption": self.encryption_key.hex(), "id": self.id_key.hex()}

    @classmethod
    def from_dict(cls, raw: dict[str, str]) -> MasterKey:
        return cls(bytes.fromhex(raw["encryption"]), bytes.fromhex(raw["id"]))

    def fingerprint(self) -> str:
        """A public name of this key (hex): the config records it, devices remember it."""
        return blake3.blake3(
            self.encryption_key + self.id_key,
            derive_key_context="cloudkeep 2026-11 master key fingerprint",
        ).hexdigest()

    def config_mac(self, canonical: bytes) -> str:
        """Keyed BLAKE3 of the config's canonical JSON, under a subkey of the master key."""
        subkey = blake3.blake3(
            self.encryption_key + self.id_key, derive_key_context="cloudkeep 2026-11 config mac"
        ).digest()
        return blake3.blake3(canonical, key=subkey).hexdigest()

    def chunker_seed(self) -> int:
        """A secret seed for the CDC gear table: chunk boundaries leak nothing."""
        return int.from_bytes(blake3.blake3(b"cdc-seed", key=self.id_key).digest()[:4], "little")


class Sealer:
    """Seals and opens objects; one per repository, safe to share across threads."""

    def __init__(self, key: MasterKey) -> None:
        self._aead = AESGCM(key.encryption_key)
        self._id_key = key.id_key

    def blob_id(self, data: bytes | memoryview) -> bytes:
        return blake3.blake3(data, key=self._id_key).digest()

    def blobs_match(self, data: memoryview, members: list[tuple[bytes, int, int]]) -> bool:
        """Whether each (blob id, offset, length) of ``members`` names the bytes of ``data``
        at that offset: one loop with no call per blob but the hash (a restore makes one
        per 8 KiB page)."""
        hasher, key, end = blake3.blake3, self._id_key, len(data)
        for blob_id, offset, length in members:
            if offset + length > end:
                return False
            if hasher(data[offset : offset + length], key=key).digest() != blob_id:
                return False
        return True

    def seal(self, plaintext: bytes | memoryview, associated: bytes) -> bytes:
        nonce = os.urandom(NONCE_SIZE)
        return nonce + self._aead.encrypt(nonce, plaintext, associated)

    def seal_parts(
        self, parts: list[bytes | memoryview], associated: bytes, nonce: bytes
    ) -> list[bytes]:
        """``seal`` of the parts' concatenation, returned as pieces to be written in order.

        ``nonce`` lets batch callers draw all their random nonces in one system call.

        The same bytes as ``seal(b"".join(parts))``, without joining the nonce to
        the ciphertext after. The parts are joined for the one-shot AEAD call,
        which releases the GIL (the streaming ``Cipher`` API does not).
        """
        return [nonce, self._aead.encrypt(nonce, b"".join(parts), associated)]

    def open(self, sealed: bytes | memoryview, associated: bytes) -> bytes:
        if len(sealed) < OVERHEAD:
            raise DecryptionFailed("object too short to be sealed data")
        view = memoryview(sealed)  # slices of a view: no copies of the ciphertext
        try:
            return self._aead.decrypt(view[:NONCE_SIZE], view[NONCE_SIZE:], associated)
        except InvalidTag as exc:
            raise DecryptionFailed("authentication failed (tampered data or wrong key)") from exc

    def open_into(self, sealed: memoryview, associated: bytes, out: memoryview) -> None:
        """``open`` into ``out`` (``len(sealed) - OVERHEAD`` bytes): no buffer per object.

        A restore decrypts a whole fetched range into one buffer: no fresh
        plaintext (and its page faults) per frame.
        """
        if len(sealed) < OVERHEAD or len(out) != len(sealed) - OVERHEAD:
            raise DecryptionFailed("object too short to be sealed data")
        try:
            self._aead.decrypt_into(sealed[:NONCE_SIZE], sealed[NONCE_SIZE:], associated, out)
        except InvalidTag as exc:
            raise DecryptionFailed("authentication failed (tampered data or wrong key)") from exc
