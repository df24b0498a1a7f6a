"""Emptying the engine's tables between benchmark runs (each bench script imports this from
its own directory, which Python puts first on sys.path).

On PostgreSQL by TRUNCATE: a DELETE leaves the rows dead until a vacuum, and where autovacuum
is off (as on this project's CI machines, /etc/postgresql/*/main/conf.d/90-ci.conf) every
later run would scan and index more of them than the first, which biases interleaved
comparisons against whatever runs later in a round."""

from __future__ import annotations

from typing import Any

from django.db import connection


def empty(*models: Any) -> None:
    """Delete every row of ``models`` (and, on PostgreSQL, of tables referencing them)."""
    if connection.vendor == "postgresql":
        names = ", ".join(connection.ops.quote_name(m._meta.db_table) for m in models)
        with connection.cursor() as cursor:
            cursor.execute(f"TRUNCATE {names} CASCADE")
        return
    for model in models:
        model.objects.all().delete()


def analyze(*models: Any) -> None:
    """Bring PostgreSQL's statistics of ``models`` up to date, as autovacuum does within a
    minute of a burst on a deployed database (it is off on this project's CI machines). A
    table just emptied and filled has none: the planner then takes it for a few pages and
    filters a seq scan through a 500-key ``id = ANY(...)`` per row (30 ms per batch query at
    10,000 rows here, where the primary key's index takes 1 ms). Elsewhere: nothing."""
    if connection.vendor == "postgresql":
        names = ", ".join(connection.ops.quote_name(m._meta.db_table) for m in models)
        with connection.cursor() as cursor:
            cursor.execute(f"ANALYZE {names}")
