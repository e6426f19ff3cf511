"""`saegov concept add|list`: the concepts mappings stand for."""
from __future__ import annotations

import json
from pathlib import Path

import click

from cli.common import actor_option, emit, json_option, open_store, registry_command, subgroup

COLUMNS = ["id", "name", "kind", "description", "created_by", "created_at"]


def read_prompts(path: Path) -> list[str]:
    """One prompt per line, or a JSON list of strings."""
    from registry.errors import ValidationFailed

    try:
        raw = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValidationFailed(f"{path}: cannot read prompts ({exc})") from None
    if raw.lstrip().startswith("["):
        try:
            data = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ValidationFailed(f"{path}: malformed JSON ({exc})") from None
        if not isinstance(data, list) or not all(isinstance(p, str) for p in data):
            raise ValidationFailed(f"{path}: JSON prompts must be a list of strings")
        return [p.strip() for p in data if p.strip()]
    return [line.strip() for line in raw.splitlines() if line.strip()]


def register(root: click.Group) -> None:
    grp = subgroup(root, "concept", "Concepts (styles, objects, colours ...).")

    @grp.command("add")
    @click.argument("name")
    @click.option("--kind", required=True, help="style, object, colour or other.")
    @click.option("--description", default="")
    @click.option("--prompts", "prompts_file", type=click.Path(path_type=Path),
                  help="Prompts file: one per line, or a JSON list.")
    @actor_option
    @json_option
    @registry_command
    def add(name: str, kind: str, description: str, prompts_file: Path | None,
            actor: str | None, as_json: bool) -> None:
        """Add a concept."""
        prompts = read_prompts(prompts_file) if prompts_file else []
        emit(open_store().add_concept(name, kind, actor, description, prompts), as_json, COLUMNS)

    @grp.command("list")
    @click.option("--kind", default=None)
    @json_option
    @registry_command
    def list_(kind: str | None, as_json: bool) -> None:
        """List concepts."""
        emit(open_store().list_concepts(kind), as_json, COLUMNS)
