"""Rules shared by dispatch and execution."""

from __future__ import annotations

from django.db import DatabaseError, InterfaceError

from .exceptions import LeaseLost

# The poison rule's exceptions: these mean the database or the claim is in trouble, not the
# row, so they propagate (the task ends; the claim expires and the work is picked up again)
# instead of being recorded against the row.
NOT_THE_ROWS_FAULT: tuple[type[BaseException], ...] = (DatabaseError, InterfaceError, LeaseLost)

# Exceptions that mean "stop this process now": recorded against the message being run, then
# re-raised (django-q2's task timeout is a SystemExit subclass).
STOP_EXCEPTIONS: tuple[type[BaseException], ...] = (KeyboardInterrupt, SystemExit)
