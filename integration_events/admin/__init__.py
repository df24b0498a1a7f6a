"""The Django admin as the dashboard.

Message lists and details are read-only; the actions hand the selected rows to
``integration_events.operations`` (never writing the status field here) and leave an entry in
each row's history. The dashboard pages (overview, live JSON, subscribers, nodes) hang off the
``Dashboard`` proxy's URLs and need staff status plus the view permission on both message
models; the permission rule across the two models is in ``permissions``.

Modules: ``base`` (what both message admins share: counting, filters, search, accepted input),
``messages`` (the two message admins), ``actions`` (requeue, publish now, re-execute, audit),
``dashboard`` (the dashboard pages and the heartbeat rows), ``display`` (badges, dates,
errors, payloads), ``permissions``.
"""

from __future__ import annotations

from .base import EstimatedCountPaginator, MessageAdmin
from .dashboard import DashboardAdmin, WorkerNodeAdmin
from .display import STATUS_COLOURS, status_badge
from .messages import PublishedMessageAdmin, ReceivedMessageAdmin

__all__ = [
    "STATUS_COLOURS",
    "DashboardAdmin",
    "EstimatedCountPaginator",
    "MessageAdmin",
    "PublishedMessageAdmin",
    "ReceivedMessageAdmin",
    "WorkerNodeAdmin",
    "status_badge",
]
