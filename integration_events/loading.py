"""How the engine's hot reads load rows: the claim's compiled SELECTs and a leaner
``from_db`` for the message models.

A claim runs several SELECTs with three NOT EXISTS probes each (``claimable``); the ORM
spends milliseconds building each one, more than the database spends running it. They are
compiled once per shape and run from then on as they are. A claim then loads hundreds of
rows with their messages; ``Model.__init__`` sets one attribute at a time and was most of
that work.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django.db import connections
from django.db.models.base import ModelState
from django.db.models.signals import post_init, pre_init

if TYPE_CHECKING:
    from .models import MessageQuerySet

# Compiled claim SELECTs, and the stand-ins they are compiled with: for the group (a
# parameter; no group name has a NUL in it) and for the limit (written into the SQL, a
# number no statement has otherwise).
_COMPILED: dict[tuple[Any, ...], tuple[str, tuple[Any, ...]]] = {}
_GROUP_SLOT = "\x00group\x00"
_LIMIT_SLOT = "987654321"
# The attribute names of each model's columns, in the order rows are loaded.
_ATTNAMES: dict[type, tuple[str, ...]] = {}


def due_rows(qs: MessageQuerySet[Any], status: str, limit: int, columns: tuple[str, ...], *,
             skip_locked: bool, group: str | None = None) -> list[tuple[Any, ...]]:
    """``qs.claimable(status)`` oldest first, at most ``limit`` rows of ``columns`` (the first
    must be "pk"), locked with SKIP LOCKED if asked, of one ``group`` if given.

    Compiled once per (database, status, columns, locking, whether of one group) and run
    from then on as it is, with the group as a parameter and the limit written in. A
    queryset with filters of its own (a test's strategy) is compiled every time."""
    if limit <= 0:
        return []
    connection = connections[qs.db]
    key = (qs.model, qs.db, connection.vendor, status, columns, skip_locked,
           group is not None)
    cacheable = not qs.query.where
    compiled = _COMPILED.get(key) if cacheable else None
    if compiled is None:
        compiled = _compile(qs, status, columns, skip_locked, group is not None,
                            int(_LIMIT_SLOT))
        if compiled[0].count(_LIMIT_SLOT) != 1:  # a backend that writes the limit otherwise
            compiled = _compile(qs, status, columns, skip_locked, group is not None, limit)
        elif cacheable and len(_COMPILED) < 512:
            _COMPILED[key] = compiled
    sql, params = compiled
    sql = sql.replace(_LIMIT_SLOT, str(int(limit)))
    if group is not None:
        params = tuple(group if p == _GROUP_SLOT else p for p in params)
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        rows = cursor.fetchall()
    # The raw cursor skips the fields' converters: the primary key as the ORM gives it
    # (a UUID, not SQLite's hex string).
    to_python = qs.model._meta.pk.to_python
    return [(to_python(row[0]), *row[1:]) for row in rows]


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
        attnames = _ATTNAMES.get(cls)
        if attnames is None:
            attnames = _ATTNAMES[cls] = tuple(
                f.attname for f in cls._meta.concrete_fields)  # type: ignore[attr-defined]
        if len(values) != len(attnames) or pre_init.has_listeners(cls) or \
                post_init.has_listeners(cls):
            return super().from_db(db, field_names, values, **kwargs)  # type: ignore[misc]
        new = cls.__new__(cls)
        new.__dict__.update(zip(attnames, values, strict=True))
        state = new._state = ModelState()  # type: ignore[attr-defined]
        state.adding, state.db = False, db
        fetch_mode = kwargs.get("fetch_mode")  # Django 6.1's fetch modes
        if fetch_mode is not None:
            state.fetch_mode = fetch_mode
        return new
