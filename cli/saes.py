"""`saegov sae import|list|show`: SAE versions (other modules add e.g. `sae train`)."""
from __future__ import annotations

from pathlib import Path

import click

from cli.common import actor_option, emit, json_option, open_store, subgroup

COLUMNS = ["id", "ref", "hook_point", "d_in", "n_latents", "k", "architecture", "base_model",
           "weights_sha256", "created_by", "created_at"]


def register(root: click.Group) -> None:
    grp = subgroup(root, "sae", "Sparse autoencoder versions.")

    @grp.command("import")
    @click.argument("directory", type=click.Path(path_type=Path))
    @click.option("--hookpoint", "hook_point",
                  help="e.g. up_blocks.1.attentions.1 (default: cfg.json 'hookpoint', else the folder's name).")
    @click.option("--name", help="SAE name (default: the folder name); versions count up per name.")
    @click.option("--base-model", help="Registered base model name (its UNet is checked for the hook point).")
    @click.option("--activation-dataset-hash", help="sha256 of the activation dataset manifest.")
    @click.option("--mlflow-run-id")
    @click.option("--mlflow-model-version")
    @actor_option
    @json_option
    def import_(directory: Path, hook_point: str | None, name: str | None, base_model: str | None,
                activation_dataset_hash: str | None, mlflow_run_id: str | None,
                mlflow_model_version: str | None, actor: str | None, as_json: bool) -> None:
        """Register a reference-format SAE folder (cfg.json + sae.safetensors), or a folder with one
        such sub-folder per hook point (one SAE version each; `unet.` prefixes are dropped)."""
        recs = open_store().import_sae_folders(
            directory, actor, hook_point=hook_point, name=name, base_model=base_model,
            activation_dataset_hash=activation_dataset_hash, mlflow_run_id=mlflow_run_id,
            mlflow_model_version=mlflow_model_version)
        emit(recs[0] if len(recs) == 1 else recs, as_json, COLUMNS)

    @grp.command("list")
    @json_option
    def list_(as_json: bool) -> None:
        """List SAE versions."""
        emit(open_store().list_saes(), as_json, COLUMNS)

    @grp.command("show")
    @click.argument("ref")
    @json_option
    def show(ref: str, as_json: bool) -> None:
        """Show one SAE version (ID, NAME or NAME@VERSION)."""
        rec = open_store().get_sae(ref)
        if as_json:
            emit(rec, True)
        else:
            for k, v in rec.to_json().items():
                click.echo(f"{k:24} {v}")
