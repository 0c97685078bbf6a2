"""Restoring a backup: plan, reuse what the live data holds, fetch the rest, swap atomically.

Files are written into a staging folder beside the destination (same filesystem),
every blob authenticated and re-hashed against its keyed id, fsynced, and only
then swapped in (see ``in_place``); what the swap replaces is kept as the undo
copy. Every entry is created relative to a descriptor of its folder without
following symlinks (``write.Tree`` on ``platform.Folder``), so no manifest can make a restore write
outside its staging folder. A single-file SQLite source is restored into the
live database through SQLite's backup API, one transaction that a running app
sees as an ordinary commit.
"""

from __future__ import annotations

import shutil
import stat
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from cloudkeep import platform
from cloudkeep.backups.gc_pause import gc_paused
from cloudkeep.backups.manifest import FileEntry, Manifest
from cloudkeep.backups.progress import ProgressFn, Tracker
from cloudkeep.backups.restore.fetch import (
    FETCH_THREADS,
    ChunkLists,
    RepositoryReader,
    quick_handoffs,
    start_fetches,
)
from cloudkeep.backups.restore.in_place import (
    clean_stale_staging,
    replace_single_file,
    staging_path,
)
from cloudkeep.backups.restore.partial import UndoFolder, place, refuse_orphan_logs
from cloudkeep.backups.restore.plan import (
    FIRST_BATCH_CHUNKS,
    SlicePlan,
    check_file_size,
    next_slice_limit,
    plan_tree,
)
from cloudkeep.backups.restore.reuse import (
    REUSE_THREADS,
    LiveData,
    ReuseJob,
    collect_missing,
    start_reuse,
)
from cloudkeep.backups.restore.write import (
    Files,
    Tree,
    link_to_folder,
    out_of_room,
    reserve,
    set_size,
)
from cloudkeep.backups.sources import is_sqlite
from cloudkeep.backups.swap import remove_any, replace_atomically, undo_path
from cloudkeep.errors import UserError
from cloudkeep.repository.repository import Repository


class Restorer:
    """Restores a backup; chunks the local data already holds are not fetched.

    ``reuse_local``: each chunk is first looked for at its place in the live copy
    and used if its keyed id matches (see ``reuse``). ``reused_bytes`` and
    ``fetched_bytes`` say how the last restore was served, ``warnings`` what it
    could not restore as backed up (symlinks this system refused).
    """

    def __init__(
        self,
        repo: Repository,
        progress: ProgressFn | None = None,
        cancel: threading.Event | None = None,
        reuse_local: bool = True,
    ) -> None:
        self._reader = RepositoryReader(repo)
        self.progress = progress
        self.cancel = cancel
        self.reuse_local = reuse_local
        self.reused_bytes = 0
        self.fetched_bytes = 0
        self.warnings: list[str] = []
        self._live: LiveData | None = None

    def run(
        self,
        manifest: Manifest,
        live: Path,
        target: Path | None,
        before_swap: Callable[[], None] | None = None,
    ) -> Path:
        """Restore ``manifest``; returns the path now holding the restored data.

        In place (no ``target``), what the restore replaces is kept at
        ``undo_path(live)`` and the folder keeps its own mode; ``before_swap`` runs
        just before the swap (the check that no program holds the data open).
        A target folder gets the backed-up folder's mode when the backup has it.
        """
        if target is not None:
            if target.exists() and (not target.is_dir() or any(target.iterdir())):
                raise UserError(
                    f"the restore target {target} exists and is not empty; "
                    "choose a new or empty folder"
                )
            destination = target
        else:
            destination = live
        destination.parent.mkdir(parents=True, exist_ok=True)
        clean_stale_staging(destination)
        if target is None:
            UndoFolder(live).refuse_interrupted()
        self._live = LiveData(live, manifest.kind == "file") if self.reuse_local else None
        self.reused_bytes = self.fetched_bytes = 0
        self.warnings = []
        staging = staging_path(destination)
        # A backup's modes are a key holder's word: the umask caps them, as tar does for
        # ordinary users, so no restore makes the user's files writable by others.
        umask = platform.process_umask()
        root_mode = None if manifest.root_mode is None else manifest.root_mode & ~umask
        if target is None and live.is_dir():
            root_mode = stat.S_IMODE(live.stat().st_mode)  # the folder's own: kept as it is
        tracker = Tracker("restore", manifest.bytes, self.progress, self.cancel)
        tracker.advance(0)
        try:
            staging.mkdir()
            self._fill(manifest, staging, root_mode, umask, tracker)
            self.fetched_bytes = (
                sum(entry.size for entry in manifest.files if entry.type == "file")
                - self.reused_bytes
            )
            tracker.check_canceled()
            if target is None:
                UndoFolder(live).discard()  # one undo at a time: this restore's replaces it
            if manifest.kind == "file" and target is None:
                replace_single_file(staging / manifest.files[0].path, live, undo_path(live))
                shutil.rmtree(staging, ignore_errors=True)
            else:
                if before_swap is not None and target is None:
                    before_swap()
                keep = undo_path(destination) if target is None else None
                replace_atomically(staging, destination, keep)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return destination

    def run_chosen(
        self, part: Manifest, live: Path, before_swap: Callable[[], None] | None = None
    ) -> Path:
        """Restore the entries of ``part`` (``browse.select``) in place, each put at its
        place atomically (see ``partial``); returns the undo folder keeping what they
        replaced. ``before_swap`` runs before the first entry is put in place."""
        if part.kind != "folder":
            raise UserError(f"backup {part.id} holds one file: restore it whole, without --include")
        if live.is_symlink() or (live.exists() and not live.is_dir()):
            raise UserError(f"the data path {live} is not a folder: restore with --target")
        refuse_orphan_logs(part, live)
        live.mkdir(parents=True, exist_ok=True)
        clean_stale_staging(live)
        undo = UndoFolder(live)
        undo.refuse_interrupted()
        self._live = LiveData(live, False) if self.reuse_local else None
        self.reused_bytes = self.fetched_bytes = 0
        self.warnings = []
        staging = staging_path(live)
        umask = platform.process_umask()
        tracker = Tracker("restore", part.bytes, self.progress, self.cancel)
        tracker.advance(0)
        try:
            staging.mkdir()
            self._fill(part, staging, None, umask, tracker)
            self.fetched_bytes = part.bytes - self.reused_bytes
            tracker.check_canceled()
            if before_swap is not None:
                before_swap()
            databases = {
                entry.path
                for entry in part.files
                if entry.type == "file" and (entry.sqlite or is_sqlite(staging / entry.path))
            }
            undo.discard()
            remove_any(undo_path(live))  # one undo at a time: this restore's replaces it
            place(part, staging, live, umask, databases)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return undo.folder

    def _fill(
        self,
        manifest: Manifest,
        staging: Path,
        root_mode: int | None,
        umask: int,
        tracker: Tracker,
    ) -> None:
        """Create the entries of ``manifest`` in ``staging`` under a shared repository
        lock; a full disk is one line naming where."""
        with gc_paused(), quick_handoffs(), self._reader.opened():
            try:
                self._materialize(manifest, staging, root_mode, umask, tracker)
            except OSError as exc:
                if not out_of_room(exc):
                    raise
                raise UserError(
                    f"no room left to restore into {staging.parent}: {exc.strerror}"
                ) from exc

    def _materialize(
        self,
        manifest: Manifest,
        staging: Path,
        root_mode: int | None,
        umask: int,
        tracker: Tracker,
    ) -> None:
        plan = plan_tree(manifest)
        tree = Tree(staging)
        folders = {entry.path for entry in plan.links_and_folders if entry.type == "dir"}
        try:
            for entry in plan.links_and_folders:
                if entry.type == "dir":
                    tree.mkdir(entry.path)
                else:
                    to_folder = link_to_folder(entry.path, entry.target, folders)
                    tree.symlink(entry.path, entry.target, to_folder)
            for batch in plan.batches:
                self._write_batch(batch, tree, tracker)
            tree.finish(plan.finishing, umask, root_mode)
        finally:
            self.warnings = tree.warnings
            tree.close()

    def _write_batch(self, batch: list[FileEntry], tree: Tree, tracker: Tracker) -> None:
        """Write a group of files, planning one slice of their chunks at a time.

        The plan (chunk → where it goes) covers one slice of the data at a time, so
        a database of any size is restored in bounded memory. The next slice is
        planned while the fetch threads work on the previous one. A slice's chunks
        are first looked for in the live copies of their files; only those not
        found there are fetched, with the next slice.
        """
        reader = self._reader
        files = Files()
        planning = SlicePlan()
        fetching: list[Future[None]] = []
        reusing: list[ReuseJob] = []
        limit = FIRST_BATCH_CHUNKS
        lists = ChunkLists(reader, batch)
        pool = ThreadPoolExecutor(FETCH_THREADS, thread_name_prefix="fetch")
        reuse_pool = ThreadPoolExecutor(REUSE_THREADS, thread_name_prefix="reuse")

        def hand_over() -> None:
            """Start on the slice just planned; fetch what the previous one did not find."""
            nonlocal planning, fetching, reusing
            started_reuse = start_reuse(
                reuse_pool, planning.reuse.values(), files, reader.blob_id, tracker
            )
            self.reused_bytes += collect_missing(reusing, planning)
            started = start_fetches(pool, reader, planning.fetch, files, tracker)
            for future in fetching:  # at most two slices planned at once
                future.result()
            fetching, reusing = started, started_reuse
            planning = SlicePlan()

        try:
            for number, entry in enumerate(batch):
                fd = files.open(tree, entry.path, entry.size)
                reserve(fd, entry)
                source = None if self._live is None else self._live.copy_of(entry)
                offset = 0
                for _ in entry.content:
                    offset = planning.add_chunks(number, offset, lists.next(), source)
                    check_file_size(entry, offset, whole=False)
                    if planning.chunks >= limit:
                        hand_over()
                        limit = next_slice_limit(limit)
                check_file_size(entry, offset)
                set_size(fd, offset)
            if not planning.empty():
                hand_over()
            if reusing:  # the last slice's chunks not found locally
                hand_over()
            for future in fetching:
                future.result()
            files.sync(pool)
        except BaseException:
            for future in fetching:
                future.cancel()
            for job in reusing:
                job.result.cancel()
            raise
        finally:
            reuse_pool.shutdown(wait=True, cancel_futures=True)
            pool.shutdown(wait=True, cancel_futures=True)
            lists.close()
            files.close()
