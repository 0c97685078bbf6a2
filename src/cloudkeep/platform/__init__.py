"""Every OS-specific call of cloudkeep, behind one small typed surface.

One implementation is chosen at import: ``linux``, ``darwin`` (macOS),
``windows``, or ``portable`` (only calls every OS offers) elsewhere and
whenever ``CLOUDKEEP_PORTABLE=1`` is set, so that CI runs the fallbacks too.
Callers import the names below from ``cloudkeep.platform`` only.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from cloudkeep.platform._common import (
    NO_ROOM,
    O_BINARY,
    O_CLOEXEC,
    O_DIRECTORY,
    O_NOFOLLOW,
    O_NONBLOCK,
    PIECES_FOLDER_TAIL,
    DataCandidate,
    DirectIOUnsupported,
    Folders,
    buffer_address,
    default_folders,
    is_pieces_data_path,
    os_label,
    pieces_data_candidates,
    refusal_is_unsupported,
)
from cloudkeep.platform._folders import WINDOWS_NAMES, Folder, UnsafeName, unsafe_name

PORTABLE = os.environ.get("CLOUDKEEP_PORTABLE") == "1"

if PORTABLE:
    from cloudkeep.platform.portable import (
        IMPLEMENTATION,
        MODES_ENFORCED,
        SQLITE_IN_PLACE,
        boot_clock,
        exchange_paths,
        fsync_dir,
        keep_freed_memory,
        link_new,
        lower_priority,
        make_blocking,
        open_direct,
        open_file_holders,
        open_folder,
        open_nofollow,
        owned_by_me,
        pread,
        preadv,
        preallocate,
        process_alive,
        process_umask,
        pwrite,
        pwritev,
        raise_descriptor_limit,
        range_locked,
        reopen_direct,
        set_mode,
        start_writeback,
        write_private_file,
        writev,
    )
elif sys.platform == "win32":
    from cloudkeep.platform.windows import (
        IMPLEMENTATION,
        MODES_ENFORCED,
        SQLITE_IN_PLACE,
        boot_clock,
        exchange_paths,
        fsync_dir,
        keep_freed_memory,
        link_new,
        lower_priority,
        make_blocking,
        open_direct,
        open_file_holders,
        open_folder,
        open_nofollow,
        owned_by_me,
        pread,
        preadv,
        preallocate,
        process_alive,
        process_umask,
        pwrite,
        pwritev,
        raise_descriptor_limit,
        range_locked,
        reopen_direct,
        set_mode,
        start_writeback,
        write_private_file,
        writev,
    )
elif sys.platform == "darwin":
    from cloudkeep.platform.darwin import (
        IMPLEMENTATION,
        MODES_ENFORCED,
        SQLITE_IN_PLACE,
        boot_clock,
        exchange_paths,
        fsync_dir,
        keep_freed_memory,
        link_new,
        lower_priority,
        make_blocking,
        open_direct,
        open_file_holders,
        open_folder,
        open_nofollow,
        owned_by_me,
        pread,
        preadv,
        preallocate,
        process_alive,
        process_umask,
        pwrite,
        pwritev,
        raise_descriptor_limit,
        range_locked,
        reopen_direct,
        set_mode,
        start_writeback,
        write_private_file,
        writev,
    )
elif sys.platform == "linux":
    from cloudkeep.platform.linux import (
        IMPLEMENTATION,
        MODES_ENFORCED,
        SQLITE_IN_PLACE,
        boot_clock,
        exchange_paths,
        fsync_dir,
        keep_freed_memory,
        link_new,
        lower_priority,
        make_blocking,
        open_direct,
        open_file_holders,
        open_folder,
        open_nofollow,
        owned_by_me,
        pread,
        preadv,
        preallocate,
        process_alive,
        process_umask,
        pwrite,
        pwritev,
        raise_descriptor_limit,
        range_locked,
        reopen_direct,
        set_mode,
        start_writeback,
        write_private_file,
        writev,
    )
else:
    from cloudkeep.platform.portable import (
        IMPLEMENTATION,
        MODES_ENFORCED,
        SQLITE_IN_PLACE,
        boot_clock,
        exchange_paths,
        fsync_dir,
        keep_freed_memory,
        link_new,
        lower_priority,
        make_blocking,
        open_direct,
        open_file_holders,
        open_folder,
        open_nofollow,
        owned_by_me,
        pread,
        preadv,
        preallocate,
        process_alive,
        process_umask,
        pwrite,
        pwritev,
        raise_descriptor_limit,
        range_locked,
        reopen_direct,
        set_mode,
        start_writeback,
        write_private_file,
        writev,
    )

#: A symlink that could not be made (Windows without the privilege): the warning says so.
SYMLINK_PRIVILEGE_ERROR = 1314  # ERROR_PRIVILEGE_NOT_HELD


def user_folders(app: str) -> Folders:
    """This user's default config, cache and data folders of ``app`` on this system."""
    return default_folders(sys.platform, os.environ, str(Path.home()), app)


def pieces_data_folders(environ: Mapping[str, str] | None = None) -> tuple[DataCandidate, ...]:
    """Where Pieces OS keeps its data folder on this system, most likely first."""
    env = os.environ if environ is None else environ
    return pieces_data_candidates(sys.platform, env, str(Path.home()))


def system_label() -> str:
    """This system as a backup records it: LINUX, MACOS, WINDOWS or UNKNOWN."""
    return os_label(sys.platform)


def make_symlink(
    folder: Folder, target: str, name: str, target_is_directory: bool = False
) -> str | None:
    """Create the symlink ``name`` → ``target`` in ``folder`` (``target_is_directory``:
    a link to a folder, which Windows must know); a warning where the system does not
    let this user create symlinks (Windows without Developer Mode or admin rights),
    None when made."""
    try:
        folder.symlink(target, name, target_is_directory)
    except OSError as exc:
        if getattr(exc, "winerror", None) != SYMLINK_PRIVILEGE_ERROR:
            raise
        return (
            f"the symlink {folder.path / name} -> {target} was not restored: Windows lets "
            "only administrators, or everyone once Developer Mode is on, create symlinks"
        )
    return None


def read_into(fd: int, view: memoryview, offset: int) -> int:
    """Fill ``view`` from ``offset`` until it is full or the file ends; bytes read."""
    got = 0
    while got < len(view):
        read = preadv(fd, [view[got:]], offset + got)
        if read == 0:
            break
        got += read
    return got


def pwritev_all(fd: int, buffers: Sequence[bytes | memoryview], offset: int) -> None:
    """Write every buffer, in order, at ``offset``, finishing any short write."""
    written = pwritev(fd, buffers, offset)
    if written != sum(len(b) for b in buffers):
        rest = memoryview(b"".join(bytes(b) for b in buffers))[written:]
        while rest:
            done = pwrite(fd, rest, offset + written)
            written += done
            rest = rest[done:]


def writev_all(fd: int, buffers: Sequence[bytes | memoryview]) -> None:
    """Write every buffer, in order, at the descriptor's offset, resuming after short writes."""
    pending = [memoryview(part) for part in buffers if len(part)]
    while pending:
        written = writev(fd, pending[:1024])
        while written:
            if written >= len(pending[0]):
                written -= len(pending.pop(0))
            else:
                pending[0] = pending[0][written:]
                written = 0


__all__ = [
    "IMPLEMENTATION",
    "MODES_ENFORCED",
    "NO_ROOM",
    "O_BINARY",
    "O_CLOEXEC",
    "O_DIRECTORY",
    "O_NOFOLLOW",
    "O_NONBLOCK",
    "PIECES_FOLDER_TAIL",
    "PORTABLE",
    "SQLITE_IN_PLACE",
    "WINDOWS_NAMES",
    "DataCandidate",
    "DirectIOUnsupported",
    "Folder",
    "Folders",
    "UnsafeName",
    "boot_clock",
    "buffer_address",
    "default_folders",
    "exchange_paths",
    "fsync_dir",
    "is_pieces_data_path",
    "keep_freed_memory",
    "link_new",
    "lower_priority",
    "make_blocking",
    "make_symlink",
    "open_direct",
    "open_file_holders",
    "open_folder",
    "open_nofollow",
    "os_label",
    "owned_by_me",
    "pieces_data_candidates",
    "pieces_data_folders",
    "pread",
    "preadv",
    "preallocate",
    "process_alive",
    "process_umask",
    "pwrite",
    "pwritev",
    "pwritev_all",
    "raise_descriptor_limit",
    "range_locked",
    "read_into",
    "refusal_is_unsupported",
    "reopen_direct",
    "set_mode",
    "start_writeback",
    "system_label",
    "unsafe_name",
    "user_folders",
    "write_private_file",
    "writev",
    "writev_all",
]
