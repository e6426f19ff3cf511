"""`saegov db upgrade|current`: migrations of the registry database."""
from __future__ import annotations

import click

from cli.common import print_json, subgroup


def register(root: click.Group) -> None:
    db = subgroup(root, "db", "Registry database: migrations.")

    @db.command("upgrade")
    @click.option("--revision", default="head", show_default=True, help="Target revision.")
    def upgrade(revision: str) -> None:
        """Create or migrate the registry database (SAEGOV_DATABASE_URL or SAEGOV_HOME)."""
        from registry.db import make_engine
        from registry.db import upgrade as do_upgrade

        engine = make_engine()
        before, after = do_upgrade(engine, revision)
        engine.dispose()
        click.echo(f"database at revision {after}" + ("" if before == after else f" (was {before or 'empty'})"))

    @db.command("current")
    @click.option("--json", "as_json", is_flag=True)
    def current(as_json: bool) -> None:
        """Show the database's revision and the one this saegov needs."""
        from registry.db import current_revision, head_revision, make_engine

        engine = make_engine()
        info = {"current": current_revision(engine), "head": head_revision()}
        engine.dispose()
        if as_json:
            print_json(info)
        else:
            click.echo(f"current: {info['current'] or '(none)'}  head: {info['head']}")
