"""Exit codes of the engine's errors: 1 user error, 2 damage found, 3 store unreachable."""

from __future__ import annotations

from cloudkeep.errors import CloudkeepError, RepositoryDamaged, StoreUnreachable

__all__ = ["EXIT_CODES", "exit_code_for"]

#: Looked up along the error's MRO: a subclass exits as its nearest listed base.
EXIT_CODES: dict[type, int] = {
    CloudkeepError: 1,
    RepositoryDamaged: 2,
    StoreUnreachable: 3,
}


def exit_code_for(exc: CloudkeepError) -> int:
    """The exit code of ``exc``: that of the first class of its MRO in ``EXIT_CODES``."""
    for cls in type(exc).__mro__:
        code = EXIT_CODES.get(cls)
        if code is not None:
            return code
    return EXIT_CODES[CloudkeepError]
