"""System checks: configuration the engine relies on, and topic mistakes (typos, duplicates,
mismatched handler annotations) caught before they ship.

Ids: integration_events.E001-E009 / W001-W009 for configuration, E010-E019 / W010-W019 for
topics and subscribers.
"""

from __future__ import annotations

import re
from typing import Any

from django.conf import settings
from django.core import checks
from django.core.exceptions import ImproperlyConfigured

from .conf import get_settings, q_cluster_timeout

# {module}.{event} or {module}.{aggregate}.{event}, kebab-case segments.
TOPIC_PATTERN = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*(\.[a-z][a-z0-9]*(-[a-z0-9]+)*){1,2}$")


@checks.register(checks.Tags.compatibility)
def check_configuration(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    errors: list[checks.CheckMessage] = []
    try:
        s = get_settings()
    except ImproperlyConfigured as exc:
        return [checks.Error(str(exc), hint="Fix the INTEGRATION_EVENTS setting.",
                             id="integration_events.E001")]

    if "django_q" not in settings.INSTALLED_APPS:
        errors.append(checks.Error(
            "django_q is not in INSTALLED_APPS: nothing would run the engine.",
            hint="Add 'django_q' to INSTALLED_APPS and start `manage.py qcluster`.",
            id="integration_events.E002",
        ))
    q = getattr(settings, "Q_CLUSTER", None) or {}
    timeout = q_cluster_timeout()
    retry = q.get("retry", 60)
    if timeout is None:
        errors.append(checks.Error(
            "Q_CLUSTER has no 'timeout': a hung handler would hold a worker for ever.",
            hint="Set Q_CLUSTER['timeout'] (e.g. 300) and a larger 'retry' (e.g. 360).",
            id="integration_events.E003",
        ))
    elif timeout >= float(retry):
        errors.append(checks.Error(
            f"Q_CLUSTER['timeout'] ({timeout:g}) is not below Q_CLUSTER['retry'] ({retry}): "
            "django-q2 would hand a still-running task to a second worker.",
            hint="Make 'retry' larger than 'timeout', e.g. timeout=300, retry=360.",
            id="integration_events.E004",
        ))
    elif s.task_time_budget() > timeout / 2:
        errors.append(checks.Error(
            f"INTEGRATION_EVENTS['TASK_TIME_BUDGET'] ({s.task_time_budget():g}s) is more than "
            f"half of Q_CLUSTER['timeout'] ({timeout:g}s): a handler started near the end of a "
            "task would be killed by django-q2's timeout.",
            hint="Lower TASK_TIME_BUDGET or raise Q_CLUSTER['timeout'].",
            id="integration_events.E005",
        ))
    if s.IDLE_LINGER < s.NUDGE_WINDOW:
        errors.append(checks.Error(
            f"IDLE_LINGER ({s.IDLE_LINGER:g}) is shorter than NUDGE_WINDOW "
            f"({s.NUDGE_WINDOW:g}): an event published just after a nudge could wait for the "
            "next sweep.",
            hint="Keep IDLE_LINGER >= NUDGE_WINDOW.",
            id="integration_events.E006",
        ))
    for alias in s.DATABASES:
        if alias not in settings.DATABASES:
            errors.append(checks.Error(
                f"INTEGRATION_EVENTS['DATABASES'] names {alias!r}, which is not in DATABASES.",
                id="integration_events.E007",
            ))
    cache_conf = getattr(settings, "CACHES", {}).get(s.NUDGE_CACHE)
    if s.NUDGE and cache_conf is None:
        errors.append(checks.Error(
            f"INTEGRATION_EVENTS['NUDGE_CACHE'] is {s.NUDGE_CACHE!r}, not a configured cache.",
            id="integration_events.E008",
        ))
    elif s.NUDGE and cache_conf and cache_conf.get("BACKEND", "").endswith("DummyCache"):
        errors.append(checks.Error(
            "The nudge cache is a DummyCache: nudges could not be coalesced and every publish "
            "would enqueue its own django-q2 task.",
            hint="Use a real cache (LocMem, file, Redis, database) for NUDGE_CACHE.",
            id="integration_events.E009",
        ))
    for alias in s.DATABASES:
        db = settings.DATABASES.get(alias, {})
        if not db.get("ENGINE", "").endswith("sqlite3"):
            continue
        workers = q.get("workers")
        if workers is not None and int(workers) > 2:
            errors.append(checks.Warning(
                f"Database {alias!r} is SQLite and Q_CLUSTER['workers'] is {workers}: SQLite has "
                "one writer at a time, so more workers mostly wait and can make publishers in "
                "web requests wait for the lock.",
                hint="Use 1 or 2 workers with SQLite, or PostgreSQL/MariaDB for more.",
                id="integration_events.W001",
            ))
        options = db.get("OPTIONS", {})
        if options.get("transaction_mode") != "IMMEDIATE":
            errors.append(checks.Warning(
                f"SQLite database {alias!r} does not use transaction_mode='IMMEDIATE': "
                "concurrent writers can fail at once with 'database is locked'.",
                hint="OPTIONS={'transaction_mode': 'IMMEDIATE', 'timeout': 20, "
                "'init_command': 'PRAGMA journal_mode=WAL;'} (see docs/databases.md).",
                id="integration_events.W002",
            ))
    return errors


@checks.register(checks.Tags.models)
def check_topics(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    from .events import declarations
    from .registry import all_subscriptions

    errors: list[checks.CheckMessage] = []
    decls = declarations()
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
    for sub in all_subscriptions():
        expected = decls.get(sub.topic)
        if not expected:
            known = sorted(decls)
            close = [t for t in known if _similar(t, sub.topic)]
            errors.append(checks.Error(
                f"Subscriber {sub.dotted_path} (group {sub.group!r}) listens to topic "
                f"{sub.topic!r}, which no event class declares.",
                hint=(f"Did you mean {close[0]!r}? " if close else "")
                + "Subscribe with the topics constant of the event you want.",
                obj=sub.handler,
                id="integration_events.E010",
            ))
            continue
        event_class = expected[0].event_class
        if sub.event_type is None:
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
        elif not issubclass(event_class, sub.event_type):
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
                f"Subscriber {sub.dotted_path} names its topic {sub.topic!r} as an inline "
                "string.",
                hint="Use the topics constant, e.g. @subscriber(AccountsTopics.USER_DELETED).",
                obj=sub.handler,
                id="integration_events.W013",
            ))
    return errors


def _first_annotation(handler: Any) -> str:
    """The first parameter's annotation as written ("" if there is none)."""
    import inspect

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
