"""Migrations: an empty database is refused with a hint; `upgrade` makes exactly the models' schema."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from callback_queue import schema
from callback_queue.errors import SchemaOutOfDate, StoreError
from callback_queue.store import Store

PG_ADMIN = os.environ.get("CALLBACKD_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")




@pytest.fixture
def empty_store(empty_url: str) -> Iterator[Store]:
    s = Store(empty_url)
    yield s
    s.dispose()


def _tables(store: Store) -> set[str]:
    with store.read() as conn:
        return set(sa.inspect(conn).get_table_names())


def test_empty_database_is_refused_with_a_hint(empty_store: Store) -> None:
    assert empty_store.current_revision() is None
    head = empty_store.head_revision()
    assert head
    with pytest.raises(SchemaOutOfDate) as info:
        empty_store.require_current()
    msg = str(info.value)
    assert "callbackd db upgrade" in msg
    assert "empty" in msg and head in msg
    assert isinstance(info.value, StoreError) and not info.value.retryable
    assert _tables(empty_store) == set()  # checking did not create anything


def test_upgrade_makes_it_current(empty_store: Store) -> None:
    head = empty_store.head_revision()
    assert empty_store.upgrade() == (None, head)
    empty_store.require_current()
    assert empty_store.current_revision() == head
    assert _tables(empty_store) == {*schema.metadata.tables, "alembic_version"}
    # a second upgrade is a no-op
    assert empty_store.upgrade() == (head, head)
    empty_store.require_current()


def test_migrations_produce_the_models_schema(empty_store: Store) -> None:
    empty_store.upgrade()
    with empty_store.engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True, "compare_server_default": False})
        diff = compare_metadata(ctx, schema.metadata)
        assert diff == []
        # and the comparison is alive: a model the migrations do not make shows up
        changed = sa.MetaData(naming_convention=schema.metadata.naming_convention)
        for table in schema.metadata.sorted_tables:
            table.to_metadata(changed)
        changed.tables["callbacks"].append_column(sa.Column("extra", sa.Integer))
        drift = compare_metadata(ctx, changed)
    assert [(d[0], d[2], d[3].name) for d in drift] == [("add_column", "callbacks", "extra")]


def test_the_open_number_index_is_partial_and_unique(empty_store: Store) -> None:
    """compare_metadata does not look at index predicates: check the one invariant 2 rests on."""
    empty_store.upgrade()
    with empty_store.read() as conn:
        if conn.dialect.name == "sqlite":
            sql = conn.exec_driver_sql(
                "SELECT sql FROM sqlite_master WHERE type = 'index' AND name = 'uq_callbacks_open_number'"
            ).scalar_one()
        else:
            sql = conn.exec_driver_sql(
                "SELECT indexdef FROM pg_indexes WHERE indexname = 'uq_callbacks_open_number'"
            ).scalar_one()
    flat = " ".join(sql.split()).lower()
    assert "unique index" in flat
    assert "where" in flat
    for state in ("pending", "scheduled", "dialing", "retry_wait"):
        assert f"'{state}'" in flat
    for state in ("reached", "cancelled", "unreachable"):
        assert state not in flat


def test_downgrade_and_upgrade_again(empty_store: Store) -> None:
    empty_store.upgrade()
    from alembic import command

    with empty_store.engine.begin() as conn:
        command.downgrade(empty_store._alembic_config(conn), "base")
    assert empty_store.current_revision() is None
    assert _tables(empty_store) <= {"alembic_version"}
    with pytest.raises(SchemaOutOfDate):
        empty_store.require_current()
    empty_store.upgrade()
    empty_store.require_current()
