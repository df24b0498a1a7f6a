"""Recording a failed attempt: the retry decision, the compare-and-set that stores it, the
log line, and the signals and threshold callback once the change commits."""

from __future__ import annotations

import logging
import random
import traceback
import uuid
from functools import partial
from typing import Any

from django.db import transaction
from django.db.models.functions import Now
from django.utils import timezone

from .conf import get_settings
from .exceptions import IntegrationEventsError
from .instrumentation import Hooks
from .models import MessageBase, MessageStatus, ReceivedMessage, after
from .outcomes import Outcome
from .retry import Decision, GiveUp, RetryStrategy
from .signals import message_failed, message_retrying

logger = logging.getLogger("integration_events")

MAX_ERROR_LENGTH = 32_000


def error_type(exc: BaseException) -> str:
    """The kind of a failure as stored in ``error_type``: the exception's class name."""
    return type(exc).__qualname__[:100]


def describe_exception(exc: BaseException, *, with_traceback: bool = True) -> str:
    """``Kind: message`` (the short name for builtins and this package's own exceptions,
    module.Class otherwise), with the traceback after a blank line, capped in length."""
    kind = type(exc)
    short = kind.__module__ == "builtins" or isinstance(exc, IntegrationEventsError)
    name = kind.__qualname__ if short else f"{kind.__module__}.{kind.__qualname__}"
    text = f"{name}: {exc}"
    if with_traceback and exc.__traceback__ is not None:
        text += "\n\n" + "".join(traceback.format_exception(exc))
    if len(text) > MAX_ERROR_LENGTH:
        text = text[: MAX_ERROR_LENGTH - 40] + "\n... (truncated)"
    return text


def log_extra(row: MessageBase) -> dict[str, Any]:
    """The same fields as :func:`log_fields`, as a log record's ``extra`` (so a JSON formatter
    gets them as keys): message_id (a string), topic, group (inbox rows), attempt."""
    if isinstance(row, ReceivedMessage):
        return {"message_id": str(row.message_id), "topic": row.topic, "group": row.group,
                "attempt": row.attempts}
    return {"message_id": str(row.pk), "topic": getattr(row, "topic", ""),
            "attempt": row.attempts}


def log_fields(row: MessageBase) -> str:
    """message_id / topic / group / attempt as key=value pairs for a log line."""
    if isinstance(row, ReceivedMessage):
        return (f"message_id={row.message_id} topic={row.topic} group={row.group} "
                f"attempt={row.attempts}")
    return f"message_id={row.pk} topic={getattr(row, 'topic', '')} attempt={row.attempts}"


class Failures:
    """Records failed attempts on one database alias."""

    def __init__(self, using: str, hooks: Hooks, rng: random.Random | None = None) -> None:
        self.using = using
        self.hooks = hooks
        self.rng = rng

    def changes(self, row: MessageBase, exc: BaseException, strategy: RetryStrategy
                ) -> tuple[dict[str, Any], Decision]:
        """The column changes for ``row``'s failed attempt, and the retry decision."""
        error = describe_exception(exc, with_traceback=get_settings().STORE_TRACEBACK)
        base: dict[str, Any] = {"last_error": error, "error_type": error_type(exc)}
        age = (timezone.now() - row.created_at).total_seconds() \
            if strategy.max_age is not None and row.created_at else 0.0
        decision = strategy.decide(row.attempts, exc, self.rng, age=age)
        if isinstance(decision, GiveUp):
            return {**base, "status": MessageStatus.FAILED, "finished_at": Now(),
                    "expires_at": after(get_settings().FAILED_EXPIRY)}, decision
        return {**base, "status": MessageStatus.RETRYING,
                "next_attempt_at": after(decision.delay)}, decision

    def record(self, row: MessageBase, token: uuid.UUID | None, exc: BaseException,
               strategy: RetryStrategy) -> Outcome:
        """Move ``row`` to retrying or failed if ``token`` still holds it (None: a row locked
        by this transaction, its attempt counted by this write); returns RETRIED, FAILED, or
        LOST (another worker owns the row now). Signals fire after commit."""
        changes, decision = self.changes(row, exc, strategy)
        model = type(row)
        if not model.objects.using(self.using).finish([row.pk], token, **changes):
            logger.warning("lease lost before recording failure %s", log_fields(row),
                           extra=log_extra(row))
            return Outcome.LOST
        self.announce(row, changes["last_error"], decision)
        outcome = Outcome.FAILED if isinstance(decision, GiveUp) else Outcome.RETRIED
        if self.hooks.active:
            self.hooks.outcome(row, outcome, exc)
        return outcome

    def announce(self, row: MessageBase, error: str, decision: Decision) -> None:
        """Log the failure now; fire the signals (and the threshold callback) once the
        transition has committed."""
        first_line = error.split("\n", 1)[0]
        model = type(row)
        if isinstance(decision, GiveUp):
            logger.error("message failed %s error=%r", log_fields(row), first_line,
                         extra={**log_extra(row), "error": first_line})
            transaction.on_commit(partial(self.announce_failed, model, row.pk, error),
                                  using=self.using)
        else:
            logger.info("message retrying %s retry_in=%.3f error=%r", log_fields(row),
                        decision.delay, first_line,
                        extra={**log_extra(row), "retry_in": decision.delay, "error": first_line})
            transaction.on_commit(
                partial(message_retrying.send, sender=model, message=row, error=error,
                        retry_in=decision.delay),
                using=self.using,
            )

    def announce_failed(self, model: type[MessageBase], pk: Any, error: str) -> None:
        """Signal and threshold callback, once per committed transition to failed."""
        message = model.objects.using(self.using).filter(pk=pk).first()
        if message is None:
            return
        message_failed.send(sender=model, message=message, error=error)
        try:
            callback = get_settings().failed_threshold_callback()
            if callback is not None:
                callback(message)
        except Exception:
            # Never let a broken callback (or a path that no longer imports) undo or repeat
            # the transition: it has committed already.
            logger.exception("FAILED_THRESHOLD_CALLBACK raised message_pk=%s", pk,
                             extra={"message_pk": str(pk)})
