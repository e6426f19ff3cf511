"""`saegov activations collect|show`: a hook point's activations as a sharded dataset."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import click

from cli.common import (
    GUIDANCE, SEED, STEPS, actor_option, check_device, default_device, print_json, resolve_actor, subgroup,
)
from governance.common.errors import UsageError


def register(group: click.Group) -> None:
    acts = subgroup(group, "activations", "Activation datasets (hook point outputs over prompts).")
    acts.add_command(collect_cmd)
    acts.add_command(show_cmd)


@click.command("collect")
@click.option("--model", default=None, metavar="PATH|HUB_ID",
              help="Diffusers pipeline folder or hub id (default: the trained toy world).")
@click.option("--hookpoint", "hook_point", default="up_blocks.1.attentions.1", show_default=True,
              help="Dotted module path relative to the UNet.")
@click.option("--prompts", "prompts_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              required=True, help="Text file (one prompt a line) or JSON list.")
@click.option("--steps", type=STEPS, default=50, show_default=True)
@click.option("--guidance", type=GUIDANCE, default=9.0, show_default=True, help="CFG scale; <= 1 turns guidance off.")
@click.option("--seed", type=SEED, default=0, show_default=True, help="Prompt i uses seed + i.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True)
@click.option("--prompts-per-shard", type=int, default=16, show_default=True)
@click.option("--batch-size", type=int, default=8, show_default=True)
@click.option("--height", type=int, default=None, help="Pixels (default: the model's native size).")
@click.option("--width", type=int, default=None)
@click.option("--device", default=None, callback=check_device, help="cpu / cuda (default: cuda if available).")
@click.option("--dtype", type=click.Choice(["float32", "float16", "bfloat16"]), default="float32", show_default=True)
@click.option("--no-mlflow", is_flag=True, help="Do not record an MLflow run.")
@actor_option
@click.option("--json", "as_json", is_flag=True, help="Print the manifest summary as JSON.")
def collect_cmd(model: str | None, hook_point: str, prompts_file: Path, steps: int, guidance: float, seed: int,
                out: Path, prompts_per_shard: int, batch_size: int, height: int | None, width: int | None,
                device: str | None, dtype: str, no_mlflow: bool, actor: str | None, as_json: bool) -> None:
    """Collect conditional-half activations at a hook point (resumable; torchrun shards prompts)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from governance.activations.collect import CollectConfig, collect
    from governance.formats.prompts import read_prompts
    from governance.toyworld.paths import embedded_model

    model = model or embedded_model()
    if model is None:
        raise UsageError("give --model (no trained toy world is installed to default to)")
    cfg = CollectConfig(model=model, hook_point=hook_point, prompts=read_prompts(prompts_file), out=out, steps=steps,
                        guidance=guidance, seed=seed, height=height, width=width,
                        prompts_per_shard=prompts_per_shard, batch_size=batch_size,
                        device=device or default_device(), dtype=dtype)
    rank0 = int(os.environ.get("RANK", "0")) == 0
    if rank0 and not no_mlflow:
        from governance.tracking.runs import check_tracking

        check_tracking()  # before the progress bar, so that the refusal is the only line
    with Progress(TextColumn("collect {task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), TimeRemainingColumn(), console=Console(stderr=True),
                  disable=not rank0) as bar:  # stderr: stdout stays clean for --json
        task = bar.add_task(hook_point, total=None)
        manifest = collect(cfg, progress=lambda done, total: bar.update(task, completed=done, total=total),
                           track=not no_mlflow, actor=resolve_actor(actor))
    if not rank0:
        return
    summary = _summary(manifest, out)
    if as_json:
        print_json(summary)
    else:
        click.echo(f"{summary['rows']} rows x {summary['d_in']} ({summary['spatial_shape'][0]}x"
                   f"{summary['spatial_shape'][1]} map) from {summary['prompts']} prompts in "
                   f"{summary['shards']} shards -> {out}")


@click.command("show")
@click.argument("folder", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True)
def show_cmd(folder: Path, as_json: bool) -> None:
    """Summarise an activation dataset's manifest."""
    from governance.formats.activations import read_activation_manifest

    summary = _summary(read_activation_manifest(folder)[0], folder)
    if as_json:
        print_json(summary)
    else:
        for k, v in summary.items():
            click.echo(f"{k}: {v}")


def _summary(m: Any, folder: Path) -> dict[str, object]:  # m: ActivationManifest
    return {
        "folder": str(folder),
        "complete": m.complete,
        "hook_point": m.params.hook_point,
        "base_model_hash": m.params.base_model_hash,
        "d_in": m.d_in,
        "spatial_shape": list(m.spatial_shape),
        "rows": m.total_rows,
        "prompts": m.params.n_prompts,
        "shards": f"{len(m.shards)}/{m.n_shards}",
        "steps": m.params.steps,
        "guidance": m.params.guidance,
        "scheduler": m.scheduler_class,
    }
