"""`saegov mapping import|list|show`: concept-to-feature mappings (docs/mapping-format.md)."""
from __future__ import annotations

from pathlib import Path

import click

from cli.common import actor_option, emit, json_option, open_store, subgroup

COLUMNS = ["id", "concept", "sae_ref", "state", "selection_rule", "tau", "top_n", "gamma",
           "scheduler", "num_steps", "n_features", "created_by"]


def register(root: click.Group) -> None:
    grp = subgroup(root, "mapping", "Concept-to-feature mappings.")

    @grp.command("import")
    @click.argument("file", type=click.Path(path_type=Path))
    @click.option("--sae", "sae_ref", required=True, help="SAE ID, NAME or NAME@VERSION.")
    @actor_option
    @json_option
    def import_(file: Path, sae_ref: str, actor: str | None, as_json: bool) -> None:
        """Import a mapping JSON file as a draft mapping."""
        emit(open_store().import_mapping_file(file, sae_ref, actor), as_json, COLUMNS)

    @grp.command("list")
    @click.option("--state", help="draft, proposed, approved, rejected or revoked.")
    @click.option("--concept")
    @click.option("--sae", "sae_ref")
    @json_option
    def list_(state: str | None, concept: str | None, sae_ref: str | None, as_json: bool) -> None:
        """List mappings."""
        emit(open_store().list_mappings(state, concept, sae_ref), as_json, COLUMNS)

    @grp.command("show")
    @click.argument("mapping_id")
    @json_option
    def show(mapping_id: str, as_json: bool) -> None:
        """Show a mapping: features per timestep and its reviews."""
        from cli.common import print_table

        rec = open_store().get_mapping(mapping_id)
        if as_json:
            emit(rec, True)
            return
        emit(rec, False, COLUMNS)
        rows = [{"timestep": t, "feature": e.feature, "score": f"{e.score:.4g}", "scale": f"{e.scale:.4g}",
                 "gate": f"{e.gate:.4g}"} for t, es in (rec.timesteps or {}).items() for e in es]
        print_table(rows, ["timestep", "feature", "score", "scale", "gate"], "features")
        print_table([r.to_json() for r in rec.reviews],
                    ["id", "action", "actor", "from_state", "to_state", "justification", "created_at"], "reviews")
