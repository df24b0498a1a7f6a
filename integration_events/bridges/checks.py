"""System-check messages for the BRIDGES setting (registered by integration_events.checks,
which calls ``check_bridges``; docs/bridges.md lists every id).

Ids integration_events.E100-E199 / W100-W199 are kept for bridges.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from django.core.checks import CheckMessage, Error, Warning
from django.core.exceptions import ImproperlyConfigured

from . import topics
from .config import SETTING, BridgeConfig, Transport, parse_bridge, parse_bridges

# The module each transport needs, and the extra that installs it.
LIBRARIES = {Transport.AMQP: ("pika", "amqp")}
TRANSPORTS = tuple(t.value for t in Transport)
HINT = "See docs/bridges.md for every key."


def library_available(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def check_bridges(
    raw: Any,
    known_topics: Iterable[str],
    *,
    has_library: Callable[[str], bool] = library_available,
) -> list[CheckMessage]:
    """Every problem of the raw BRIDGES setting, as Django check messages (each bridge on
    its own, so one broken bridge does not hide another's problems)."""
    if raw is None:
        return []
    if not isinstance(raw, Mapping):
        try:
            parse_bridges(raw)
        except ImproperlyConfigured as exc:
            return [Error(str(exc), hint=HINT, id="integration_events.E100")]
    known = sorted(known_topics)
    messages: list[CheckMessage] = []
    for name, entry in raw.items():
        transport = entry.get("TRANSPORT") if isinstance(entry, Mapping) else None
        if transport is not None and transport not in TRANSPORTS:
            messages.append(Error(
                f'{SETTING}["{name}"]["TRANSPORT"] is {transport!r}, not a known transport.',
                hint="Known transports: " + ", ".join(repr(t) for t in TRANSPORTS)
                + " (RabbitMQ in DotNetCore.CAP's wire format).",
                id="integration_events.E104",
            ))
            continue
        try:
            config = parse_bridge(name, entry)
        except ImproperlyConfigured as exc:
            messages.append(Error(str(exc), hint=HINT, id="integration_events.E100"))
            continue
        messages += _check_one(config, known, has_library)
    return messages


def _check_one(config: BridgeConfig, known: list[str],
               has_library: Callable[[str], bool]) -> list[CheckMessage]:
    where = f'INTEGRATION_EVENTS["BRIDGES"]["{config.name}"]'
    messages: list[CheckMessage] = []
    module, extra = LIBRARIES[config.transport]
    if not has_library(module):
        messages.append(Error(
            f"{where} uses TRANSPORT {config.transport.value!r}, which needs {module}, "
            "and it is not installed.",
            hint=f"pip install 'django-integration-events[{extra}]'",
            id="integration_events.E101",
        ))
    for key, patterns in (("SEND", config.send), ("RECEIVE", config.receive)):
        for pattern in patterns:
            if not any(topics.matches(pattern, topic) for topic in known):
                messages.append(Warning(
                    f'{where}["{key}"] pattern {pattern!r} matches no known topic.',
                    hint="Check the spelling against your topics constants; a pattern for "
                         "topics declared later (or only remotely) can stay.",
                    id="integration_events.W102",
                ))
    for overlap in topics.overlaps(config.send, config.receive):
        messages.append(Error(
            f"{where}: SEND {overlap.send!r} and RECEIVE {overlap.receive!r} both match "
            f"{overlap.example!r}: messages this service sends would come straight back.",
            hint="Narrow one of the patterns so that no topic is both sent and received "
                 "over the same bridge.",
            id="integration_events.E103",
        ))
    return messages
