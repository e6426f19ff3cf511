"""`saegov base-model add|list`: the diffusion models SAEs are trained on."""
from __future__ import annotations

import click

from cli.common import actor_option, emit, json_option, open_store, subgroup

COLUMNS = ["id", "name", "source", "content_hash", "created_by", "created_at"]


def register(root: click.Group) -> None:
    grp = subgroup(root, "base-model", "Base diffusion models (name, source, content hash).")

    @grp.command("add")
    @click.argument("name")
    @click.option("--source", required=True, help="Where it comes from (path, URL, hub id).")
    @click.option("--hash", "content_hash", required=True, help="sha256 of its content.")
    @actor_option
    @json_option
    def add(name: str, source: str, content_hash: str, actor: str | None, as_json: bool) -> None:
        """Register a base model."""
        emit(open_store().register_base_model(name, source, content_hash, actor), as_json, COLUMNS)

    @grp.command("list")
    @json_option
    def list_(as_json: bool) -> None:
        """List base models."""
        emit(open_store().list_base_models(), as_json, COLUMNS)
