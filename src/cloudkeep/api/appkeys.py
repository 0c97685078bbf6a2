"""Application keys: the shared secret an SDK sends as ``X-Application-ID``.

Only SHA-256 digests are stored (``app-keys.json`` in the config dir, mode 0600): a key
is 256 random bits, so a fast hash is enough and a stolen file reveals no usable key.
The plaintext key is shown once, by ``cloudkeep app-key create``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import threading
from datetime import UTC, datetime
from pathlib import Path

from cloudkeep.errors import ConfigurationError
from cloudkeep.platform import write_private_file

__all__ = [
    "KEY_FILE_NAME",
    "AppKeyVerifier",
    "create_app_key",
    "key_file",
    "list_app_keys",
    "revoke_app_key",
]

KEY_FILE_NAME = "app-keys.json"
_PREFIX = "ck_"


def key_file(config_dir: Path) -> Path:
    """Where the digests of the issued keys live."""
    return Path(config_dir) / KEY_FILE_NAME


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def _read(config_dir: Path) -> list[dict[str, str]]:
    """The issued keys' records; ``ConfigurationError`` naming the file if it is damaged."""
    path = key_file(config_dir)
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise ConfigurationError(f"{path} cannot be read: {exc.strerror or exc}") from exc
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
        raise ConfigurationError(f"{path} is damaged (not UTF-8 JSON): fix or delete it") from exc
    keys = document.get("keys", []) if isinstance(document, dict) else None
    if not isinstance(keys, list):
        raise ConfigurationError(f"{path} is damaged (no list of keys): fix or delete it")
    return [k for k in keys if isinstance(k, dict) and isinstance(k.get("sha256"), str)]


def _write(config_dir: Path, keys: list[dict[str, str]]) -> None:
    """Atomic replace; the file is created 0600 so no moment exists where others can read it."""
    config_dir = Path(config_dir)
    config_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_private_file(key_file(config_dir), json.dumps({"keys": keys}, indent=1).encode())


def create_app_key(config_dir: Path, label: str = "") -> str:
    """Issue a new key, store its digest, return the plaintext (shown to the user once)."""
    key = _PREFIX + secrets.token_urlsafe(32)
    keys = _read(config_dir)
    keys.append(
        {
            "id": secrets.token_hex(4),
            "sha256": _digest(key),
            "label": label,
            "created": datetime.now(UTC).isoformat(),
        }
    )
    _write(config_dir, keys)
    return key


def list_app_keys(config_dir: Path) -> list[dict[str, str]]:
    """Issued keys without their digests (id, label, created) for display."""
    return [{k: v for k, v in key.items() if k != "sha256"} for key in _read(config_dir)]


def revoke_app_key(config_dir: Path, key_id: str) -> bool:
    """Forget one key by its id; True if it existed."""
    keys = _read(config_dir)
    kept = [k for k in keys if k.get("id") != key_id]
    if len(kept) == len(keys):
        return False
    _write(config_dir, kept)
    return True


class AppKeyVerifier:
    """Checks presented keys against the stored digests; rereads the file when it changes.

    Rereading lets ``app-key create`` and ``app-key revoke`` take effect without
    restarting the server. Every write replaces the file (a new inode), so the inode
    joins size and mtime in telling a changed file from the one already read.
    """

    def __init__(self, config_dir: Path) -> None:
        self._path = key_file(config_dir)
        self._config_dir = Path(config_dir)
        self._lock = threading.Lock()
        self._stamp: tuple[int, int, int] | None = None
        self._digests: list[bytes] = []

    def _current(self) -> list[bytes]:
        try:
            stat = self._path.stat()
            stamp: tuple[int, int, int] | None = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
        except FileNotFoundError:
            stamp = None
        with self._lock:
            if stamp != self._stamp:
                self._digests = [
                    bytes.fromhex(k["sha256"]) for k in _read(self._config_dir) if _is_hex(k)
                ]
                self._stamp = stamp
            return self._digests

    def has_keys(self) -> bool:
        return bool(self._current())

    def verify(self, presented: str | None) -> bool:
        """Constant-time comparison against every stored digest (no early exit)."""
        if not presented:
            return False
        candidate = hashlib.sha256(presented.encode("utf-8")).digest()
        matched = False
        for digest in self._current():
            matched |= hmac.compare_digest(candidate, digest)
        return matched


def _is_hex(entry: dict[str, str]) -> bool:
    try:
        return len(bytes.fromhex(entry["sha256"])) == 32
    except ValueError:
        return False
