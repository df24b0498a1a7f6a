"""System checks: configuration the engine relies on, and topic mistakes (typos, duplicates,
mismatched handler annotations) caught before they ship.

Ids: integration_events.E001-E009, W001-W009 and E020-E029 for configuration, E030-E039
for domain events (domain_checks.py), E010-E019 /
W010-W019 for topics and subscribers, E100-E199 / W100-W199 for broker bridges
(bridges/checks.py, listed in docs/bridges.md). Hints say what to set (a setting, a key, an option),
never a file of this repository: they are read by people who installed the wheel.

``manage.py qcluster`` runs the checks before it starts (Django runs them for every command
that does not opt out), so a configuration error here keeps a cluster from starting with it.
"""

from __future__ import annotations

import inspect
import re
from typing import Any

from django.conf import settings
from django.core import checks
from django.core.exceptions import ImproperlyConfigured

from .conf import (
    SETTING_NAME,
    IntegrationEventsSettings,
    QClusterKeys,
    SettingsError,
    get_settings,
    read_q_cluster,
    resolve_callback,
)
from .events import declarations
from .registry import all_subscriptions

# {module}.{event} or {module}.{aggregate}.{event}, kebab-case segments.
TOPIC_PATTERN = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*(\.[a-z][a-z0-9]*(-[a-z0-9]+)*){1,2}$")

RECOMMENDED_Q = "e.g. Q_CLUSTER = {..., 'timeout': 120, 'retry': 180}"
SQLITE_OPTIONS = ("{'transaction_mode': 'IMMEDIATE', 'timeout': 20, "
                  "'init_command': 'PRAGMA journal_mode=WAL;'}")


@checks.register(checks.Tags.compatibility)
def check_configuration(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """INTEGRATION_EVENTS, the Q_CLUSTER keys the engine reads, and how they fit together."""
    errors: list[checks.CheckMessage] = []
    try:
        s: IntegrationEventsSettings | None = get_settings()
    except SettingsError as exc:
        s = None
        # BRIDGES has checks of its own (check_bridges, E100-E199).
        errors += [checks.Error(p.message, hint=p.hint, id="integration_events.E001")
                   for p in exc.problems if p.key != "BRIDGES"]
    if "django_q" not in settings.INSTALLED_APPS:
        errors.append(checks.Error(
            "django_q is not in INSTALLED_APPS: nothing would run the engine.",
            hint="Add 'django_q' to INSTALLED_APPS and start `manage.py qcluster`.",
            id="integration_events.E002",
        ))
    try:
        q: QClusterKeys | None = read_q_cluster()
    except SettingsError as exc:
        q = None
        errors += [_q_cluster_error(p.key, p.message) for p in exc.problems]
    if q is not None:
        errors += _q_cluster_timing(q, s)
    if s is not None:
        errors += _callback_errors(s) + _nudge_errors(s) + _database_errors(s, q)
    return errors


def _q_cluster_error(key: str, message: str) -> checks.CheckMessage:
    hints = {
        "timeout": "Set Q_CLUSTER['timeout'] to a number of seconds below 'retry' "
        f"({RECOMMENDED_Q}).",
        "retry": "Set Q_CLUSTER['retry'] to a number of seconds above 'timeout' "
        f"({RECOMMENDED_Q}), or leave it out for django-q2's 60.",
        "workers": "Set Q_CLUSTER['workers'] to a whole number of at least 1, or leave it out "
        "for one per CPU.",
    }
    return checks.Error(message, hint=hints.get(key, "Set Q_CLUSTER to a dict."),
                        id="integration_events.E020")


def _q_cluster_timing(
    q: QClusterKeys, s: IntegrationEventsSettings | None
) -> list[checks.CheckMessage]:
    """The cross-setting rule: task budget <= timeout / 2 < timeout < retry."""
    if q.timeout is None:
        return [checks.Error(
            "Q_CLUSTER has no 'timeout': a hung handler would hold a worker for ever.",
            hint=f"Set Q_CLUSTER['timeout'] and a larger 'retry' ({RECOMMENDED_Q}).",
            id="integration_events.E003",
        )]
    if q.timeout >= q.retry:
        return [checks.Error(
            f"Q_CLUSTER['timeout'] ({q.timeout:g}) is not below Q_CLUSTER['retry'] "
            f"({q.retry:g}): django-q2 would hand a still-running task to a second worker.",
            hint=f"Make 'retry' larger than 'timeout' ({RECOMMENDED_Q}).",
            id="integration_events.E004",
        )]
    if s is not None and s.task_time_budget() > q.timeout / 2:
        return [checks.Error(
            f"{SETTING_NAME}['TASK_TIME_BUDGET'] ({s.task_time_budget():g}s) is more than "
            f"half of Q_CLUSTER['timeout'] ({q.timeout:g}s): a handler started near the end of "
            "a task would be killed by django-q2's timeout.",
            hint=f"Set {SETTING_NAME}['TASK_TIME_BUDGET'] to at most {q.timeout / 2:g} (or leave "
            "it out for a quarter of the timeout), or raise Q_CLUSTER['timeout'].",
            id="integration_events.E005",
        )]
    return []


def _callback_errors(s: IntegrationEventsSettings) -> list[checks.CheckMessage]:
    """Import a dotted FAILED_THRESHOLD_CALLBACK now, not at the first dead letter."""
    if not isinstance(s.FAILED_THRESHOLD_CALLBACK, str):
        return []
    try:
        resolve_callback(s.FAILED_THRESHOLD_CALLBACK)
    except ImproperlyConfigured as exc:
        return [checks.Error(
            str(exc),
            hint=f"Set {SETTING_NAME}['FAILED_THRESHOLD_CALLBACK'] to the dotted path of a "
            "function that takes the failed message, e.g. 'myapp.alerts.on_dead_letter', and "
            "make sure its module imports (or set it to None).",
            id="integration_events.E021",
        )]
    return []


def _nudge_errors(s: IntegrationEventsSettings) -> list[checks.CheckMessage]:
    errors: list[checks.CheckMessage] = []
    if s.IDLE_LINGER < s.NUDGE_WINDOW:
        errors.append(checks.Error(
            f"IDLE_LINGER ({s.IDLE_LINGER:g}) is shorter than NUDGE_WINDOW "
            f"({s.NUDGE_WINDOW:g}): an event published just after a nudge could wait for the "
            "next sweep.",
            hint=f"Set {SETTING_NAME}['IDLE_LINGER'] to at least NUDGE_WINDOW "
            f"({s.NUDGE_WINDOW:g}), or lower NUDGE_WINDOW.",
            id="integration_events.E006",
        ))
    caches = getattr(settings, "CACHES", {})
    cache_conf = caches.get(s.NUDGE_CACHE)
    if s.NUDGE and cache_conf is None:
        errors.append(checks.Error(
            f"{SETTING_NAME}['NUDGE_CACHE'] is {s.NUDGE_CACHE!r}, not a configured cache.",
            hint=f"Add a cache named {s.NUDGE_CACHE!r} to CACHES, or set "
            f"{SETTING_NAME}['NUDGE_CACHE'] to one of: {', '.join(map(repr, caches)) or '-'}.",
            id="integration_events.E008",
        ))
    elif s.NUDGE and cache_conf and cache_conf.get("BACKEND", "").endswith("DummyCache"):
        errors.append(checks.Error(
            "The nudge cache is a DummyCache: nudges could not be coalesced and every publish "
            "would enqueue its own django-q2 task.",
            hint=f"Point {SETTING_NAME}['NUDGE_CACHE'] at a real cache (LocMem, file, Redis, "
            "database).",
            id="integration_events.E009",
        ))
    return errors


def _database_errors(
    s: IntegrationEventsSettings, q: QClusterKeys | None
) -> list[checks.CheckMessage]:
    errors: list[checks.CheckMessage] = []
    for alias in s.DATABASES:
        db = settings.DATABASES.get(alias)
        if db is None:
            errors.append(checks.Error(
                f"{SETTING_NAME}['DATABASES'] names {alias!r}, which is not in DATABASES.",
                hint=f"Add {alias!r} to DATABASES, or remove it from "
                f"{SETTING_NAME}['DATABASES'].",
                id="integration_events.E007",
            ))
            continue
        if not db.get("ENGINE", "").endswith("sqlite3"):
            continue
        if q is not None and q.workers is not None and q.workers > 2:
            errors.append(checks.Warning(
                f"Database {alias!r} is SQLite and Q_CLUSTER['workers'] is {q.workers}: SQLite "
                "has one writer at a time, so more workers mostly wait and can make publishers "
                "in web requests wait for the lock.",
                hint="Set Q_CLUSTER['workers'] to 1 or 2 with SQLite, or use PostgreSQL or "
                "MariaDB for more.",
                id="integration_events.W001",
            ))
        if db.get("OPTIONS", {}).get("transaction_mode") != "IMMEDIATE":
            errors.append(checks.Warning(
                f"SQLite database {alias!r} does not use transaction_mode='IMMEDIATE': "
                "concurrent writers can fail at once with 'database is locked'.",
                hint=f"Set DATABASES[{alias!r}]['OPTIONS'] = {SQLITE_OPTIONS} (Django 5.1+): "
                "writers then queue for the lock instead of failing, and readers do not block "
                "them.",
                id="integration_events.W002",
            ))
    return errors


@checks.register(checks.Tags.compatibility)
def check_bridges(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """INTEGRATION_EVENTS["BRIDGES"]: E100-E199 / W100-W199 (docs/bridges.md)."""
    from .bridges.checks import check_bridges as check
    from .events import known_topics

    raw = getattr(settings, SETTING_NAME, None)
    return check(raw.get("BRIDGES") if isinstance(raw, dict) else None, known_topics())


@checks.register(checks.Tags.models)
def check_topics(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    decls = declarations()
    errors = _check_declarations(decls)
    for sub in all_subscriptions():
        errors.extend(_check_subscription(sub, decls))
    return errors + _check_group_limits(all_subscriptions())


def _check_group_limits(subs: list[Any]) -> list[checks.CheckMessage]:
    """E013: two subscriptions of one group declare different flow-control limits (the
    limits hold for the whole group, so they must agree)."""
    seen: dict[str, Any] = {}
    errors: list[checks.CheckMessage] = []
    for sub in subs:
        if sub.max_concurrency is None and sub.rate_limit is None:
            continue
        first = seen.setdefault(sub.group, sub)
        if (first.max_concurrency, first.rate_limit) != (sub.max_concurrency, sub.rate_limit):
            errors.append(checks.Error(
                f"Group {sub.group!r} declares different limits: {first.dotted_path} has "
                f"max_concurrency={first.max_concurrency}, rate_limit={first.rate_limit}; "
                f"{sub.dotted_path} has max_concurrency={sub.max_concurrency}, "
                f"rate_limit={sub.rate_limit}.",
                hint="Limits hold for the whole group: give every @subscriber of the group the "
                "same max_concurrency and rate_limit (or set them on one only).",
                obj=sub.handler,
                id="integration_events.E013",
            ))
    return errors


def _check_declarations(decls: dict[str, Any]) -> list[checks.CheckMessage]:
    """E011 (a topic declared twice), W013 (declared inline), W014 (naming convention)."""
    errors: list[checks.CheckMessage] = []
    for topic, items in sorted(decls.items()):
        if len(items) > 1:
            errors.append(checks.Error(
                f"Topic {topic!r} is declared by {len(items)} event classes: "
                + ", ".join(d.dotted_path for d in items) + ".",
                hint="Each topic belongs to exactly one event class; rename one of the topics.",
                obj=items[1].event_class,
                id="integration_events.E011",
            ))
        for d in items:
            if not d.topic_was_constant:
                errors.append(checks.Warning(
                    f"{d.dotted_path} declares its topic {topic!r} as an inline string.",
                    hint="Take topics from the app's topics.py constants (a StrEnum) so that "
                    "a typo is an AttributeError, not a silent new topic.",
                    obj=d.event_class,
                    id="integration_events.W013",
                ))
        if not TOPIC_PATTERN.match(topic):
            errors.append(checks.Warning(
                f"Topic {topic!r} does not follow the naming convention.",
                hint="Use kebab-case {module}.{event} or {module}.{aggregate}.{event}, e.g. "
                "'equipment.equipment-created'.",
                obj=items[0].event_class,
                id="integration_events.W014",
            ))
    return errors


def _check_subscription(sub: Any, decls: dict[str, Any]) -> list[checks.CheckMessage]:
    """E010 (an undeclared topic), E012 (the annotation does not match), W013 (inline)."""
    expected = decls.get(sub.topic)
    if not expected:
        close = [t for t in sorted(decls) if _similar(t, sub.topic)]
        return [checks.Error(
            f"Subscriber {sub.dotted_path} (group {sub.group!r}) listens to topic "
            f"{sub.topic!r}, which no event class declares.",
            hint=(f"Did you mean {close[0]!r}? " if close else "")
            + "Subscribe with the topics constant of the event you want.",
            obj=sub.handler,
            id="integration_events.E010",
        )]
    errors: list[checks.CheckMessage] = []
    event_class = expected[0].event_class
    # A pass-through group (a broker bridge) delivers the stored JSON: no annotation to check.
    if not sub.raw and sub.event_type is None:
        written = _first_annotation(sub.handler)
        problem = (
            f"annotates its first parameter as {written!r}, which does not resolve to an "
            "IntegrationEvent subclass when the module is loaded (imported only under "
            "TYPE_CHECKING, or a typo?)"
            if written else "has no IntegrationEvent annotation on its first parameter"
        )
        errors.append(checks.Error(
            f"Subscriber {sub.dotted_path} {problem}, so its payload cannot be validated.",
            hint=f"Annotate it: def {sub.handler.__name__}(event: "
            f"{event_class.__qualname__}, context: MessageContext) -> None",
            obj=sub.handler,
            id="integration_events.E012",
        ))
    elif not sub.raw and not issubclass(event_class, sub.event_type):
        errors.append(checks.Error(
            f"Subscriber {sub.dotted_path} is annotated with "
            f"{sub.event_type.__qualname__}, but topic {sub.topic!r} carries "
            f"{event_class.__qualname__}.",
            hint=f"Annotate the event parameter as {event_class.__qualname__}, or "
            "subscribe to the topic of the event you annotated.",
            obj=sub.handler,
            id="integration_events.E012",
        ))
    if not sub.topic_was_constant:
        errors.append(checks.Warning(
            f"Subscriber {sub.dotted_path} names its topic {sub.topic!r} as an inline string.",
            hint="Use the topics constant, e.g. @subscriber(AccountsTopics.USER_DELETED).",
            obj=sub.handler,
            id="integration_events.W013",
        ))
    return errors


def _first_annotation(handler: Any) -> str:
    """The first parameter's annotation as written ("" if there is none)."""
    try:
        params = list(inspect.signature(handler).parameters.values())
    except (TypeError, ValueError):
        return ""
    if not params or params[0].annotation is inspect.Parameter.empty:
        return ""
    annotation = params[0].annotation
    return annotation if isinstance(annotation, str) else getattr(
        annotation, "__qualname__", repr(annotation)
    )


def _similar(a: str, b: str) -> bool:
    """Cheap typo detector: same length +-2 and most characters in common."""
    from difflib import SequenceMatcher

    return SequenceMatcher(None, a, b).ratio() > 0.8
