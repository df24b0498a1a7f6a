"""The claim journal: what a locked claim took, written where a dying worker cannot undo it.

A locked claim (integration_events.claims) keeps its rows locked in the claim's transaction
while their batch runs and writes each row once, with its outcome and its attempt, when that
transaction commits. A worker that dies first rolls all of it back: the rows are due again at
once, with no attempt spent. Alone, that would let a message that kills its worker every time
be taken forever (DESIGN.md guarantee 3). So before the batch starts, the claim records its
rows in one journal row written on a second connection to the same database, committed at
once, and the claim's own transaction deletes that journal row at once (the delete commits
with the outcomes; until then it holds the row's lock). A journal row
that outlives its claim names rows whose worker died: the sweep counts their attempt
(integration_events.sweep, ``release_orphaned_claims``). While its claim lives, the journal row
is locked by the claim's pending delete, which is how the sweep tells the two apart.

One journal row per claimed batch, not a write per message row: the default claim of a
bridge costs one small INSERT and one DELETE per batch instead of a lease UPDATE per row.
The second connection is per thread and per process (a forked child opens its own); its
INSERT commits without waiting for the disk on PostgreSQL (``synchronous_commit`` off for
that statement: a journal row lost in a server crash only loses the attempt of a claim that
crashed with the server).
``close_connections()`` closes the calling thread's; the worker calls it when a task ends.
"""

from __future__ import annotations

import contextlib
import os
import threading
import uuid
from collections.abc import Sequence
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.db import DatabaseError, IntegrityError, InterfaceError, connections, models
from django.db.models.functions import Now

_local = threading.local()
# Journal connections a forked child inherited from its parent: never used, never closed.
_inherited: list[Any] = []


class ClaimJournal(models.Model):
    """One locked claim in progress: the inbox rows it holds, until it commits (then the
    claim deletes it). One that stays names rows whose worker died before committing."""

    token = models.UUIDField(primary_key=True)
    rows = models.JSONField(help_text="primary keys of the received messages it claimed")
    claimed_by = models.CharField(max_length=200)
    created_at = models.DateTimeField(db_default=Now())

    class Meta:
        app_label = "integration_events"
        verbose_name = "claim journal entry"
        verbose_name_plural = "claim journal"
        indexes = [models.Index(fields=["created_at"], name="ie_journal_created")]

    def __str__(self) -> str:
        return f"{self.claimed_by} {self.token}"


def record(using: str, token: uuid.UUID, pks: Sequence[Any], claimer: str) -> None:
    """Write (and commit, on the journal connection) the journal row of a locked claim.
    A broken journal connection is opened again once; then the error propagates (the claim
    rolls back and nothing is sent)."""
    for last in (False, True):
        connection = _connection(using)
        try:
            _insert(connection, token, pks, claimer)
            return
        except IntegrityError:
            if not last:
                raise
            return  # the first try committed, its answer was lost: the row is there
        except (DatabaseError, InterfaceError):
            _drop(using)
            if last:
                raise


def forget(using: str, token: uuid.UUID) -> None:
    """Delete the journal row of ``token`` in the claim's own transaction (on ``using``),
    before the batch runs: the delete commits with the outcomes and, until then, keeps the
    row locked. Raises ImproperlyConfigured, after removing the row through the journal
    connection, when the claim's transaction cannot see it (snapshot isolation)."""
    try:
        deleted = ClaimJournal.objects.using(using).filter(pk=token)._raw_delete(using)
    except DatabaseError as exc:
        problem: str = f"deleting it failed ({exc})"
    else:
        if deleted == 1:
            return
        problem = "it was not visible to the claim's transaction"
    side = _connection(using)
    quote = side.ops.quote_name
    with contextlib.suppress(DatabaseError, InterfaceError), side.cursor() as cursor:
        cursor.execute(
            f"DELETE FROM {quote(ClaimJournal._meta.db_table)} WHERE {quote('token')} = %s",
            [ClaimJournal._meta.get_field("token").get_db_prep_value(
                token, side)])
    raise ImproperlyConfigured(
        f"A locked claim wrote its claim journal row on a second connection and {problem}: "
        "locked claims need the READ COMMITTED isolation level (Django's default for "
        "PostgreSQL and MariaDB). Set DATABASES[...]['OPTIONS']['isolation_level'] back to "
        "it, or turn the bridge's LOCKED_CLAIMS off.")


def close_connections() -> None:
    """Close this thread's journal connections (the next claim opens them again)."""
    for alias in list(getattr(_local, "connections", {})):
        _drop(alias)


def _insert(connection: Any, token: uuid.UUID, pks: Sequence[Any], claimer: str) -> None:
    meta = ClaimJournal._meta
    fields: list[Any] = [meta.get_field(name) for name in ("token", "rows", "claimed_by")]
    values = [f.get_db_prep_save(v, connection) for f, v in zip(
        fields, (token, list(pks), claimer), strict=True)]
    quote = connection.ops.quote_name
    columns = ", ".join(quote(f.column) for f in fields)
    table = quote(meta.db_table)
    if connection.vendor == "postgresql":
        # Without waiting for the disk, for this statement's transaction only (a session
        # setting would reach other clients through a transaction-pooling proxy).
        sql = (f"WITH quick AS (SELECT set_config('synchronous_commit', 'off', true)) "
               f"INSERT INTO {table} ({columns}) SELECT %s::uuid, %s::jsonb, %s FROM quick")
    else:
        sql = f"INSERT INTO {table} ({columns}) VALUES (%s, %s, %s)"
    with connection.cursor() as cursor:
        cursor.execute(sql, values)


def _connection(using: str) -> Any:
    held: dict[str, tuple[int, Any]] = _local.__dict__.setdefault("connections", {})
    entry = held.get(using)
    if entry is not None and entry[0] == os.getpid():
        return entry[1]
    # A new wrapper of the same settings (the test database's name included), outside the
    # connection handler: its own session, autocommit, never inside the caller's transaction.
    connection = connections.create_connection(using)
    if entry is not None:  # a parent's, inherited over fork: kept referenced, never closed
        _inherited.append(entry[1])  # (collecting it could close the parent's socket)
    held[using] = (os.getpid(), connection)
    return connection


def _drop(using: str) -> None:
    held: dict[str, tuple[int, Any]] = _local.__dict__.get("connections", {})
    entry = held.pop(using, None)
    if entry is None:
        return
    if entry[0] != os.getpid():
        _inherited.append(entry[1])  # a parent's connection: its socket is the parent's
        return
    with contextlib.suppress(DatabaseError, InterfaceError):  # already broken
        entry[1].close()
