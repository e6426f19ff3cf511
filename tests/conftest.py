"""Fixtures shared by the whole suite (tests mirror the package tree; helpers: tests/helpers).

Registry: a migrated SQLite template database is built once per session and copied per test;
tests marked `postgres` use SAEGOV_TEST_POSTGRES_URL (skipped when unset), each starting from a
freshly reset `public` schema.
Toy pipelines: the toy-world architecture with random weights, saved once per session (fast to
build; tests must not depend on the committed training).
"""
from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from registry.db import make_engine, upgrade
from registry.store import Store
from tests.helpers.registry import ACTORS, PG_ENV, pg_url, reset_postgres


@pytest.fixture(autouse=True)
def own_config_dir(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test is a person with their own config folder (signing key), never the real ~/.config;
    and no trust store leaks in from the environment."""
    folder = tmp_path_factory.mktemp("config")
    monkeypatch.setenv("SAEGOV_CONFIG_DIR", str(folder))
    monkeypatch.delenv("SAEGOV_TRUSTED_KEYS", raising=False)
    return folder

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


@pytest.fixture(scope="session")
def toy_pipe_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained toy-world pipeline folder."""
    from governance.toyworld.model import build_untrained_pipeline

    path = tmp_path_factory.mktemp("toy") / "pipe"
    build_untrained_pipeline(seed=0).save_pretrained(str(path))
    return path


@pytest.fixture(scope="session")
def toy_model(toy_pipe_dir: Path) -> Path:
    """The same folder under the name the collection and scoring tests use."""
    return toy_pipe_dir


@pytest.fixture
def toy_pipe(toy_pipe_dir: Path):
    from tests.helpers.enforcement import load_pipe

    return load_pipe(toy_pipe_dir)
