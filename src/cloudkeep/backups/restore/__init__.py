"""Restoring a backup, along restic's lines: ``plan`` (what goes where), ``reuse`` (chunks
the live data still holds), ``fetch`` (the rest, from the repository), ``write`` (the
staging tree and its files), ``in_place`` (swap and undo), orchestrated by ``restorer``."""
