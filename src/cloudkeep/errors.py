"""Errors a user can act on. The front ends map each class to an exit code or HTTP status
(``cli/errors.py``, ``api/errors.py``); a subclass gets its nearest mapped base's.

Every message is one line that says what happened and what to do; none ever
contains a passphrase or key material.
"""

from __future__ import annotations


class CloudkeepError(Exception):
    """Base of every expected failure (never shown with a traceback)."""


class UserError(CloudkeepError):
    """Bad input: unknown id, bad URL, bad option."""


class ConfigurationError(UserError):
    """The store URL, data path or passphrase setting is unusable."""


class DataNotFound(ConfigurationError):
    """No data folder was given and none was found where Pieces OS keeps it."""


class RepositoryNotFound(CloudkeepError):
    """No repository at the store (run ``cloudkeep init`` or ``backup``)."""


class RepositoryExists(UserError):
    """``init`` on a store that already holds a repository."""


class WrongPassphrase(CloudkeepError):
    """No key file of the repository opens with the given passphrase."""


class RepositoryChanged(CloudkeepError):
    """The store holds another repository or key than the one this device joined."""


class KeyMissing(CloudkeepError):
    """No passphrase or key file is available to open the repository."""


class KeyRefused(UserError):
    """A key change that would lock someone out (the last key, this device's own)."""


class FormatTooNew(CloudkeepError):
    """The repository or a backup was written by a newer cloudkeep."""


class BackupNotFound(UserError):
    """No backup with that id in the store."""


class InvalidBackupId(BackupNotFound):
    """The id is not of the form version_timestamp (and so cannot exist)."""


class AmbiguousBackupId(UserError):
    """A backup id prefix, or ``latest``, that names more than one backup."""


class Busy(CloudkeepError):
    """Another operation on the same data is running."""


class TooManyJobs(Busy):
    """The server's queue of backups and restores is full."""


class Canceled(CloudkeepError):
    """The operation was canceled on request."""


class DataSourceError(UserError):
    """The local data folder or file cannot be read."""


class RepositoryDamaged(CloudkeepError):
    """Stored data failed verification (missing, truncated or tampered objects)."""


class StoreUnreachable(CloudkeepError):
    """The store could not be reached within the retry budget."""


class UnsafeBackup(RepositoryDamaged):
    """A backup's manifest is malformed or would write outside its restore target."""


class DataInUse(UserError):
    """The live data is open in another program: restoring over it would lose its writes."""


class DatabaseNotFound(BackupNotFound):
    """No such SQLite database in the backup (or several, and none was named)."""


class NotADatabase(DatabaseNotFound):
    """The path named in a backup is not a SQLite database."""


class QueryRefused(UserError):
    """A query that is not valid SQL, or that would do anything but read."""


class QueryTimeout(QueryRefused):
    """A query ran past its time limit and was stopped."""
