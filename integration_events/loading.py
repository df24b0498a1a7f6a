"""How the engine's hot statements find and load rows: the claim's compiled SELECTs, the
rows of a claim by primary key, and a leaner ``from_db`` for the message models.

A claim runs several SELECTs with three NOT EXISTS probes each (``claimable``); the ORM
spends milliseconds building each one, more than the database spends running it. They are
compiled once per shape and run from then on as they are. A claim then loads, leases and
finishes hundreds of rows by primary key: an IN list of that length costs milliseconds of
Python per statement (Django prepares each element; psycopg parses again a statement too
long for its cache), so on PostgreSQL the keys go as one array parameter. It loads them
with their messages; ``Model.__init__`` sets one attribute at a time and was most of
that work.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django.core.exceptions import EmptyResultSet
from django.db import connections, router
from django.db.models import F, Lookup
from django.db.models.base import Model, ModelState
from django.db.models.lookups import In
from django.db.models.signals import post_init, pre_init
from django.db.transaction import TransactionManagementError

if TYPE_CHECKING:
    from .models import MessageQuerySet

# Compiled claim SELECTs, and the stand-ins they are compiled with: for the group (a
# parameter; no group name has a NUL in it) and for the limit (written into the SQL, a
# number no statement has otherwise).
_COMPILED: dict[tuple[Any, ...], tuple[str, tuple[Any, ...]]] = {}
_GROUP_SLOT = "\x00group\x00"
_LIMIT_SLOT = "987654321"
# The attribute names of each model's columns, in the order rows are loaded (``_attnames``).
_ATTNAMES: dict[type, tuple[str, ...] | None] = {}


def due_rows(qs: MessageQuerySet[Any], status: str, limit: int, columns: tuple[str, ...], *,
             skip_locked: bool, group: str | None = None) -> list[tuple[Any, ...]]:
    """``qs.claimable(status)`` oldest first, at most ``limit`` rows of ``columns`` (the first
    must be "pk"), locked with SKIP LOCKED if asked, of one ``group`` if given.

    Compiled once per (model, database, status, columns, locking, whether of one group) and
    run from then on as it is, with the group as a parameter and the limit written in. A
    queryset that adds anything of its own (a test's strategy filtering) is compiled every
    time, and so is every lookup on a backend that does not write the limit as it is."""
    if limit <= 0:
        return []
    raw: Any = qs  # its routing as QuerySet.db would give it once locking
    db = raw._db or (router.db_for_write(qs.model, **raw._hints) if skip_locked or raw._for_write
                     else router.db_for_read(qs.model, **raw._hints))
    connection = connections[db]
    if skip_locked:
        _check_in_transaction(connection)
    key = (qs.model, db, status, columns, skip_locked, group is not None)
    cacheable = _plain(qs.query)
    compiled = _COMPILED.get(key) if cacheable else None
    if compiled is None:
        grouped, qs_db = group is not None, qs.using(db)
        try:
            compiled = _compile(qs_db, status, columns, skip_locked, grouped, int(_LIMIT_SLOT))
            if compiled[0].count(_LIMIT_SLOT) != 1:
                # The limit written otherwise (or the number also in SQL of the caller's):
                # compiled with the real limit, every time.
                sql, params = _compile(qs_db, status, columns, skip_locked, grouped, limit)
                return _run(qs, connection, sql, params, group)
        except EmptyResultSet:  # a strategy's qs.none()
            return []
        if cacheable and len(_COMPILED) < 512:
            _COMPILED[key] = compiled
    sql, params = compiled
    return _run(qs, connection, sql.replace(_LIMIT_SLOT, str(int(limit))), params, group)


def _run(qs: MessageQuerySet[Any], connection: Any, sql: str, params: tuple[Any, ...],
         group: str | None) -> list[tuple[Any, ...]]:
    if group is not None:
        params = tuple(group if p == _GROUP_SLOT else p for p in params)
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        rows = cursor.fetchall()
    # The raw cursor skips the fields' converters: the primary key as the ORM gives it
    # (a UUID, not SQLite's hex string).
    to_python = qs.model._meta.pk.to_python
    return [(to_python(row[0]), *row[1:]) for row in rows]


def _plain(query: Any) -> bool:
    """Whether a queryset adds nothing to its manager's (no filter, join, annotation,
    extra, distinct, ordering or its reverse, slice, locking or values of its own): only
    those lookups are cached."""
    return not (query.where or query.annotations or query.extra or query.extra_tables
                or query.distinct or query.select_for_update or query.low_mark
                or query.high_mark is not None or query.order_by or query.extra_order_by
                or not query.standard_ordering or query.combinator or query.select_related
                or len(query.alias_map) > 1
                or query.values_select or query.group_by is not None)


def _check_in_transaction(connection: Any) -> None:
    """Django's own check for a locking read, which a cached statement no longer passes
    through: outside a transaction the lock would end with the statement."""
    features = connection.features
    if features.has_select_for_update and features.supports_transactions \
            and connection.get_autocommit():
        raise TransactionManagementError(
            "select_for_update cannot be used outside of a transaction.")


def with_pks(qs: MessageQuerySet[Any], pks: Any) -> MessageQuerySet[Any]:
    """``qs`` narrowed to the rows of ``pks``: ``= ANY(array)`` on PostgreSQL, else IN (the
    connection that compiles the statement decides)."""
    return qs.filter(AnyOf(F("pk"), list(pks)))


class AnyOf(Lookup):
    """``AnyOf(F("pk"), [...])``, a filter expression: ``pk = ANY(%s)`` with the list as one
    array parameter on PostgreSQL, Django's own ``IN`` elsewhere."""

    prepare_rhs = False

    def as_sql(self, compiler: Any, connection: Any) -> tuple[str, Any]:
        return In(self.lhs, self.rhs).as_sql(compiler, connection)

    def as_postgresql(self, compiler: Any, connection: Any) -> tuple[str, tuple[Any, ...]]:
        if not self.rhs:
            raise EmptyResultSet
        lhs, lhs_params = self.process_lhs(compiler, connection)
        prep = self.lhs.output_field.get_db_prep_value
        return f"{lhs} = ANY(%s)", (*lhs_params, [prep(v, connection) for v in self.rhs])


def _compile(qs: MessageQuerySet[Any], status: str, columns: tuple[str, ...],
             skip_locked: bool, grouped: bool, limit: int) -> tuple[str, tuple[Any, ...]]:
    """The SQL of ``due_rows``, with a stand-in for the group if ``grouped``."""
    if grouped:
        qs = qs.filter(group=_GROUP_SLOT)
    qs = qs.claimable(status)
    if skip_locked:
        qs = qs.select_for_update(skip_locked=True)
    sql, params = qs.values_list(*columns)[:limit].query.get_compiler(using=qs.db).as_sql()
    return sql, tuple(params)


class LoadedWhole:
    """A model mixin: a row loaded with every column is built without ``Model.__init__``
    (``from_db`` is Django's hook for this): the same attributes and state, its values put
    in at once instead of one ``setattr`` per field. Rows with deferred fields, and models
    with ``pre_init`` / ``post_init`` receivers, take Django's own way."""

    @classmethod
    def from_db(cls, db: str | None, field_names: Any, values: Any, **kwargs: Any) -> Any:
        try:
            attnames = _ATTNAMES[cls]
        except KeyError:
            attnames = _ATTNAMES[cls] = _attnames(cls)
        if attnames is None or len(values) != len(attnames) or \
                pre_init.has_listeners(cls) or post_init.has_listeners(cls):
            return super().from_db(db, field_names, values, **kwargs)  # type: ignore[misc]
        new = cls.__new__(cls)
        new.__dict__.update(zip(attnames, values, strict=True))
        state = new._state = ModelState()  # type: ignore[attr-defined]
        state.adding, state.db = False, db
        fetch_mode = kwargs.get("fetch_mode")  # Django 6.1's fetch modes
        if fetch_mode is not None:
            state.fetch_mode = fetch_mode
        return new


def _attnames(cls: Any) -> tuple[str, ...] | None:
    """The attribute names of a model's columns in the order rows are loaded; None for a
    model with an ``__init__`` or a ``__setattr__`` of its own, which must run."""
    if cls.__init__ is not Model.__init__ or cls.__setattr__ is not Model.__setattr__:
        return None
    return tuple(f.attname for f in cls._meta.concrete_fields)
