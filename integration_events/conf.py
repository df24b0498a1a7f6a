"""The INTEGRATION_EVENTS settings dict, read lazily and validated.

Every access goes through ``get_settings()``, which rebuilds the typed object whenever the
Django setting object changes, so ``override_settings(INTEGRATION_EVENTS=...)`` works in tests.
Every key, its type and its default are listed in docs/settings.md.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed
from django.utils.module_loading import import_string

from .retry import RetryStrategy

SETTING_NAME = "INTEGRATION_EVENTS"


@dataclass(frozen=True)
class IntegrationEventsSettings:
    """Defaults are the attribute values; see docs/settings.md for the long form."""

    # Retries (CAP: FailedRetryCount, FailedRetryInterval, here the base of a backoff).
    MAX_ATTEMPTS: int = 10
    RETRY_BASE_DELAY: float = 5.0
    RETRY_MAX_DELAY: float = 3600.0
    RETRY_JITTER: float = 0.5
    # A topic this process does not know is retried this many times before it fails.
    UNKNOWN_TOPIC_MAX_ATTEMPTS: int = 10
    # Expiry (CAP: SucceedMessageExpiredAfter, FailedMessageExpiredAfter), seconds.
    SUCCEEDED_EXPIRY: float = 24 * 3600.0
    FAILED_EXPIRY: float = 15 * 24 * 3600.0
    # CAP: FailedThresholdCallback. A callable or a dotted path; called with the failed
    # ReceivedMessage or PublishedMessage once per transition to failed, after it commits.
    FAILED_THRESHOLD_CALLBACK: Callable[[Any], None] | str | None = None
    # Claims: a lease in database time, renewed every LEASE_SECONDS/3 while a handler runs.
    LEASE_SECONDS: float = 30.0
    CLAIM_BATCH_SIZE: int = 100
    # First attempts of atomic handlers run this many to a transaction (a savepoint each),
    # for at most EXECUTE_BATCH_SECONDS; 1 runs every delivery in its own transaction.
    EXECUTE_BATCH_SIZE: int = 50
    EXECUTE_BATCH_SECONDS: float = 1.0
    # Run a batch without per-handler savepoints, and only if a handler fails, roll back and
    # run the same rows again with a savepoint each (their handlers then run a second time;
    # their database writes and on-commit callbacks of the rolled-back run are gone).
    EXECUTE_OPTIMISTIC: bool = True
    # Event chains: a message whose correlation sequence (hop count) would exceed this fails.
    MAX_HOPS: int = 32
    # Database aliases the worker serves (publish(using=...) must name one of them).
    DATABASES: tuple[str, ...] = ("default",)
    # How long one django-q2 task keeps claiming work, in seconds. None: a quarter of
    # Q_CLUSTER["timeout"] (at most 20 s, which also bounds a graceful stop), so that a
    # handler started late still finishes well inside django-q2's timeout.
    TASK_TIME_BUDGET: float | None = None
    # How often an idle task looks for new or newly due work, and for how long.
    POLL_INTERVAL: float = 0.1
    IDLE_LINGER: float = 1.0
    # A task that sees the next due message within this horizon keeps (or hands on) watch
    # for it, so a retry or delayed message runs within about POLL_INTERVAL of its due time.
    WAKE_HORIZON: float = 120.0
    # Hand-off ("nudge") to the cluster after commit; at most one per window per cache.
    NUDGE: bool = True
    NUDGE_WINDOW: float = 1.0
    NUDGE_CACHE: str = "default"
    # django-q2 options for the nudge tasks (e.g. {"cluster": "events", "broker": ...}).
    Q_OPTIONS: dict[str, Any] = field(default_factory=dict)
    # Expiry cleanup deletes at most this many rows per statement.
    CLEANUP_BATCH_SIZE: int = 1000
    # Store the handler's traceback with the last error.
    STORE_TRACEBACK: bool = True
    # The seams (docs/extending.md): dotted paths of the classes that hand work to the task
    # queue, pick the rows a pass claims, wait while idle, and instrument the engine.
    PUMP: str = "integration_events.tasks.DjangoQPump"
    CLAIM_STRATEGY: str = "integration_events.claims.OldestFirst"
    IDLE_WAITER: str = "integration_events.waiting.SleepWaiter"
    INSTRUMENTATION: tuple[str, ...] = ()
    # Every cluster writes a heartbeat this often (seconds); a node is alive while its last
    # heartbeat is at most three intervals old (integration_events.nodes).
    HEARTBEAT_INTERVAL: float = 30.0

    def retry_strategy(self) -> RetryStrategy:
        return RetryStrategy(
            max_attempts=self.MAX_ATTEMPTS,
            base_delay=self.RETRY_BASE_DELAY,
            max_delay=self.RETRY_MAX_DELAY,
            jitter=self.RETRY_JITTER,
        )

    def failed_threshold_callback(self) -> Callable[[Any], None] | None:
        cb = self.FAILED_THRESHOLD_CALLBACK
        if cb is None:
            return None
        if isinstance(cb, str):
            try:
                return import_string(cb)  # type: ignore[no-any-return,unused-ignore]
            except ImportError as exc:
                raise ImproperlyConfigured(
                    f"{SETTING_NAME}['FAILED_THRESHOLD_CALLBACK']: cannot import {cb!r}: {exc}"
                ) from exc
        return cb

    def task_time_budget(self) -> float:
        if self.TASK_TIME_BUDGET is not None:
            return self.TASK_TIME_BUDGET
        timeout = q_cluster_timeout()
        if timeout is None:
            return 60.0
        return max(1.0, min(20.0, timeout / 4))


def q_cluster_timeout() -> float | None:
    conf = getattr(settings, "Q_CLUSTER", {}) or {}
    timeout = conf.get("timeout")
    return float(timeout) if timeout is not None else None


_FIELDS = {f.name: f for f in dataclasses.fields(IntegrationEventsSettings)}


def _check_type(key: str, value: Any) -> Any:
    """Validate one key; returns the value normalised (lists to tuples, ints to floats)."""
    default = _FIELDS[key].default
    if default is dataclasses.MISSING:
        default = _FIELDS[key].default_factory()  # type: ignore[operator]

    def bad(expected: str) -> ImproperlyConfigured:
        return ImproperlyConfigured(
            f"{SETTING_NAME}[{key!r}] must be {expected}, got {value!r} "
            f"({type(value).__name__}). See docs/settings.md."
        )

    if key == "FAILED_THRESHOLD_CALLBACK":
        if value is None or isinstance(value, str) or callable(value):
            return value
        raise bad("a callable, a dotted path or None")
    if key == "TASK_TIME_BUDGET":
        if value is None:
            return None
        if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
            return float(value)
        raise bad("a positive number of seconds or None")
    if key == "DATABASES":
        if isinstance(value, list | tuple) and value and all(isinstance(v, str) for v in value):
            return tuple(value)
        raise bad("a non-empty list of database aliases")
    if key == "INSTRUMENTATION":
        if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
            return tuple(value)
        raise bad("a list of dotted paths")
    if key == "Q_OPTIONS":
        if isinstance(value, dict):
            return dict(value)
        raise bad("a dict")
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        raise bad("True or False")
    if isinstance(default, int):
        if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
            return value
        raise bad("a whole number of at least 1")
    if isinstance(default, float):
        if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
            if key == "RETRY_JITTER" and value > 1:
                raise bad("a number between 0 and 1")
            return float(value)
        raise bad("a non-negative number")
    if isinstance(default, str):
        if isinstance(value, str) and value:
            return value
        raise bad("a non-empty string")
    return value  # pragma: no cover - every field is handled above


def build_settings(raw: Any) -> IntegrationEventsSettings:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ImproperlyConfigured(f"{SETTING_NAME} must be a dict, got {type(raw).__name__}.")
    unknown = sorted(set(raw) - set(_FIELDS))
    if unknown:
        raise ImproperlyConfigured(
            f"{SETTING_NAME} has unknown key(s) {', '.join(map(repr, unknown))}. "
            f"Known keys: {', '.join(sorted(_FIELDS))}."
        )
    values = {key: _check_type(key, value) for key, value in raw.items()}
    built = IntegrationEventsSettings(**values)
    if built.RETRY_MAX_DELAY < built.RETRY_BASE_DELAY:
        raise ImproperlyConfigured(
            f"{SETTING_NAME}['RETRY_MAX_DELAY'] ({built.RETRY_MAX_DELAY}) must not be below "
            f"RETRY_BASE_DELAY ({built.RETRY_BASE_DELAY})."
        )
    return built


_cache: tuple[int, IntegrationEventsSettings] | None = None


def get_settings() -> IntegrationEventsSettings:
    """The validated settings; rebuilt when the INTEGRATION_EVENTS object changes."""
    global _cache
    raw = getattr(settings, SETTING_NAME, None)
    key = id(raw)
    if _cache is None or _cache[0] != key:
        _cache = (key, build_settings(raw))
    return _cache[1]


def _reset(*, setting: str, **kwargs: Any) -> None:
    global _cache
    if setting in (SETTING_NAME, "Q_CLUSTER"):
        _cache = None


setting_changed.connect(_reset)
