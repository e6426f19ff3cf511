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
    downgrade,
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


DATA = Path(__file__).parent / "data"


def test_upgrade_of_a_populated_database_keeps_its_blocklists_deployments_and_chain(tmp_path: Path) -> None:
    """A registry made by the code before revision 0002 (one SAE per blocklist version; two
    published versions, one revoked, a deployment, a generation) upgrades in place: the audit
    chain verifies unchanged, every version reads back the same with its one SAE as its one hook
    point, and downgrading back to 0001 restores the old columns."""
    import json
    import shutil

    from registry.store import Store

    db = tmp_path / "registry.db"
    shutil.copy(DATA / "stop10-registry.db", db)
    expected = json.loads((DATA / "stop10-registry.json").read_text())
    url = f"sqlite:///{db}"
    engine = make_engine(url)
    assert current_revision(engine) == "0001"
    upgrade(engine)
    assert current_revision(engine) == head_revision()
    store = Store.open(url)
    rep = store.verify_audit()
    assert (rep.size, rep.head_hash) == (expected["audit"]["size"], expected["audit"]["head_hash"])
    assert store.verify_state() == []  # the old code's events replay into exactly its tables
    for old in expected["blocklists"]:
        new = store.get_blocklist(old["name"], old["version"]).to_json()
        sae_id, sae_ref = old.pop("sae_id"), old.pop("sae_ref")
        saes = new.pop("saes")
        assert (new.pop("approved_by"), new.pop("approved_at")) == (None, None)  # no loosening review then
        assert [(s["sae_id"], s["sae_ref"], s["hook_point"]) for s in saes] == [(sae_id, sae_ref, "up_blocks.1.attentions.2")]
        for e in new["entries"]:
            assert (e.pop("sae_id"), e.pop("hook_point")) == (sae_id, "up_blocks.1.attentions.2")
        assert new == old
    deployments = [d.to_json() for d in store.list_deployments()]
    for old, new in zip(expected["deployments"], deployments, strict=True):
        assert new.pop("sae_ids") == [old.pop("sae_id")] and new == old
    # The draft equals version 2, whose digest has the pre-0002 form: still "nothing changed".
    from registry.errors import ValidationFailed

    with pytest.raises(ValidationFailed, match="nothing changed since version 2"):
        store.publish_blocklist("colours", "erin")
    store.close()
    downgrade(engine, "0001")
    with engine.connect() as conn:
        assert conn.execute(text("SELECT id, sae_id FROM blocklist_versions ORDER BY id")).all() == [(1, 1), (2, 1)]
        assert conn.execute(text("SELECT sae_id FROM deployments")).scalars().all() == [1]
    engine.dispose()


def test_downgrade_refuses_when_a_version_holds_several_saes(tmp_path: Path) -> None:
    from registry.store import Store
    from tests.helpers.registry import make_sae_folder, mapping_spec
    from governance.formats.mapping import MappingSpec

    url = f"sqlite:///{tmp_path / 'r.db'}"
    engine = make_engine(url)
    upgrade(engine)
    s = Store.open(url)
    s.add_actor("alice", "admin", None)
    s.add_actor("erin", "engineer", "alice")
    s.add_actor("rob", "reviewer", "alice")
    s.add_concept("red", "colour", "erin")
    ids = []
    for hook in ("up_blocks.1.attentions.1", "up_blocks.1.attentions.2"):
        sae = s.import_sae_folder(make_sae_folder(tmp_path, hook), "erin")
        m = s.create_mapping(sae.id, "red", MappingSpec.model_validate(mapping_spec("red")), "erin")
        s.propose(m.id, "erin", "x")
        s.approve(m.id, "rob", "y")
        ids.append(m.id)
    s.create_blocklist("both", ids, "erin")
    s.publish_blocklist("both", "erin")
    s.close()
    with pytest.raises(ConfigError, match="blocklist versions 1 hold SAEs at several hook points"):
        downgrade(engine, "0001")
    assert current_revision(engine) == head_revision()
    engine.dispose()
