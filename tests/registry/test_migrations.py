"""Migrations: pytest-alembic's checks on SQLite, and up/down/up with triggers on PostgreSQL."""
from __future__ import annotations

from pathlib import Path

import pytest
from pytest_alembic.tests import (  # noqa: F401  (collected as tests)
    test_model_definitions_match_ddl,
    test_single_head_revision,
    test_up_down_consistency,
    test_upgrade,
)
from sqlalchemy import inspect, text

from registry.db import (
    alembic_config as make_alembic_config,
    check_schema,
    current_revision,
    head_revision,
    make_engine,
    upgrade,
)
from registry.errors import ConfigError, SchemaOutOfDate
from tests.helpers.registry import pg_url, reset_postgres


@pytest.fixture
def alembic_config():  # type: ignore[no-untyped-def]
    return make_alembic_config()


@pytest.fixture
def alembic_engine(tmp_path: Path):  # type: ignore[no-untyped-def]
    return make_engine(f"sqlite:///{tmp_path / 'alembic.db'}")


def test_unmigrated_database_is_refused(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'x.db'}")
    with pytest.raises(SchemaOutOfDate, match="saegov db upgrade"):
        check_schema(engine)
    upgrade(engine)
    check_schema(engine)
    assert current_revision(engine) == head_revision()


def test_stale_schema_is_refused(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'x.db'}")
    upgrade(engine)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '0000old'"))
    with pytest.raises(SchemaOutOfDate, match="0000old.*saegov db upgrade"):
        check_schema(engine)


@pytest.mark.parametrize("url", ["nonsense://", "mysql://u@h/db", "sqlite:////nonexistent-root-dir/\0/x.db"])
def test_bad_url_is_a_config_error(url: str) -> None:
    with pytest.raises(ConfigError):
        engine = make_engine(url)
        current_revision(engine)


def test_upgrade_is_idempotent_and_creates_triggers(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'x.db'}")
    upgrade(engine)
    before, after = upgrade(engine)
    assert before == after == head_revision()
    with engine.connect() as conn:
        names = {r[0] for r in conn.execute(text("SELECT name FROM sqlite_master WHERE type='trigger'"))}
    assert {"audit_events_no_update", "audit_events_no_delete"} <= names


@pytest.mark.postgres
def test_postgres_upgrade_downgrade_upgrade() -> None:
    url = pg_url()
    if not url:
        pytest.skip("SAEGOV_TEST_POSTGRES_URL not set")
    reset_postgres(url)
    engine = make_engine(url)
    upgrade(engine)
    from alembic import command

    cfg = make_alembic_config()
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "base")
    with engine.connect() as conn:
        assert set(inspect(conn).get_table_names()) <= {"alembic_version"}
    upgrade(engine)
    with engine.connect() as conn:
        triggers = {r[0] for r in conn.execute(text(
            "SELECT tgname FROM pg_trigger WHERE NOT tgisinternal"))}
    assert {"audit_events_no_update", "audit_events_no_truncate", "audit_head_forward_only"} <= triggers
    check_schema(engine)
    engine.dispose()
