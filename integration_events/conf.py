"""The INTEGRATION_EVENTS settings dict, read lazily and validated by a pydantic model.

Every access goes through ``get_settings()``, which rebuilds the typed object whenever the
Django setting object changes, so ``override_settings(INTEGRATION_EVENTS=...)`` works in tests.

Each key is one line of ``IntegrationEventsSettings``: its type, default and bounds, and (in
``description``) why the bounds are where they are. Error messages and docs/settings.md are
written from the same fields. Every number is finite and bounded: a value the engine cannot
use (``inf``, a lease of 0, a batch no database takes in one statement) is refused here, with
the key named, instead of crashing a task later.
"""

from __future__ import annotations

import types
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, NamedTuple, TypeVar, Union, cast, get_args, get_origin

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed
from django.utils.module_loading import import_string
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import PydanticCustomError

from .bridges.config import BridgeConfig, parse_bridges
from .retry import RetryStrategy

SETTING_NAME = "INTEGRATION_EVENTS"
Q_CLUSTER_NAME = "Q_CLUSTER"


@dataclass(frozen=True)
class Unit:
    """Marks a number's unit, for messages ("a number of seconds from 1 to 3600")."""

    name: str


@dataclass(frozen=True)
class Expect:
    """What a key accepts, in words, where its type and bounds do not say it on their own."""

    text: str


Seconds = Annotated[float, Unit("seconds")]
DottedPath = Annotated[str, Field(pattern=r"^\w+(\.\w+)+$"),
                       Expect("a dotted path ('package.module.Name')")]
DAY = 24 * 3600

# The bounds, each with its reason (the Field description repeats it for messages and docs).
# Claimed, finished and expired rows are updated or deleted by one IN (...) list of primary
# keys, and SQL Server takes at most 2100 parameters in one statement.
MAX_ROWS_PER_STATEMENT = 2000
WHY_ROWS = ("the rows' primary keys go into one IN (...) list, and SQL Server takes at most "
            "2100 parameters per statement")
# A due time or an expiry is database time + the delay: it must stay a datetime every backend
# stores (MariaDB, SQL Server and Python stop at year 9999). Ten years is far from that and
# longer than any outbox needs to keep a row.
MAX_EXPIRY = 3650 * DAY
WHY_EXPIRY = ("now + the expiry must stay a date every database stores (year 9999 on MariaDB "
              "and SQL Server); ten years is longer than an outbox keeps anything")
# A wait of more than a week between two attempts is no longer a retry policy: park the
# message as a dead letter and requeue it from the admin.
MAX_RETRY_DELAY = 7 * DAY
WHY_RETRY_DELAY = ("the next attempt is due at now + the delay; a wait of more than a week is "
                   "a dead letter to requeue, not a retry")
WHY_ATTEMPTS = ("1000 attempts at the default one-hour cap are six weeks of retrying; beyond "
                "that a dead letter and a requeue say it better than 'for ever'")
WHY_LEASE = ("a claim is renewed every third of its lease: below 1 s the renewals hammer the "
             "database and a slow query can lose a live claim (the handler then runs twice); "
             "above an hour a killed worker's messages wait over an hour to come back")
WHY_BATCH_SECONDS = ("a batch transaction holds its rows' locks (on SQLite the only write "
                     "lock) this long; more than a minute blocks publishers")
WHY_HOPS = "a chain of more than 1000 hops is a loop, not a workflow"
WHY_BUDGET = ("at least a second, so a task can claim and run something; at most an hour, "
              "because a graceful stop of qcluster waits for the running task")
WHY_POLL = ("below 10 ms an idle task is a busy loop on the database; above a minute the "
            "minute sweep is sooner")
WHY_LINGER = ("a task stops at its time budget (at most an hour) anyway, so a longer linger is "
              "a unit mistake")
WHY_HORIZON = ("the minute sweep hands on work that falls due later, so a horizon beyond an hour "
               "only keeps tasks watching")
WHY_NUDGE_WINDOW = ("the minute sweep delivers whatever a skipped nudge left, so a longer "
                    "window only delays; the window is also a cache timeout in whole seconds")
WHY_HEARTBEAT = ("each beat is a write per worker process; a stopped cluster still looks alive "
                 "for three intervals, so more than an hour would hide a stop for three hours")
WHY_JITTER = "the random share of each wait: 0 is none, 1 is all of it"
WHY_TOKEN = "a short token can be guessed; generate one with secrets.token_urlsafe()"

# An error whose message is complete as it is (it names the key path itself).
EXPLAINED = "explained"


def _bridges(value: Any) -> Any:
    """BRIDGES through the bridges' own parser, whose messages name the bridge and key."""
    try:
        return parse_bridges(value)
    except ImproperlyConfigured as exc:
        raise PydanticCustomError(EXPLAINED, "{text}", {"text": str(exc)}) from None


Bridges = Annotated[dict[str, BridgeConfig], BeforeValidator(_bridges),
                    Expect("a dict of bridge name -> bridge settings (docs/bridges.md)")]


class IntegrationEventsSettings(BaseModel):
    """The validated settings; the defaults are the field defaults (see docs/settings.md)."""

    # strict: "3" is not 3 and True is not 1 (only an int may stand for a float); finite only.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)

    # Retries (CAP: FailedRetryCount, FailedRetryInterval, here the base of a backoff).
    MAX_ATTEMPTS: int = Field(10, ge=1, le=1000, description=WHY_ATTEMPTS)
    RETRY_BASE_DELAY: Seconds = Field(5.0, ge=0, le=MAX_RETRY_DELAY, description=WHY_RETRY_DELAY)
    RETRY_MAX_DELAY: Seconds = Field(3600.0, ge=0, le=MAX_RETRY_DELAY, description=WHY_RETRY_DELAY)
    RETRY_JITTER: float = Field(0.5, ge=0, le=1, description=WHY_JITTER)
    # A topic this process does not know is retried this many times before it fails.
    UNKNOWN_TOPIC_MAX_ATTEMPTS: int = Field(10, ge=1, le=1000, description=WHY_ATTEMPTS)
    # Expiry (CAP: SucceedMessageExpiredAfter, FailedMessageExpiredAfter).
    SUCCEEDED_EXPIRY: Seconds = Field(1.0 * DAY, ge=0, le=MAX_EXPIRY, description=WHY_EXPIRY)
    FAILED_EXPIRY: Seconds = Field(15.0 * DAY, ge=0, le=MAX_EXPIRY, description=WHY_EXPIRY)
    # CAP: FailedThresholdCallback. Called with the failed ReceivedMessage or PublishedMessage
    # once per transition to failed, after it commits.
    FAILED_THRESHOLD_CALLBACK: Annotated[
        Callable[[Any], None] | Annotated[str, Field(pattern=r"^\w+(\.\w+)+$")] | None,
        Expect("a callable or a dotted path ('package.module.function')"),
    ] = None
    # Claims: a lease in database time, renewed every LEASE_SECONDS/3 while a handler runs.
    LEASE_SECONDS: Seconds = Field(30.0, ge=1, le=3600, description=WHY_LEASE)
    CLAIM_BATCH_SIZE: int = Field(100, ge=1, le=MAX_ROWS_PER_STATEMENT, description=WHY_ROWS)
    # First attempts of atomic handlers run this many to a transaction (a savepoint each),
    # for at most EXECUTE_BATCH_SECONDS; 1 runs every delivery in its own transaction.
    EXECUTE_BATCH_SIZE: int = Field(50, ge=1, le=MAX_ROWS_PER_STATEMENT, description=WHY_ROWS)
    EXECUTE_BATCH_SECONDS: Seconds = Field(1.0, ge=0, le=60, description=WHY_BATCH_SECONDS)
    # Run a batch without per-handler savepoints, and only if a handler fails, roll back and
    # run the same rows again with a savepoint each.
    EXECUTE_OPTIMISTIC: bool = True
    # Event chains: a message whose correlation sequence (hop count) would exceed this fails.
    MAX_HOPS: int = Field(32, ge=1, le=1000, description=WHY_HOPS)
    # Database aliases the worker serves (publish(using=...) must name one of them).
    DATABASES: Annotated[
        tuple[Annotated[str, Field(min_length=1)], ...],
        Expect("a non-empty list of database aliases"),
    ] = Field(("default",), min_length=1, strict=False)  # a list is fine; kept as a tuple
    # How long one django-q2 task keeps claiming work. None: a quarter of Q_CLUSTER["timeout"]
    # (at most 20 s, which also bounds a graceful stop).
    TASK_TIME_BUDGET: Seconds | None = Field(None, ge=1, le=3600, description=WHY_BUDGET)
    # How often an idle task looks for new or newly due work, and for how long.
    POLL_INTERVAL: Seconds = Field(0.1, ge=0.01, le=60, description=WHY_POLL)
    IDLE_LINGER: Seconds = Field(1.0, ge=0, le=3600, description=WHY_LINGER)
    # A task that sees the next due message within this horizon keeps (or hands on) watch.
    WAKE_HORIZON: Seconds = Field(120.0, ge=0, le=3600, description=WHY_HORIZON)
    # Hand-off ("nudge") to the cluster after commit; at most one per window per cache.
    NUDGE: bool = True
    NUDGE_WINDOW: Seconds = Field(1.0, ge=0, le=60, description=WHY_NUDGE_WINDOW)
    NUDGE_CACHE: Annotated[str, Expect("a cache alias")] = Field("default", min_length=1)
    # django-q2 options for the nudge tasks (e.g. {"cluster": "events", "broker": ...}).
    Q_OPTIONS: Annotated[dict[str, Any], Expect("a dict of django-q2 task options")] = Field(
        default_factory=dict)
    # Expiry cleanup deletes at most this many rows per statement.
    CLEANUP_BATCH_SIZE: int = Field(1000, ge=1, le=MAX_ROWS_PER_STATEMENT, description=WHY_ROWS)
    # Store the handler's traceback with the last error.
    STORE_TRACEBACK: bool = True
    # Every cluster writes a heartbeat this often; a node is alive while its last heartbeat is
    # at most three intervals old (integration_events.nodes).
    HEARTBEAT_INTERVAL: Seconds = Field(30.0, ge=0.1, le=3600, description=WHY_HEARTBEAT)
    # The seams (docs/extending.md): the classes that hand work to the task queue, pick the
    # rows a pass claims, and wait while idle (dotted paths), and the instrumentations.
    PUMP: DottedPath = "integration_events.tasks.DjangoQPump"
    CLAIM_STRATEGY: DottedPath = "integration_events.flow.FairShare"
    IDLE_WAITER: DottedPath = "integration_events.waiting.SleepWaiter"
    INSTRUMENTATION: Annotated[
        tuple[DottedPath, ...], Expect("a list of dotted paths of Instrumentation classes"),
    ] = Field((), strict=False)
    # The bearer token a Prometheus scraper sends to integration_events.urls' metrics view
    # (staff sessions need none). None: staff sessions only.
    METRICS_TOKEN: Annotated[
        str, Field(min_length=16), Expect("a string of at least 16 characters"),
    ] | None = Field(None, description=WHY_TOKEN)
    # Broker bridges to other services (docs/bridges.md): name -> settings.
    BRIDGES: Bridges = Field(default_factory=dict)

    def retry_strategy(self) -> RetryStrategy:
        """The default backoff, built from the RETRY_* keys and MAX_ATTEMPTS."""
        return RetryStrategy(
            max_attempts=self.MAX_ATTEMPTS,
            base_delay=self.RETRY_BASE_DELAY,
            max_delay=self.RETRY_MAX_DELAY,
            jitter=self.RETRY_JITTER,
        )

    def failed_threshold_callback(self) -> Callable[[Any], None] | None:
        """The callback, imported if it is a dotted path (ImproperlyConfigured if it cannot be)."""
        cb = self.FAILED_THRESHOLD_CALLBACK
        return resolve_callback(cb) if isinstance(cb, str) else cb

    def task_time_budget(self) -> float:
        """Seconds one django-q2 task keeps claiming work."""
        if self.TASK_TIME_BUDGET is not None:
            return self.TASK_TIME_BUDGET
        timeout = q_cluster_timeout()
        if timeout is None:
            return 60.0
        return max(1.0, min(20.0, timeout / 4))


class QClusterKeys(BaseModel):
    """The Q_CLUSTER keys this library reads; django-q2 owns (and reads) all the others."""

    model_config = ConfigDict(extra="ignore", frozen=True, strict=True, allow_inf_nan=False)

    timeout: Seconds | None = Field(None, gt=0, description=(
        "django-q2 kills a task that runs longer; the engine's task budget must fit inside it"))
    retry: Seconds = Field(60.0, gt=0, description=(  # 60: django-q2's default
        "django-q2 hands a task nobody acknowledged to another worker after this long, so it "
        "must be above timeout"))
    workers: int | None = Field(None, ge=1, description=(
        "left out (or None), django-q2 starts one worker per CPU"))


class Problem(NamedTuple):
    """One invalid key: the message names it, the hint says what to set."""

    key: str
    message: str
    hint: str


class SettingsError(ImproperlyConfigured):
    """A settings dict is invalid; ``problems`` holds one entry per key."""

    def __init__(self, problems: list[Problem]) -> None:
        super().__init__("\n".join(p.message for p in problems))
        self.problems = problems


def resolve_callback(path: str) -> Callable[[Any], None]:
    """Import a FAILED_THRESHOLD_CALLBACK dotted path; ImproperlyConfigured if it cannot be used."""
    key = f"{SETTING_NAME}['FAILED_THRESHOLD_CALLBACK']"
    try:
        target = import_string(path)
    except Exception as exc:  # importing runs the module: any error there is the same problem
        raise ImproperlyConfigured(
            f"{key} is {path!r}, which does not import: {type(exc).__name__}: {exc}"
        ) from exc
    if not callable(target):
        raise ImproperlyConfigured(
            f"{key} is {path!r}, which imports a {type(target).__name__}, not a callable."
        )
    return cast("Callable[[Any], None]", target)


def build_settings(raw: Any) -> IntegrationEventsSettings:
    """Validate an INTEGRATION_EVENTS dict (None: all defaults); SettingsError names each key."""
    model = _validate(IntegrationEventsSettings, SETTING_NAME, {} if raw is None else raw)
    problems = []
    if model.RETRY_MAX_DELAY < model.RETRY_BASE_DELAY:
        problems.append(Problem(
            "RETRY_MAX_DELAY",
            f"{SETTING_NAME}['RETRY_MAX_DELAY'] ({model.RETRY_MAX_DELAY:g}) must not be below "
            f"RETRY_BASE_DELAY ({model.RETRY_BASE_DELAY:g}).",
            "Raise RETRY_MAX_DELAY (the cap of one wait) or lower RETRY_BASE_DELAY.",
        ))
    if len(set(model.DATABASES)) < len(model.DATABASES):
        problems.append(Problem(
            "DATABASES", f"{SETTING_NAME}['DATABASES'] names an alias twice: {model.DATABASES}.",
            "List each database alias once.",
        ))
    if problems:
        raise SettingsError(problems)
    return model


def read_q_cluster() -> QClusterKeys:
    """The Q_CLUSTER keys this library reads, validated (SettingsError names each bad key)."""
    raw = getattr(settings, Q_CLUSTER_NAME, None)
    return _validate(QClusterKeys, Q_CLUSTER_NAME, {} if raw is None else raw)


def q_cluster_timeout() -> float | None:
    """django-q2's task timeout in seconds, or None when Q_CLUSTER sets none."""
    return read_q_cluster().timeout


M = TypeVar("M", bound=BaseModel)


def _validate(model: type[M], name: str, raw: Any) -> M:
    if not isinstance(raw, dict):
        raise SettingsError([Problem(
            "", f"{name} must be a dict, got {type(raw).__name__}.",
            f"Set {name} = {{...}} in your settings module.",
        )])
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        errors = exc.errors()
        keys = dict.fromkeys(str(e["loc"][0]) for e in errors if e["loc"])
        explained = {str(e["loc"][0]): e["msg"] for e in errors
                     if e["loc"] and e["type"] == EXPLAINED}
        raise SettingsError([_problem(model, name, key, raw, explained.get(key))
                             for key in keys]) from None


def _problem(model: type[BaseModel], name: str, key: str, raw: dict[str, Any],
             explained: str | None = None) -> Problem:
    fields = model.model_fields
    if key not in fields:
        known = sorted(fields)
        close = get_close_matches(key, known)
        guess = f"Did you mean {close[0]!r}? " if close else ""
        return Problem(
            key,
            f"{name} has an unknown key {key!r}. {guess}Known keys: {', '.join(known)}.",
            f"{guess}Remove {key!r} or rename it to one of the known keys.",
        )
    field = fields[key]
    expected = describe(field)
    why = f" Why: {field.description}." if field.description else ""
    hint = f"Set {name}[{key!r}] to {expected}"
    if name == SETTING_NAME:
        default = field.get_default(call_default_factory=True)
        hint += f", or leave it out for the default ({default!r})"
    message = explained or f"{name}[{key!r}] must be {expected}, got {_show(raw[key])}.{why}"
    return Problem(key, message, hint + ".")


def describe(field: FieldInfo) -> str:
    """A field's allowed values in words, e.g. 'a number of seconds from 1 to 3600'."""
    annotation, metadata, optional = _unwrap(field)
    expect = next((m.text for m in metadata if isinstance(m, Expect)), None)
    if expect is None:
        unit = next((f" of {m.name}" for m in metadata if isinstance(m, Unit)), "")
        noun = {bool: "True or False", int: "a whole number", float: "a number"}.get(
            annotation, "a non-empty string")
        expect = noun if annotation is bool else noun + unit + _range(metadata)
    return expect + (" or None" if optional else "")


def _unwrap(field: FieldInfo) -> tuple[Any, list[Any], bool]:
    """(base type, constraint and marker metadata, whether None is allowed)."""
    annotation: Any = field.annotation
    metadata = list(field.metadata)
    optional = False
    if get_origin(annotation) in (Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        optional = len(args) < len(get_args(annotation))
        if len(args) == 1:
            annotation = args[0]
    if get_origin(annotation) is Annotated:
        annotation, *extra = get_args(annotation)
        metadata.extend(extra)
    return annotation, metadata, optional


def _range(metadata: list[Any]) -> str:
    bounds = {k: getattr(m, k) for m in metadata for k in ("ge", "gt", "le") if hasattr(m, k)}
    if "ge" in bounds and "le" in bounds:
        return f" from {_num(bounds['ge'])} to {_num(bounds['le'])}"
    if "gt" in bounds:
        return f" above {_num(bounds['gt'])}"
    if "ge" in bounds:
        return f" of at least {_num(bounds['ge'])}"
    return ""


def _num(value: float) -> str:
    text = str(int(value)) if float(value).is_integer() else f"{value:g}"
    if value >= 2 * DAY:
        text += f" ({value / DAY:g} days)"
    return text


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def get_close_matches(word: str, candidates: list[str]) -> list[str]:
    """Known names close to a misspelt one, best first."""
    from difflib import get_close_matches as close

    return close(word.upper(), candidates, n=1, cutoff=0.75) or close(word, candidates, n=1)


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
    if setting in (SETTING_NAME, Q_CLUSTER_NAME):
        _cache = None


setting_changed.connect(_reset)
