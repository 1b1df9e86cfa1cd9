"""The start-up schema check reads what alembic reads, without importing alembic."""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic.runtime.migration import MigrationContext

from callback_queue import store as store_mod
from callback_queue.store import Store, declared_heads


@pytest.fixture
def empty_store(empty_url: str) -> Iterator[Store]:
    s = Store(empty_url)
    yield s
    s.dispose()


def _alembic_current(s: Store) -> set[str]:
    with s.engine.connect() as conn:
        return set(MigrationContext.configure(conn).get_current_heads())


def test_declared_heads_are_alembics_heads_less_dependencies(empty_store: Store) -> None:
    # alembic's script heads keep a revision another one only depends on (0002 for 0201), but a full
    # upgrade records the dependant alone: the start-up check compares with what an upgrade records
    assert declared_heads()
    assert declared_heads() <= empty_store.script_heads()


def test_current_heads_match_alembic_before_and_after_upgrade(empty_store: Store) -> None:
    assert empty_store.current_heads() == _alembic_current(empty_store) == set()
    empty_store.upgrade("0001")
    assert empty_store.current_heads() == _alembic_current(empty_store) == {"0001"}
    empty_store.upgrade()
    assert empty_store.current_heads() == _alembic_current(empty_store) == declared_heads()
    empty_store.require_current()


def _versions(tmp_path: Path, files: dict[str, str]) -> Path:
    (tmp_path / "versions").mkdir()
    for name, body in files.items():
        (tmp_path / "versions" / name).write_text(textwrap.dedent(body))
    return tmp_path


def test_merges_and_annotations_are_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store_mod, "MIGRATIONS", _versions(tmp_path, {
        "__init__.py": "",
        "a.py": 'revision = "a"\ndown_revision = None\n',
        "b.py": 'revision: str = "b"\ndown_revision: str | None = "a"\n',
        "c.py": 'revision = "c"\ndown_revision = "a"\n',
        "d.py": 'revision = "d"\ndown_revision = ("b", "c")\n',
        "e.py": 'revision = "e"\ndown_revision = "a"\n',
    }))
    assert declared_heads() == {"d", "e"}


def test_a_dependency_is_not_a_head(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store_mod, "MIGRATIONS", _versions(tmp_path, {
        "a.py": 'revision = "a"\ndown_revision = None\n',
        "b.py": 'revision = "b"\ndown_revision = "a"\n',
        "c.py": 'revision = "c"\ndown_revision = "a"\ndepends_on = ("b",)\n',
    }))
    assert declared_heads() == {"c"}


def test_anything_beyond_literals_defers_to_alembic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store_mod, "MIGRATIONS", _versions(tmp_path, {
        "a.py": 'revision = "a"\ndown_revision = None\n',
        "b.py": 'revision = "b"\ndown_revision = "a"\ndepends_on = "planning"\n',  # a branch label
    }))
    assert declared_heads() == set()
    (tmp_path / "versions" / "b.py").write_text('revision = "b"\ndown_revision = PREVIOUS\n')
    assert declared_heads() == set()
