"""`saegov actor add|disable|role|list`: identities, roles and their lifecycle."""
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

    @grp.command("disable")
    @click.argument("name")
    @click.option("--reason", required=True, help="Why (recorded in the audit log).")
    @actor_option
    @json_option
    def disable(name: str, reason: str, actor: str | None, as_json: bool) -> None:
        """Disable an account (admins only): it can do nothing from now on."""
        emit(open_store().disable_actor(name, actor, reason), as_json, ["id", "name", "role", "disabled_at"])

    @grp.command("role")
    @click.argument("name")
    @click.argument("role")
    @click.option("--reason", required=True, help="Why (recorded in the audit log).")
    @actor_option
    @json_option
    def role_(name: str, role: str, reason: str, actor: str | None, as_json: bool) -> None:
        """Change an account's role (admins only; never one's own)."""
        emit(open_store().set_actor_role(name, role, actor, reason), as_json, ["id", "name", "role", "disabled_at"])

    @grp.command("list")
    @json_option
    def list_(as_json: bool) -> None:
        """List actors."""
        emit(open_store().list_actors(), as_json, ["id", "name", "role", "created_at", "disabled_at"])
