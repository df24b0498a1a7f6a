"""Signals about messages. Each is sent after the change it reports has committed, except
``message_published``, which is sent when the outbox row is written (inside the publisher's
transaction: a later rollback undoes the row but not the signal).

Receivers get ``sender`` (the model class) and ``message`` (the row) as keyword arguments;
``message_retrying`` and ``message_failed`` also get ``error`` (the stored reason, a string);
``message_retrying`` also gets ``retry_in`` (seconds until the next attempt).
"""

from __future__ import annotations

from django.dispatch import Signal

message_published = Signal()
message_succeeded = Signal()
message_retrying = Signal()
message_failed = Signal()
