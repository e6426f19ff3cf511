"""Pytest fixtures for the registry tests (imported by the test modules that use them).

SQLite: a migrated template database is built once per session and copied per test.
PostgreSQL: tests marked `postgres` use SAEGOV_TEST_POSTGRES_URL (skipped when unset); each
test starts from a freshly reset `public` schema.
"""
from __future__ import annotations

import importlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, text

from registry.db import make_engine, upgrade
from registry.store import Store

PG_ENV = "SAEGOV_TEST_POSTGRES_URL"
ACTORS = [("alice", "admin"), ("erin", "engineer"), ("emil", "engineer"),
          ("rob", "reviewer"), ("rita", "reviewer"), ("aud", "auditor")]

_migration = importlib.import_module("migrations.versions.0001_initial_schema")


def pg_url() -> str | None:
    return os.environ.get(PG_ENV) or None


def reset_postgres(url: str) -> None:
    engine = make_engine(url)
    with engine.begin() as conn:
        conn.execute(text("DROP SCHEMA IF EXISTS public CASCADE"))
        conn.execute(text("CREATE SCHEMA public"))
    engine.dispose()


def seed_actors(store: Store) -> None:
    for name, role in ACTORS:
        store.add_actor(name, role, "alice")


def drop_audit_triggers(engine: Engine) -> None:
    """What an attacker with table rights does first; tests then rewrite rows directly."""
    with engine.begin() as conn:
        if conn.dialect.name == "sqlite":
            for name in _migration._SQLITE_TRIGGERS:
                conn.exec_driver_sql(f"DROP TRIGGER IF EXISTS {name}")
        else:
            for name in _migration._PG_TRIGGERS:
                table = "audit_head" if name.startswith("audit_head") else "audit_events"
                conn.exec_driver_sql(f"DROP TRIGGER IF EXISTS {name} ON {table}")


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("template") / "registry.db"
    engine = make_engine(f"sqlite:///{path}")
    upgrade(engine)
    engine.dispose()
    return path


@pytest.fixture
def sqlite_url(tmp_path: Path, sqlite_template: Path) -> str:
    path = tmp_path / "ws" / "registry.db"
    path.parent.mkdir()
    shutil.copy(sqlite_template, path)
    return f"sqlite:///{path}"


@pytest.fixture
def postgres_url() -> str:
    url = pg_url()
    if not url:
        pytest.skip(f"{PG_ENV} not set")
    reset_postgres(url)
    engine = make_engine(url)
    upgrade(engine)
    engine.dispose()
    return url


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest) -> str:
    """A freshly migrated, empty database on each backend."""
    name = "sqlite_url" if request.param == "sqlite" else "postgres_url"
    return request.getfixturevalue(name)


@pytest.fixture
def store(db_url: str) -> Iterator[Store]:
    """A store with ACTORS added (alice is the first actor, hence admin)."""
    s = Store.open(db_url)
    s.add_actor("alice", "admin", None)
    for name, role in ACTORS[1:]:
        s.add_actor(name, role, "alice")
    yield s
    s.close()
