"""One INTEGRATION_EVENTS["BRIDGES"][name] entry, parsed and validated.

``parse_bridges(raw)`` takes the raw BRIDGES dict and returns a ``BridgeConfig`` per name,
or raises ImproperlyConfigured naming the bridge and key. Every key, its default and its
meaning are listed in docs/bridges.md.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from enum import StrEnum
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from django.core.exceptions import ImproperlyConfigured
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from . import topics
from .naming import Naming

# conf.MAX_ROWS_PER_STATEMENT (conf imports this module): a claim's primary keys go into one
# IN (...) list, and SQL Server takes at most 2100 parameters per statement.
_MAX_ROWS = 2000

SETTING = 'INTEGRATION_EVENTS["BRIDGES"]'
# CAP's RabbitMQOptions.QueueArguments.MessageTTL default: 10 days in milliseconds. A CAP
# service declaring the same queue with another value is refused by RabbitMQ (406).
CAP_MESSAGE_TTL_MS = 864_000_000
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_RESERVED_ARGUMENTS = {
    "x-message-ttl": "QUEUE_MESSAGE_TTL",
    "x-dead-letter-exchange": "DEAD_LETTER_EXCHANGE",
}


class Transport(StrEnum):
    """The broker protocol of a bridge."""

    AMQP = "amqp"
    """RabbitMQ (AMQP 0-9-1) in DotNetCore.CAP's wire format, through pika."""


class BridgeConfig(BaseModel):
    """A validated bridge. Attribute names are the setting keys in lower case."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    name: str = Field(alias="NAME")
    transport: Transport = Field(alias="TRANSPORT")
    url: str = Field(alias="URL")
    # The full exchange name as CAP declares it: CAP appends ".<version>" unless it is v1.
    exchange: str = Field(default="cap.default.router", alias="EXCHANGE", min_length=1)
    send: tuple[str, ...] = Field(default=(), alias="SEND")
    receive: tuple[str, ...] = Field(default=(), alias="RECEIVE")
    # This service's queue (CAP: the group name plus "." and the version).
    queue: str | None = Field(default=None, alias="QUEUE", min_length=1, max_length=255)
    naming: Naming = Field(default=Naming.PASCAL, alias="NAMING")
    # Received bodies over this size are rejected (stored size-capped, with the reason).
    max_body_bytes: int = Field(default=1_048_576, alias="MAX_BODY_BYTES", ge=1)
    # Unacknowledged messages the broker hands the consumer at once (AMQP's limit: 65535).
    prefetch: int = Field(default=100, alias="PREFETCH", ge=1, le=65535)
    # Messages sent per publish, confirmed together; the bridge's group also claims up to
    # this many rows at once, whatever CLAIM_BATCH_SIZE is (a claim, a publish, one wait for
    # the confirms and one write: bench/bridge.py measures 100 against 500).
    batch_size: int = Field(default=500, alias="BATCH_SIZE", ge=1, le=_MAX_ROWS)
    # The queue's x-message-ttl in milliseconds, exactly as CAP declares it; None: omitted.
    queue_message_ttl: int | None = Field(
        default=CAP_MESSAGE_TTL_MS, alias="QUEUE_MESSAGE_TTL", ge=0
    )
    # Further queue arguments CAP was configured with (e.g. {"x-queue-type": "quorum"}).
    queue_arguments: dict[str, str | int | bool] = Field(default_factory=dict,
                                                        alias="QUEUE_ARGUMENTS")
    # Where the broker puts messages the consumer rejects (x-dead-letter-exchange).
    dead_letter_exchange: str | None = Field(default=None, alias="DEAD_LETTER_EXCHANGE",
                                             min_length=1)
    # A message that could not be sent for this long (seconds) fails; outages do not count
    # attempts, only age.
    fail_after: float = Field(default=3 * 24 * 3600.0, alias="FAIL_AFTER", gt=0)
    # Send messages that came in over a bridge out again over this one.
    forward_received: bool = Field(default=False, alias="FORWARD_RECEIVED")
    # Send under the claim's row locks (PostgreSQL, MariaDB): each row written once,
    # plus a claim journal row per batch (docs/bridges.md, "Locked claims"); False: leased.
    locked_claims: bool = Field(default=True, alias="LOCKED_CLAIMS")
    # Claims of the bridge's group in flight in each worker task while a backlog lasts
    # (locked claims only): the next batch is claimed, loaded and encoded while the broker
    # confirms the one before. Each one past the first is a thread with its own database
    # connections (docs/bridges.md, "Senders").
    senders: int = Field(default=2, alias="SENDERS", ge=1, le=8)
    connect_timeout: float = Field(default=10.0, alias="CONNECT_TIMEOUT", gt=0)
    confirm_timeout: float = Field(default=30.0, alias="CONFIRM_TIMEOUT", gt=0)

    @field_validator("send", "receive", mode="before")
    @classmethod
    def _patterns(cls, value: Any) -> Any:
        if isinstance(value, str):
            raise ValueError("must be a list of topic patterns, not one string")
        if isinstance(value, list | tuple):
            for pattern in value:
                error = topics.pattern_error(pattern)
                if error:
                    raise ValueError(f"pattern {pattern!r} {error}")
        return value

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        scheme = urlsplit(value).scheme
        if scheme not in ("amqp", "amqps"):
            raise ValueError(
                f"must be an amqp:// or amqps:// URL, got scheme {scheme or 'none'!r}"
            )
        if not urlsplit(value).hostname:
            raise ValueError("names no host")
        return value

    @field_validator("queue_arguments")
    @classmethod
    def _queue_arguments(cls, value: dict[str, Any]) -> dict[str, Any]:
        for key in value:
            if key in _RESERVED_ARGUMENTS:
                raise ValueError(f"{key!r} is set through {_RESERVED_ARGUMENTS[key]}")
        return value

    def sends(self, topic: str) -> bool:
        """Whether a local message on ``topic`` goes out over this bridge."""
        return topics.matches_any(self.send, topic)

    def receives(self, topic: str) -> bool:
        """Whether a message on ``topic`` is one this bridge takes in."""
        return topics.matches_any(self.receive, topic)

    @property
    def safe_url(self) -> str:
        """The URL without its password, for logs and the admin."""
        parts = urlsplit(self.url)
        if parts.password is None:
            return self.url
        netloc = f"{parts.username}:***@{parts.hostname}"
        if parts.port:
            netloc += f":{parts.port}"
        return urlunsplit(parts._replace(netloc=netloc))

    def queue_declare_arguments(self) -> dict[str, Any]:
        """The x-arguments this service's queue is declared with (CAP's, plus ours)."""
        arguments: dict[str, Any] = {}
        if self.queue_message_ttl is not None:
            arguments["x-message-ttl"] = self.queue_message_ttl
        arguments.update(self.queue_arguments)
        if self.dead_letter_exchange:
            arguments["x-dead-letter-exchange"] = self.dead_letter_exchange
        return arguments


_KEYS = sorted(
    str(f.alias) for name, f in BridgeConfig.model_fields.items() if name != "name"
)


def parse_bridge(name: str, raw: Any) -> BridgeConfig:
    """Validate one bridge entry; ImproperlyConfigured names the bridge and the key."""
    where = f'{SETTING}["{name}"]'
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ImproperlyConfigured(
            f"{SETTING} has a bridge named {name!r}: a name is 1-64 letters, digits, '_', "
            "'.' or '-', starting with a letter or digit (it becomes the group "
            "'bridge:<name>')."
        )
    if not isinstance(raw, Mapping):
        raise ImproperlyConfigured(f"{where} must be a dict, got {type(raw).__name__}.")
    unknown = sorted(set(raw) - set(_KEYS))
    if unknown:
        hints = [
            f"{key!r} (did you mean {close[0]!r}?)" if close else repr(key)
            for key in unknown
            for close in [difflib.get_close_matches(str(key), _KEYS, n=1)]
        ]
        raise ImproperlyConfigured(
            f"{where} has unknown key(s) {', '.join(hints)}. Known keys: {', '.join(_KEYS)}."
        )
    for required in ("TRANSPORT", "URL"):
        if required not in raw:
            raise ImproperlyConfigured(f'{where} needs "{required}". See docs/bridges.md.')
    try:
        config = BridgeConfig.model_validate({**raw, "NAME": name})
    except ValidationError as exc:
        raise ImproperlyConfigured(_describe(where, exc)) from exc
    if config.receive and not config.queue:
        raise ImproperlyConfigured(
            f'{where} has RECEIVE patterns but no "QUEUE": name this service\'s queue '
            "(CAP: the group name plus the version, e.g. 'inventory.v1')."
        )
    return config


def _describe(where: str, exc: ValidationError) -> str:
    lines = []
    for error in exc.errors():
        key = str(error["loc"][0]) if error["loc"] else "?"
        message = str(error["msg"]).removeprefix("Value error, ")
        if error["type"] == "enum" and key == "TRANSPORT":
            message = f"unknown transport {error.get('input')!r}; known: " + ", ".join(
                repr(t.value) for t in Transport
            )
        if error["type"] == "enum" and key == "NAMING":
            message = f"must be one of {', '.join(repr(n.value) for n in Naming)}"
        lines.append(f'{where}["{key}"]: {message} (got {error.get("input")!r}).')
    return " ".join(lines) + " See docs/bridges.md."


def parse_bridges(raw: Any) -> dict[str, BridgeConfig]:
    """Every bridge of INTEGRATION_EVENTS["BRIDGES"] (None or {} for none), by name."""
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise ImproperlyConfigured(
            f"{SETTING} must be a dict of bridge name -> settings, got {type(raw).__name__}."
        )
    return {name: parse_bridge(name, entry) for name, entry in raw.items()}
