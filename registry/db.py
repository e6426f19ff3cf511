"""Workspace, database URL, engine set-up, migrations and the schema-version check."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, OperationalError, SQLAlchemyError

from governance.common.errors import first_line
from governance.common.workspace import ENV_DATABASE_URL, workspace_home
from registry.errors import ConfigError, DatabaseUnreachable, SchemaOutOfDate

UPGRADE_HINT = "run `saegov db upgrade`"


def database_url() -> str:
    """`SAEGOV_DATABASE_URL`, default SQLite `registry.db` in the workspace."""
    url = os.environ.get(ENV_DATABASE_URL)
    if url:
        return url
    path = (workspace_home() / 'registry.db').resolve()
    if any(c in str(path) for c in "?#%"):
        # In a URL these start a query or an escape: "/tmp/ws?x/registry.db" would open "/tmp/ws".
        raise ConfigError(f"the workspace path {str(path.parent)!r} contains '?', '#' or '%'; choose another "
                          "SAEGOV_HOME")
    return f"sqlite:///{path}"


def sqlite_file(url: str) -> Path | None:
    """The database file of a SQLite URL (None for other backends, memory or a bad URL)."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        return None
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database).expanduser()


def _sqlite_setup(engine: Engine) -> None:
    """Foreign keys on, WAL journal, and every transaction `BEGIN IMMEDIATE` (one writer at a
    time, taken at the start so that the audit head read and the append cannot interleave)."""

    @event.listens_for(engine, "connect")
    def _connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # let us emit BEGIN ourselves
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA foreign_keys = ON")
        cur.execute("PRAGMA busy_timeout = 30000")
        if cur.execute("PRAGMA journal_mode").fetchone()[0] not in ("wal", "memory"):
            cur.execute("PRAGMA journal_mode = WAL")  # readers never block the writer
        cur.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def make_engine(url: str | None = None, **kwargs: Any) -> Engine:
    """An engine for `url` (default: `database_url()`); a bad URL is a `ConfigError`."""
    url = url or database_url()
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ConfigError(f"invalid database URL {url!r}") from None
    backend = parsed.get_backend_name()
    if backend not in ("sqlite", "postgresql"):
        raise ConfigError(f"unsupported database {backend!r}: use sqlite:/// or postgresql+psycopg://")
    if backend == "postgresql" and parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    if backend == "sqlite" and parsed.database not in (None, "", ":memory:"):
        parent = Path(parsed.database).expanduser().parent
        if not parent.exists():
            try:
                parent.mkdir(parents=True, exist_ok=True)
            except (OSError, ValueError) as exc:
                raise ConfigError(f"cannot create workspace {parent}: {exc}") from None
    try:
        engine = create_engine(parsed, **kwargs)
    except (ArgumentError, NoSuchModuleError, ImportError) as exc:
        raise ConfigError(f"invalid database URL {url!r}: {exc}") from None
    if backend == "sqlite":
        _sqlite_setup(engine)
    return engine


def alembic_config(url: str | None = None) -> Any:
    """Alembic config pointing at the migrations shipped inside the package."""
    from alembic.config import Config

    import migrations

    cfg = Config()
    cfg.set_main_option("script_location", str(Path(migrations.__file__).parent))
    if url:
        cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


def current_revision(engine: Engine) -> str | None:
    try:
        with engine.connect() as conn:
            if not inspect(conn).has_table("alembic_version"):
                return None
            return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
    except SQLAlchemyError as exc:
        raise DatabaseUnreachable(f"cannot open database: {first_line(exc)}") from None


def _migrate(engine: Engine, direction: str, revision: str) -> None:
    """Run alembic `upgrade`/`downgrade` in one transaction. On SQLite, foreign-key enforcement
    is off while it runs (batch migrations copy and rename tables, which enforcement would refuse
    on a populated database) and every foreign key is checked before it commits."""
    from alembic import command
    from alembic.script import ScriptDirectory
    from alembic.script.revision import RevisionError
    from alembic.util import CommandError

    try:
        ScriptDirectory.from_config(alembic_config()).get_revisions(revision)
    except (CommandError, RevisionError):
        raise ConfigError(f"unknown revision {revision!r}; `saegov db current` shows the head") from None
    cfg = alembic_config()
    try:
        with engine.connect() as conn:
            sqlite = conn.dialect.name == "sqlite"
            if sqlite:  # outside any transaction, where SQLite honours it
                conn.connection.dbapi_connection.execute("PRAGMA foreign_keys = OFF")  # type: ignore[union-attr]
            try:
                with conn.begin():
                    cfg.attributes["connection"] = conn
                    getattr(command, direction)(cfg, revision)
                    if sqlite:
                        bad = conn.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
                        if bad:
                            raise ConfigError(f"migration would break {len(bad)} foreign keys (first in {bad[0][0]})")
            finally:
                if sqlite:
                    conn.connection.dbapi_connection.execute("PRAGMA foreign_keys = ON")  # type: ignore[union-attr]
    except CommandError as exc:
        raise ConfigError(f"migration refused: {first_line(exc)}") from None
    except OperationalError as exc:
        raise DatabaseUnreachable(f"migration failed: {first_line(exc)}") from None
    except SQLAlchemyError as exc:
        raise ConfigError(f"migration failed: {first_line(exc)}") from None


def upgrade(engine: Engine, revision: str = "head") -> tuple[str | None, str]:
    """Migrate to `revision`; returns (revision before, revision after)."""
    before = current_revision(engine)
    _migrate(engine, "upgrade", revision)
    return before, current_revision(engine) or ""


def downgrade(engine: Engine, revision: str) -> tuple[str | None, str]:
    """Migrate down to `revision`; a migration that would lose data refuses (ConfigError)."""
    before = current_revision(engine)
    try:
        _migrate(engine, "downgrade", revision)
    except RuntimeError as exc:  # a migration's own refusal
        raise ConfigError(str(exc)) from None
    return before, current_revision(engine) or ""


def check_schema(engine: Engine) -> None:
    """Refuse to work on an unmigrated or stale schema."""
    current = current_revision(engine)
    head = head_revision()
    if current is None:
        raise SchemaOutOfDate(f"database is not initialised; {UPGRADE_HINT}")
    if current != head:
        raise SchemaOutOfDate(
            f"database schema is at revision {current}, this saegov needs {head}; {UPGRADE_HINT}"
        )

