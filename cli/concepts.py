"""`saegov concept add|list`: the concepts mappings stand for."""
from __future__ import annotations

from pathlib import Path

import click

from cli.common import actor_option, emit, json_option, open_store, subgroup

COLUMNS = ["id", "name", "kind", "description", "created_by", "created_at"]


def register(root: click.Group) -> None:
    grp = subgroup(root, "concept", "Concepts (styles, objects, colours ...).")

    @grp.command("add")
    @click.argument("name")
    @click.option("--kind", required=True, help="colour, object, style or other (docs/architecture.md: vocabulary).")
    @click.option("--description", default="")
    @click.option("--prompts", "prompts_file", type=click.Path(path_type=Path),
                  help="Prompts file: one per line, or a JSON list.")
    @actor_option
    @json_option
    def add(name: str, kind: str, description: str, prompts_file: Path | None,
            actor: str | None, as_json: bool) -> None:
        """Add a concept."""
        from governance.formats.prompts import read_prompts

        prompts = read_prompts(prompts_file) if prompts_file else []
        emit(open_store().add_concept(name, kind, actor, description, prompts), as_json, COLUMNS)

    @grp.command("list")
    @click.option("--kind", default=None)
    @json_option
    def list_(kind: str | None, as_json: bool) -> None:
        """List concepts."""
        emit(open_store().list_concepts(kind), as_json, COLUMNS)
