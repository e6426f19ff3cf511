"""`saegov actor add|list`: identities and roles."""
from __future__ import annotations

import click

from cli.common import actor_option, emit, json_option, open_store, subgroup


def register(root: click.Group) -> None:
    grp = subgroup(root, "actor", "Actors (people) and their roles.")

    @grp.command("add")
    @click.argument("name")
    @click.option("--role", required=True, help="admin, engineer, reviewer or auditor.")
    @actor_option
    @json_option
    def add(name: str, role: str, actor: str | None, as_json: bool) -> None:
        """Add an actor. The first actor ever added becomes admin; later, admins only."""
        rec = open_store().add_actor(name, role, actor)
        emit(rec, as_json, ["id", "name", "role", "created_at"])

    @grp.command("list")
    @json_option
    def list_(as_json: bool) -> None:
        """List actors."""
        emit(open_store().list_actors(), as_json, ["id", "name", "role", "created_at"])
