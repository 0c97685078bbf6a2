"""Trust on first use: each device remembers the repository it joined at each store.

A store is only as trustworthy as its config, which anyone who can write the
bucket can replace (with a key file wrapping their own master key under a
guessed passphrase, say). So the first time a device opens or creates a
repository it records the repository id and master key fingerprint, and from
then on refuses a store whose config names another one, before deriving any
key. The record is one small JSON file per store under the config directory
(``trusted-stores/<hash of the store>.json``, mode 0600: no store name in
clear; the caller names the store as opened, not as spelled); deleting it
accepts a deliberately re-created repository.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

from cloudkeep.errors import RepositoryChanged
from cloudkeep.platform import write_private_file

_HEX = re.compile(r"[0-9a-f]+")
_MAX_BYTES = 4096


@dataclass(frozen=True, slots=True)
class Joined:
    """What a device remembers of a repository: its id, key fingerprint, key file."""

    repository: str
    key: str
    key_file: str | None = None


class TrustStore:
    def __init__(self, config_dir: Path) -> None:
        self._folder = config_dir / "trusted-stores"

    def path(self, store_url: str) -> Path:
        digest = hashlib.sha256(store_url.encode()).hexdigest()[:32]
        return self._folder / f"{digest}.json"

    def joined(self, store_url: str) -> Joined | None:
        """The repository this device joined at ``store_url``; None before the first use."""
        try:
            with self.path(store_url).open("rb") as handle:
                document = json.loads(handle.read(_MAX_BYTES))
            joined = Joined(document["repository"], document["key"], document.get("key_file"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise RepositoryChanged(
                f"the trust record {self.path(store_url)} is unreadable: delete it to "
                "accept the repository now at the store"
            ) from exc
        if not all(
            isinstance(v, str) and _HEX.fullmatch(v) for v in (joined.repository, joined.key)
        ):
            raise RepositoryChanged(
                f"the trust record {self.path(store_url)} is invalid: delete it to accept "
                "the repository now at the store"
            )
        return joined

    def check(self, store_url: str, where: str, repository: str, key: str) -> Joined | None:
        """The record for ``store_url``; ``RepositoryChanged`` if the config names another."""
        joined = self.joined(store_url)
        if joined is None or (joined.repository, joined.key) == (repository, key):
            return joined
        what = (
            f"repository id {joined.repository[:12]}… → {repository[:12]}…"
            if joined.repository != repository
            else f"key fingerprint {joined.key[:12]}… → {key[:12]}…"
        )
        raise RepositoryChanged(
            f"the repository at {where} is not the one this device joined ({what}): "
            f"if it was re-created on purpose, delete {self.path(store_url)} and run again"
        )

    def remember(self, store_url: str, joined: Joined) -> None:
        """Record ``joined`` (atomically, mode 0600) unless it is recorded already."""
        try:
            if self.joined(store_url) == joined:
                return
        except RepositoryChanged:
            pass  # an unreadable record the caller chose to replace
        self._folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        path = self.path(store_url)
        document = {"repository": joined.repository, "key": joined.key}
        if joined.key_file:
            document["key_file"] = joined.key_file
        write_private_file(path, json.dumps(document).encode())

    def forget(self, store_url: str) -> None:
        self.path(store_url).unlink(missing_ok=True)
