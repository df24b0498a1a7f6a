"""SQL Server, without a server: compile the claim queries with mssql-django's compiler and
check they take the READPAST/UPDLOCK form (its SKIP LOCKED)."""

from __future__ import annotations

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.db import connections

from integration_events.models import MessageStatus, PublishedMessage, ReceivedMessage


def _import_mssql_base():
    """mssql-django's backend, or a module-level skip saying why it cannot load here.

    Without unixODBC's libodbc.so.2, importing it raises ImproperlyConfigured (it wraps
    pyodbc's ImportError), which ``pytest.importorskip`` does not catch."""
    try:
        import mssql.base
    except ImportError as exc:
        pytest.skip(f"mssql-django is not installed ({exc}): pip install '.[mssql]'",
                    allow_module_level=True)
    except ImproperlyConfigured as exc:
        pytest.skip(f"mssql-django cannot load its ODBC driver ({exc}): install unixODBC "
                    "(Debian: apt-get install libodbc2)", allow_module_level=True)
    return mssql.base


mssql_base = _import_mssql_base()


@pytest.fixture
def mssql_connection():
    settings_dict = {**connections["default"].settings_dict, "ENGINE": "mssql",
                     "NAME": "events", "HOST": "sqlserver.invalid", "PORT": "1433",
                     "OPTIONS": {"driver": "ODBC Driver 18 for SQL Server"}}
    conn = mssql_base.DatabaseWrapper(settings_dict, alias="mssql-compile-only")
    # The compiler asks the server for its version and the connection for autocommit;
    # there is no server here, so pre-fill both (SQL Server 2022, inside a transaction).
    conn.__dict__["sql_server_version"] = 2022
    conn.__dict__["to_azure_sql_db"] = False
    conn.get_autocommit = lambda: False  # type: ignore[method-assign]
    return conn


def compile_sql(queryset, conn) -> str:
    sql, params = queryset.query.get_compiler(connection=conn).as_sql()
    return sql % tuple(repr(p) for p in params)


@pytest.mark.parametrize("model", [PublishedMessage, ReceivedMessage])
def test_claim_query_uses_readpast(model, mssql_connection) -> None:
    assert mssql_connection.features.has_select_for_update_skip_locked
    qs = model.objects.due(MessageStatus.PENDING).select_for_update(skip_locked=True)
    sql = compile_sql(qs.values_list("pk", flat=True)[:100], mssql_connection)
    assert "WITH (ROWLOCK, UPDLOCK, READPAST)" in sql
    assert "TOP 100" in sql or "FETCH FIRST 100" in sql or "OFFSET 0 ROWS FETCH" in sql
    assert "ORDER BY" in sql and "[next_attempt_at]" in sql
    assert "SYSDATETIME" in sql.upper() or "CURRENT_TIMESTAMP" in sql.upper(), (
        "due times are compared with the database's clock")


def test_without_skip_locked_there_is_no_readpast(mssql_connection) -> None:
    qs = PublishedMessage.objects.due(MessageStatus.PENDING)
    assert "READPAST" not in compile_sql(qs.values_list("pk", flat=True)[:10],
                                         mssql_connection)


def test_fan_out_without_ignore_conflicts_compiles_for_sql_server(mssql_connection) -> None:
    """mssql-django has no INSERT that ignores conflicts: the fan-out reads the (message,
    group) pairs that exist and inserts the others (dispatch.Dispatcher.insert_receipts)."""
    assert not mssql_connection.features.supports_ignore_conflicts
    ids = ["00000000-0000-0000-0000-000000000001", "00000000-0000-0000-0000-000000000002"]
    existing = ReceivedMessage.objects.filter(message_id__in=ids).values_list("message_id",
                                                                              "group")
    sql = compile_sql(existing, mssql_connection)
    assert "[message_id] IN" in sql and "[group]" in sql
    from django.db.models.sql import InsertQuery

    query = InsertQuery(ReceivedMessage)
    fields = [f for f in ReceivedMessage._meta.concrete_fields if not f.primary_key]
    query.insert_values(fields, [ReceivedMessage(message_id=ids[0], group="g", topic="t")])
    (insert_sql, _params), = query.get_compiler(connection=mssql_connection).as_sql()
    assert insert_sql.startswith("INSERT INTO [integration_events_receivedmessage]")
    assert "IGNORE" not in insert_sql.upper() and "ON CONFLICT" not in insert_sql.upper()


def test_received_messages_are_unique_only_where_they_have_a_wire_id(mssql_connection) -> None:
    """SQL Server counts NULLs as equal in a plain unique constraint: the (origin, wire_id,
    topic) of received messages must be a filtered index, or the second local message (no
    wire id) would be refused. mssql-django filters unique_together that way."""
    with mssql_connection.schema_editor(collect_sql=True, atomic=False) as editor:
        editor.alter_unique_together(PublishedMessage, [], [("origin", "wire_id", "topic")])
    (sql,) = editor.collected_sql
    assert sql.startswith("CREATE UNIQUE INDEX")
    assert "([origin], [wire_id], [topic])" in sql and "[wire_id] IS NOT NULL" in sql
    assert ("origin", "wire_id", "topic") in PublishedMessage._meta.unique_together
