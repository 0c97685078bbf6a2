"""Retries with exponential backoff and jitter around any ``Storage``.

Object stores fail transiently (dropped connections, 5xx, throttling, timeouts);
one retry layer here, and none inside OpenDAL, keeps the total time bounded and
the attempt count honest. What is retried: ``StorageUnavailable`` (except
``StoreRejected``: bad credentials do not heal) and Python's ``TimeoutError`` /
``ConnectionError``. Never retried: ``ObjectNotFound``, ``ObjectExists`` and any
other ``StorageError``.

Each operation gets at most ``attempts`` tries; no new try starts once
``deadline_seconds`` have passed, so an operation gives up after at most the
deadline plus one operation timeout (see ``url.py``), raising
``StorageUnavailable("store unreachable after N attempts over S s: <reason>")``.

Create-only puts: when an attempt fails with an unknown outcome (e.g. a timeout
after the request was sent), the write may have landed, so the next attempt can
see ``ObjectExists`` for our own object. In that case, and only then, the
wrapper reads the object back: identical bytes mean the earlier attempt
succeeded and the put returns normally; different bytes mean someone else owns
the name and ``ObjectExists`` is raised. Comparing content rather than trusting
the first attempt keeps lock files (unique content) and content-addressed packs
(same name, same bytes) both correct.

Environment (read by ``RetryPolicy.from_env``, used by ``open_store``):

``CLOUDKEEP_STORE_RETRIES``
    attempts per operation, including the first (default 8, minimum 1).
``CLOUDKEEP_STORE_RETRY_DEADLINE``
    seconds after which no new attempt starts (default 300).
"""

from __future__ import annotations

import logging
import os
import random
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TypeVar

from cloudkeep.errors import ConfigurationError
from cloudkeep.storage.base import (
    ObjectExists,
    ObjectInfo,
    ObjectNotFound,
    Payload,
    Storage,
    StorageUnavailable,
    StoreRejected,
    joined,
)

T = TypeVar("T")

#: Retries are logged at INFO (messages are already secret-free); front ends
#: decide whether users see "store slow, retrying".
logger = logging.getLogger(__name__)

ENV_RETRIES = "CLOUDKEEP_STORE_RETRIES"
ENV_DEADLINE = "CLOUDKEEP_STORE_RETRY_DEADLINE"

DEFAULT_ATTEMPTS = 8
DEFAULT_BASE_DELAY = 0.5
DEFAULT_MAX_DELAY = 30.0
DEFAULT_DEADLINE = 300.0


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How hard to try: attempts, backoff bounds and total time budget."""

    attempts: int = DEFAULT_ATTEMPTS
    base_delay: float = DEFAULT_BASE_DELAY
    max_delay: float = DEFAULT_MAX_DELAY
    deadline_seconds: float = DEFAULT_DEADLINE

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ConfigurationError(f"store retries must be at least 1, not {self.attempts}")
        if self.base_delay < 0 or self.max_delay < self.base_delay:
            raise ConfigurationError("retry delays must satisfy 0 <= base_delay <= max_delay")
        if self.deadline_seconds <= 0:
            raise ConfigurationError("the store retry deadline must be positive")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> RetryPolicy:
        """Defaults, overridden by CLOUDKEEP_STORE_RETRIES / CLOUDKEEP_STORE_RETRY_DEADLINE."""
        env = os.environ if environ is None else environ
        attempts = _env_number(env, ENV_RETRIES, DEFAULT_ATTEMPTS, int)
        deadline = _env_number(env, ENV_DEADLINE, DEFAULT_DEADLINE, float)
        return cls(attempts=attempts, deadline_seconds=deadline)


N = TypeVar("N", int, float)


def _env_number(env: Mapping[str, str], key: str, default: N, kind: type[N]) -> N:
    raw = env.get(key, "").strip()
    if not raw:
        return default
    try:
        return kind(raw)
    except ValueError:
        raise ConfigurationError(f"{key}={raw!r} is not a number") from None


def is_transient(exc: BaseException) -> bool:
    """Whether waiting and trying again can help."""
    if isinstance(exc, StoreRejected | ObjectNotFound | ObjectExists):
        return False
    return isinstance(exc, StorageUnavailable | TimeoutError | ConnectionError)


class _Backoff:
    """Attempt counter and clock for one operation (or one stretch of a listing)."""

    def __init__(self, policy: RetryPolicy) -> None:
        self._policy = policy
        self._start = time.monotonic()
        self.attempts = 0

    def failed(self, exc: BaseException) -> None:
        """Sleep before the next attempt, or raise StorageUnavailable if out of budget."""
        self.attempts += 1
        policy = self._policy
        elapsed = time.monotonic() - self._start
        delay = min(policy.max_delay, policy.base_delay * 2 ** (self.attempts - 1))
        delay = random.uniform(delay / 2, delay)  # "equal jitter": spread, but keep backing off
        if self.attempts >= policy.attempts or elapsed + delay >= policy.deadline_seconds:
            tries = f"{self.attempts} attempt{'s' if self.attempts != 1 else ''}"
            raise StorageUnavailable(
                f"store unreachable after {tries} over {elapsed:.1f} s: {exc}"
            ) from exc
        logger.info(
            "store call failed (attempt %d of %d), retrying in %.1f s: %s",
            self.attempts,
            policy.attempts,
            delay,
            exc,
        )
        time.sleep(delay)


class RetryingStorage:
    """``Storage`` that retries transient failures of ``inner`` within a time budget."""

    def __init__(
        self,
        inner: Storage,
        *,
        attempts: int = DEFAULT_ATTEMPTS,
        base_delay: float = DEFAULT_BASE_DELAY,
        max_delay: float = DEFAULT_MAX_DELAY,
        deadline_seconds: float = DEFAULT_DEADLINE,
    ) -> None:
        self._inner = inner
        self.policy = RetryPolicy(attempts, base_delay, max_delay, deadline_seconds)

    @classmethod
    def with_policy(cls, inner: Storage, policy: RetryPolicy) -> RetryingStorage:
        """Wrap ``inner`` with the limits of ``policy``."""
        return cls(
            inner,
            attempts=policy.attempts,
            base_delay=policy.base_delay,
            max_delay=policy.max_delay,
            deadline_seconds=policy.deadline_seconds,
        )

    @property
    def inner(self) -> Storage:
        """The wrapped store (for tests and diagnostics)."""
        return self._inner

    def __repr__(self) -> str:
        return f"RetryingStorage({self._inner!r}, {self.policy})"

    def _call(self, operation: Callable[[], T]) -> T:
        backoff = _Backoff(self.policy)
        while True:
            try:
                return operation()
            except Exception as exc:
                if not is_transient(exc):
                    raise
                backoff.failed(exc)

    def put(self, name: str, data: Payload, *, create_only: bool = False) -> None:
        """Put with retries; see the module docstring for create-only after a lost reply."""
        outcome_unknown = False

        def attempt() -> None:
            nonlocal outcome_unknown
            try:
                self._inner.put(name, data, create_only=create_only)
            except ObjectExists:
                if outcome_unknown and self._holds(name, data):
                    return
                raise
            except Exception as exc:
                if is_transient(exc):
                    outcome_unknown = True
                raise

        self._call(attempt)

    def _holds(self, name: str, data: Payload) -> bool:
        """Whether ``name`` already contains exactly ``data`` (our own earlier write)."""
        content = joined(data)
        try:
            if self._inner.stat(name).size != len(content):
                return False
            return self._inner.get(name) == content
        except ObjectNotFound:
            return False

    def get(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        """Read with retries."""
        return self._call(lambda: self._inner.get(name, offset, length))

    def stat(self, name: str) -> ObjectInfo:
        """Stat with retries."""
        return self._call(lambda: self._inner.stat(name))

    def delete(self, name: str) -> None:
        """Delete with retries (deleting is idempotent, so a lost reply is harmless)."""
        self._call(lambda: self._inner.delete(name))

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        """List with retries: a listing that breaks off restarts and skips names already given.

        The budget restarts whenever the listing made progress, so a long
        listing over a flaky link finishes as long as each stretch succeeds.
        """
        return self._list(prefix)

    def _list(self, prefix: str) -> Iterator[ObjectInfo]:
        seen: set[str] = set()
        backoff = _Backoff(self.policy)
        while True:
            progressed = False
            try:
                for info in self._inner.list(prefix):
                    if info.name in seen:
                        continue
                    seen.add(info.name)
                    progressed = True
                    yield info
                return
            except Exception as exc:
                if not is_transient(exc):
                    raise
                if progressed:
                    backoff = _Backoff(self.policy)
                backoff.failed(exc)

    def describe(self) -> str:
        """The wrapped store's description."""
        return self._inner.describe()
