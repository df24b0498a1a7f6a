"""The admin's actions: requeue, publish now, re-execute, skip. Each hands the selected keys to
``integration_events.operations`` a thousand at a time and writes one admin LogEntry per row
it changed (in the operation's transaction), shown on that row's history page."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.contrib import admin
from django.contrib.admin.models import CHANGE, LogEntry
from django.db import router
from django.db.models import QuerySet
from django.http import HttpRequest

from .. import operations
from ..models import MessageStatus, PublishedMessage, ReceivedMessage
from . import permissions

ACTION_BATCH_SIZE = 1000

# The actions are offered on the list and, for one message, on its detail page (Django 6.1
# added actions on the change form; older versions offer them on the list only).
_ActionLocation: Any = getattr(admin, "ActionLocation", None)
ON_DETAIL_PAGE_TOO: dict[str, Any] = (
    {"location": [_ActionLocation.CHANGE_LIST, _ActionLocation.CHANGE_FORM]}
    if _ActionLocation is not None else {}
)

# What the audit entries are worded from (and the fields each model's __str__ needs).
AUDIT_FIELDS: dict[type[Any], tuple[str, ...]] = {
    PublishedMessage: ("status", "attempts", "topic"),
    ReceivedMessage: ("status", "attempts", "topic", "group", "message"),
}

# Text of a LogEntry, from the row as it was before the action.
Describe = Callable[[Any], str]


def audit(request: HttpRequest, model: type[Any], before: dict[Any, Any], describe: Describe
          ) -> Callable[[list[Any]], None]:
    """An ``on_changed`` hook: one CHANGE LogEntry per changed key, worded from ``before``
    (the rows as read before the operation) by ``describe``."""

    def log(keys: list[Any]) -> None:
        user_id = request.user.pk
        if user_id is None:  # admin_view lets only logged-in staff act
            return
        by_message: dict[str, list[Any]] = {}
        for key in keys:
            row = before.get(key)
            if row is not None:
                by_message.setdefault(describe(row), []).append(row)
        for text, rows in by_message.items():
            # log_actions (Django 5.1+) writes them in one query; log_action is gone in 6.0.
            LogEntry.objects.db_manager(router.db_for_write(LogEntry)).log_actions(
                user_id, rows, CHANGE, change_message=text)

    return log


def in_batches(operation: Callable[..., int], request: HttpRequest, queryset: QuerySet[Any],
               describe: Describe, only: dict[str, Any] | None = None) -> tuple[int, int]:
    """Hand the selected keys to ``operation`` a thousand at a time, walking the primary key
    (so "select all" over a big filtered list neither loads every row nor builds one giant IN
    list, and rows the operation changes cannot upset the walk). ``only`` narrows what the
    operation may see (the rest counts as skipped). Returns (rows changed, rows selected)."""
    done = selected = 0
    keys = queryset.order_by("pk").values_list("pk", flat=True)
    last: Any = None
    while True:
        batch = list((keys if last is None else keys.filter(pk__gt=last))[:ACTION_BATCH_SIZE])
        if not batch:
            return done, selected
        # Read for the audit entries' wording (and their object names) only.
        rows = (queryset.model._default_manager.using(queryset.db).filter(pk__in=batch)
                .only(*AUDIT_FIELDS[queryset.model]))
        before = {row.pk: row for row in (rows.filter(**only) if only else rows)}
        hook = audit(request, queryset.model, before, describe)
        done += operation(list(before), using=queryset.db, on_changed=hook)
        selected += len(batch)
        last = batch[-1]


def _was(row: Any) -> str:
    return f"was {MessageStatus(row.status).label.lower()}"


@admin.action(description="Requeue selected messages (failed or succeeded)",
              permissions=["change"], **ON_DETAIL_PAGE_TOO)
def requeue(model_admin: Any, request: HttpRequest, queryset: QuerySet[PublishedMessage]
            ) -> None:
    # A succeeded message is requeued by running its received rows again: their permission.
    rerun = permissions.may_rerun_receipts(request, model_admin.admin_site)
    only = None if rerun else {"status__in": (MessageStatus.FAILED, MessageStatus.SKIPPED)}
    done, selected = in_batches(operations.requeue_published, request, queryset,
                                lambda row: f"Requeued ({_was(row)})", only)
    why = "only failed, skipped or succeeded messages can be requeued"
    if not rerun:
        why += ("; a succeeded one runs its received rows again, which needs the change "
                "permission on received messages")
    model_admin.report(request, done, selected, "requeued", why)


@admin.action(description="Publish selected delayed messages now", permissions=["change"],
              **ON_DETAIL_PAGE_TOO)
def publish_now(model_admin: Any, request: HttpRequest, queryset: QuerySet[PublishedMessage]
                ) -> None:
    done, selected = in_batches(operations.publish_now, request, queryset,
                                lambda row: f"Published now ({_was(row)})")
    model_admin.report(request, done, selected, "made due now",
                       "only pending or retrying messages wait for their time")


@admin.action(description="Re-execute selected messages", permissions=["change"],
              **ON_DETAIL_PAGE_TOO)
def reexecute(model_admin: Any, request: HttpRequest, queryset: QuerySet[ReceivedMessage]
              ) -> None:
    done, selected = in_batches(
        operations.reexecute_received, request, queryset,
        lambda row: f"Re-executed ({_was(row)}, {row.attempts} attempt"
                    f"{'' if row.attempts == 1 else 's'})")
    model_admin.report(request, done, selected, "queued to run again",
                       "a message being processed now cannot be re-executed")


SKIP_WHY = "only failed, pending or retrying messages can be skipped (not one being processed)"


@admin.action(description="Skip selected messages (never run them; their ordering key goes on)",
              permissions=["change"], **ON_DETAIL_PAGE_TOO)
def skip(model_admin: Any, request: HttpRequest, queryset: QuerySet[ReceivedMessage]) -> None:
    done, selected = in_batches(operations.skip_received, request, queryset,
                                lambda row: f"Skipped ({_was(row)})")
    model_admin.report(request, done, selected, "skipped", SKIP_WHY)


@admin.action(description="Skip selected messages (never fan them out; their ordering key "
                          "goes on)", permissions=["change"], **ON_DETAIL_PAGE_TOO)
def skip_published(model_admin: Any, request: HttpRequest,
                   queryset: QuerySet[PublishedMessage]) -> None:
    done, selected = in_batches(operations.skip_published, request, queryset,
                                lambda row: f"Skipped ({_was(row)})")
    model_admin.report(request, done, selected, "skipped", SKIP_WHY)
