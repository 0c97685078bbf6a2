"""Errors a user can act on. Front ends map each class to one exit code / HTTP status.

Every message is one line that says what happened and what to do; none ever
contains a passphrase or key material.
"""

from __future__ import annotations


class CloudkeepError(Exception):
    """Base of every expected failure (never shown with a traceback)."""

    exit_code = 1
    http_status = 400


class UserError(CloudkeepError):
    """Bad input: unknown id, bad URL, bad option."""


class ConfigurationError(UserError):
    """The store URL, data path or passphrase setting is unusable."""


class RepositoryNotFound(CloudkeepError):
    """No repository at the store (run ``cloudkeep init`` or ``backup``)."""

    http_status = 511


class RepositoryExists(UserError):
    """``init`` on a store that already holds a repository."""

    http_status = 409


class WrongPassphrase(CloudkeepError):
    """No key file of the repository opens with the given passphrase."""

    http_status = 511


class RepositoryChanged(CloudkeepError):
    """The store holds another repository or key than the one this device joined."""

    http_status = 409


class KeyMissing(CloudkeepError):
    """No passphrase or key file is available to open the repository."""

    http_status = 511


class FormatTooNew(CloudkeepError):
    """The repository or a backup was written by a newer cloudkeep."""

    http_status = 505


class SnapshotNotFound(UserError):
    """No backup with that id in the store."""

    http_status = 404


class InvalidSnapshotId(SnapshotNotFound):
    """The id is not of the form version_timestamp (and so cannot exist)."""


class Busy(CloudkeepError):
    """Another operation on the same data is running."""

    http_status = 409


class TooManyJobs(Busy):
    """The server's queue of backups and restores is full."""

    http_status = 429


class Canceled(CloudkeepError):
    """The operation was canceled on request."""

    http_status = 409


class DataSourceError(UserError):
    """The local data folder or file cannot be read."""


class RepositoryDamaged(CloudkeepError):
    """Stored data failed verification (missing, truncated or tampered objects)."""

    exit_code = 2
    http_status = 500


class StoreUnreachable(CloudkeepError):
    """The store could not be reached within the retry budget."""

    exit_code = 3
    http_status = 503


class UnsafeBackup(RepositoryDamaged):
    """A backup's manifest is malformed or would write outside its restore target."""


class DataInUse(UserError):
    """The live data is open in another program: restoring over it would lose its writes."""

    http_status = 409
