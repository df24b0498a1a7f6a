"""Ordering keys: each key's commit order, and what blocks a key (docs/ordering.md).

Publishing a keyed message locks the key's OrderingKey row in the publishing transaction and
takes the next sequence number; the lock is held until that transaction ends, so of two
transactions publishing one key, the one that commits first has the smaller number, and the
other waits for it. Claims (``MessageQuerySet.in_turn``) then start a keyed inbox row only
when every earlier row of its key in its group has finished. Unkeyed messages take no lock.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from functools import reduce
from operator import or_
from typing import Any

from django.db import IntegrityError, transaction
from django.db.models import BooleanField, Exists, ExpressionWrapper, F, Min, OuterRef, Q

from .exceptions import IntegrationEventsError
from .models import (
    KEYED,
    MAX_ORDERING_KEY_LENGTH,
    UNFINISHED_STATUSES,
    MessageStatus,
    OrderingKey,
    PublishedMessage,
    ReceivedMessage,
    later_receipts,
)

# The overview counts blocked keys among at most this many keyed dead letters.
BLOCKED_SCAN_LIMIT = 10_000


def check_key(key: Any) -> str:
    """``key`` if it is a usable ordering key, else an IntegrationEventsError saying why."""
    if not isinstance(key, str):
        raise IntegrationEventsError(
            f"an ordering key is a string, got {type(key).__name__}: pass str(...) of it")
    if not key.strip():
        # Blank too: MariaDB's default collations compare " " equal to "" (unkeyed).
        raise IntegrationEventsError(
            "an ordering key must not be empty or blank: pass None (or nothing) for an "
            "unkeyed message")
    if len(key) > MAX_ORDERING_KEY_LENGTH:
        raise IntegrationEventsError(
            f"an ordering key is at most {MAX_ORDERING_KEY_LENGTH} characters, got {len(key)}: "
            "use a shorter identifier (a hash of a long one works)")
    if "\x00" in key:
        raise IntegrationEventsError("an ordering key must not contain a NUL character")
    return key


def take_sequence(using: str, counts: dict[str, int]) -> dict[str, int]:
    """For each key, lock its OrderingKey row until the current transaction ends and reserve
    the next ``counts[key]`` numbers; returns the first one per key. Keys are locked in
    sorted order (two transactions that publish the same keys cannot deadlock over them).
    Call inside a transaction (``transaction.atomic``)."""
    return {key: _reserve(using, key, counts[key]) for key in sorted(counts)}


def _reserve(using: str, key: str, count: int) -> int:
    keys = OrderingKey.objects.using(using)
    for _ in range(3):
        # The UPDATE takes the row's lock: a concurrent publisher of this key waits here until
        # this transaction ends, then reads the number this one left.
        if keys.filter(key=key).update(last_seq=F("last_seq") + count):
            last = keys.filter(key=key).values_list("last_seq", flat=True).get()
            return int(last) - count + 1
        try:
            # First message of the key. A concurrent first publisher makes this fail (after
            # its commit); then the row exists and the UPDATE above takes it.
            with transaction.atomic(using=using):
                keys.create(key=key, last_seq=count)
            return 1
        except IntegrityError:
            continue
    raise IntegrationEventsError(f"could not take a sequence number for ordering key {key!r}")


def blocker(row: ReceivedMessage) -> PublishedMessage | ReceivedMessage | None:
    """What keeps a waiting keyed inbox row from starting: the first earlier unfinished row
    of its key in its group, else the first earlier message of its key not fanned out yet;
    None for an unkeyed row or one whose turn it is."""
    if not row.ordering_key or row.ordering_seq is None:
        return None
    using = row._state.db or "default"
    earlier = ReceivedMessage.objects.using(using).filter(
        **KEYED, status__in=UNFINISHED_STATUSES, ordering_key=row.ordering_key, group=row.group,
        ordering_seq__lt=row.ordering_seq).order_by("ordering_seq")
    first: PublishedMessage | ReceivedMessage | None = earlier.only(
        "id", "status", "message_id", "group", "topic", "ordering_seq").first()
    if first is not None:
        return first
    return PublishedMessage.objects.using(using).filter(
        **KEYED, status__in=UNFINISHED_STATUSES, ordering_key=row.ordering_key,
        ordering_seq__lt=row.ordering_seq).order_by("ordering_seq").only(
        "id", "status", "topic", "ordering_seq").first()


def blockers(rows: Iterable[ReceivedMessage]) -> dict[Any, PublishedMessage | ReceivedMessage]:
    """``blocker`` for many rows at once (an admin list's page), in at most four queries
    whatever their number: the first unfinished row of each (key, group) and the first
    unfinished message of each key block every later row of theirs. Returns {row pk: what
    blocks it} for the rows that wait on something."""
    keyed = [r for r in rows if r.ordering_key and r.ordering_seq is not None]
    if not keyed:
        return {}
    using = keyed[0]._state.db or "default"
    keys = sorted({r.ordering_key for r in keyed})
    groups = sorted({r.group for r in keyed})
    unfinished = {**KEYED, "status__in": UNFINISHED_STATUSES, "ordering_key__in": keys}
    firsts = ReceivedMessage.objects.using(using).filter(**unfinished, group__in=groups).values(
        "ordering_key", "group").annotate(first=Min("ordering_seq")).order_by()
    heads = _rows_at(ReceivedMessage.objects.using(using).filter(
        **unfinished, group__in=groups), [(f["ordering_key"], f["group"], f["first"])
                                          for f in firsts],
        ("id", "status", "message_id", "group", "topic", "ordering_key", "ordering_seq"))
    by_pair = {(h.ordering_key, h.group): h for h in heads}
    message_firsts = PublishedMessage.objects.using(using).filter(**unfinished).values(
        "ordering_key").annotate(first=Min("ordering_seq")).order_by()
    messages = _rows_at(PublishedMessage.objects.using(using).filter(**unfinished),
                        [(f["ordering_key"], None, f["first"]) for f in message_firsts],
                        ("id", "status", "topic", "ordering_key", "ordering_seq"))
    by_key = {m.ordering_key: m for m in messages}
    found: dict[Any, PublishedMessage | ReceivedMessage] = {}
    for row in keyed:
        seq = row.ordering_seq
        head = by_pair.get((row.ordering_key, row.group))
        if head is not None and head.ordering_seq is not None and head.ordering_seq < seq:
            found[row.pk] = head
            continue
        message = by_key.get(row.ordering_key)
        if message is not None and message.ordering_seq is not None and \
                message.ordering_seq < seq:
            found[row.pk] = message
    return found


def _rows_at(queryset: Any, places: list[tuple[str, str | None, int]],
             fields: tuple[str, ...]) -> list[Any]:
    """The rows of ``queryset`` at these (key, group or None, sequence) places, one query."""
    if not places:
        return []
    where = [Q(ordering_key=key, ordering_seq=seq, **({"group": group} if group else {}))
             for key, group, seq in places]
    return list(queryset.filter(reduce(or_, where)).only(*fields))


def blocked_keys(using: str = "default", limit: int = BLOCKED_SCAN_LIMIT) -> tuple[int, bool]:
    """(keys blocked by a dead letter, capped): distinct (key, group) pairs whose first
    unfinished row is a dead letter with later rows waiting, plus keys whose outbox dead
    letter holds back later messages. Reads at most ``limit`` keyed dead letters of each
    table; ``capped`` is True when there were more."""
    recv = ReceivedMessage.objects.using(using).filter(
        status=MessageStatus.FAILED, ordering_key__gt="").annotate(
        blocking=Exists(later_receipts())).order_by().values_list(
        "ordering_key", "group", "blocking")[: limit + 1]
    rows = list(recv)
    pairs = {(key, group) for key, group, blocking in rows[:limit] if blocking}
    later_messages = PublishedMessage.objects.filter(
        **KEYED, ordering_key=OuterRef("ordering_key"), ordering_seq__gt=OuterRef("ordering_seq"),
        status__in=UNFINISHED_STATUSES)
    later_rows = ReceivedMessage.objects.filter(
        **KEYED, ordering_key=OuterRef("ordering_key"), ordering_seq__gt=OuterRef("ordering_seq"),
        status__in=UNFINISHED_STATUSES)
    pub = list(PublishedMessage.objects.using(using).filter(
        status=MessageStatus.FAILED, ordering_key__gt="").annotate(
        blocking=ExpressionWrapper(Exists(later_messages) | Exists(later_rows),
                                   output_field=BooleanField())).order_by().values_list(
        "ordering_key", "blocking")[: limit + 1])
    keys = {key for key, blocking in pub[:limit] if blocking}
    pairs = {(key, group) for key, group in pairs if key not in keys}
    return len(pairs) + len(keys), len(rows) > limit or len(pub) > limit


def sequence_counts(keys: list[str | None]) -> dict[str, int]:
    """How many numbers each key needs for a list of messages' keys (None: unkeyed)."""
    return dict(Counter(k for k in keys if k))
