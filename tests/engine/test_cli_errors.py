"""The CLI's exit code for every engine error class, looked up along the MRO."""

from __future__ import annotations

import pytest

from cloudkeep import errors
from cloudkeep.cli.errors import exit_code_for
from cloudkeep.storage import base

EXPECTED = {
    errors.CloudkeepError: 1,
    errors.UserError: 1,
    errors.ConfigurationError: 1,
    errors.RepositoryNotFound: 1,
    errors.RepositoryExists: 1,
    errors.WrongPassphrase: 1,
    errors.RepositoryChanged: 1,
    errors.KeyMissing: 1,
    errors.FormatTooNew: 1,
    errors.BackupNotFound: 1,
    errors.InvalidBackupId: 1,
    errors.Busy: 1,
    errors.TooManyJobs: 1,
    errors.Canceled: 1,
    errors.DataSourceError: 1,
    errors.DataInUse: 1,
    errors.RepositoryDamaged: 2,
    errors.UnsafeBackup: 2,
    errors.StoreUnreachable: 3,
    base.StorageError: 1,
    base.ObjectNotFound: 1,
    base.ObjectExists: 1,
    base.StorageUnavailable: 3,  # a StorageError and a StoreUnreachable: the MRO decides
    base.StoreRejected: 3,
}


@pytest.mark.parametrize("kind", list(EXPECTED), ids=lambda kind: kind.__name__)
def test_exit_code_of_every_error_class(kind: type[errors.CloudkeepError]) -> None:
    assert exit_code_for(kind("x")) == EXPECTED[kind]


def test_a_new_subclass_exits_as_its_nearest_mapped_base() -> None:
    class Torn(errors.UnsafeBackup):
        pass

    assert exit_code_for(Torn("x")) == 2
    assert not hasattr(errors.RepositoryDamaged, "exit_code")  # the engine knows no codes
