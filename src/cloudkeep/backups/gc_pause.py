"""Pausing Python's cyclic garbage collector while a backup, restore or check runs.

Those loops allocate millions of short-lived tuples and lists that never form
cycles; each allocation burst triggers a collection that walks every live
object (the index included), a large share of a restore's CPU. Reference
counting still frees everything at once; collection resumes (and catches up)
when the operation ends.
"""

from __future__ import annotations

import contextlib
import gc
import threading
from collections.abc import Iterator

_lock = threading.Lock()
_state = {"depth": 0, "was_enabled": True}  # nested and concurrent pauses share one


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    with _lock:
        if _state["depth"] == 0:
            _state["was_enabled"] = gc.isenabled()
            gc.disable()
        _state["depth"] += 1
    try:
        yield
    finally:
        with _lock:
            _state["depth"] -= 1
            if _state["depth"] == 0 and _state["was_enabled"]:
                gc.enable()
