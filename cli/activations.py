"""`saegov activations ...`: collect a hook point's activations into a sharded dataset."""
from __future__ import annotations

import json
from pathlib import Path

import click

from cli.common import fail, subgroup


def register(group: click.Group) -> None:
    acts = subgroup(group, "activations", "Activation datasets (hook point outputs over prompts).")
    acts.add_command(collect_cmd)
    acts.add_command(show_cmd)


def read_prompts(path: Path) -> list[str]:
    """A JSON list (strings, or objects with a "prompt" key as `toyworld prompts --json` prints), or
    one prompt per line (blank lines and lines starting with # skipped)."""
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: malformed JSON ({exc})") from None
        if not isinstance(data, list):
            raise ValueError(f"{path}: expected a JSON list of prompts")
        prompts = [d["prompt"] if isinstance(d, dict) and "prompt" in d else d for d in data]
        if not all(isinstance(p, str) for p in prompts):
            raise ValueError(f"{path}: every entry must be a string or an object with a 'prompt' string")
    else:
        prompts = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    if not prompts:
        raise ValueError(f"{path}: no prompts")
    return prompts


def default_model() -> str | None:
    try:
        from governance.toyworld.paths import default_pipeline_path, is_trained
    except ImportError:
        return None
    return str(default_pipeline_path()) if is_trained() else None


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


@click.command("collect")
@click.option("--model", default=None, metavar="PATH|HUB_ID",
              help="Diffusers pipeline folder or hub id (default: the trained toy world).")
@click.option("--hookpoint", "hook_point", default="up_blocks.1.attentions.1", show_default=True,
              help="Dotted module path relative to the UNet.")
@click.option("--prompts", "prompts_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              required=True, help="Text file (one prompt a line) or JSON list.")
@click.option("--steps", type=int, default=50, show_default=True)
@click.option("--guidance", type=float, default=9.0, show_default=True, help="CFG scale; <= 1 turns guidance off.")
@click.option("--seed", type=int, default=0, show_default=True, help="Prompt i uses seed + i.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True)
@click.option("--prompts-per-shard", type=int, default=16, show_default=True)
@click.option("--batch-size", type=int, default=8, show_default=True)
@click.option("--height", type=int, default=None, help="Pixels (default: the model's native size).")
@click.option("--width", type=int, default=None)
@click.option("--device", default=None, help="cpu / cuda (default: cuda if available).")
@click.option("--dtype", type=click.Choice(["float32", "float16", "bfloat16"]), default="float32", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the manifest summary as JSON.")
def collect_cmd(model: str | None, hook_point: str, prompts_file: Path, steps: int, guidance: float, seed: int,
                out: Path, prompts_per_shard: int, batch_size: int, height: int | None, width: int | None,
                device: str | None, dtype: str, as_json: bool) -> None:
    """Collect conditional-half activations at a hook point (resumable; torchrun shards prompts)."""
    import os

    from pydantic import ValidationError
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from governance.activations.collect import CollectConfig, CollectionError, collect
    from governance.basemodel import ModelLoadError
    from governance.hooks import HookPointError

    model = model or default_model()
    if model is None:
        fail("give --model (no trained toy world is installed to default to)")
    try:
        prompts = read_prompts(prompts_file)
        cfg = CollectConfig(model=model, hook_point=hook_point, prompts=prompts, out=out, steps=steps,
                            guidance=guidance, seed=seed, height=height, width=width,
                            prompts_per_shard=prompts_per_shard, batch_size=batch_size,
                            device=device or default_device(), dtype=dtype)
    except (ValueError, ValidationError) as exc:
        fail(_first_line(exc))
    rank0 = int(os.environ.get("RANK", "0")) == 0
    try:
        with Progress(TextColumn("collect {task.description}"), BarColumn(), MofNCompleteColumn(),
                      TimeElapsedColumn(), TimeRemainingColumn(), console=Console(stderr=True),
                      disable=not rank0) as bar:  # stderr: stdout stays clean for --json
            task = bar.add_task(hook_point, total=None)
            manifest = collect(cfg, progress=lambda done, total: bar.update(task, completed=done, total=total))
    except (CollectionError, HookPointError, ModelLoadError) as exc:
        fail(str(exc))
    if not rank0:
        return
    summary = _summary(manifest, out)
    if as_json:
        click.echo(json.dumps(summary, indent=2, sort_keys=True))
    else:
        click.echo(f"{summary['rows']} rows x {summary['d_in']} ({summary['spatial_shape'][0]}x"
                   f"{summary['spatial_shape'][1]} map) from {summary['prompts']} prompts in "
                   f"{summary['shards']} shards -> {out}")


@click.command("show")
@click.argument("folder", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True)
def show_cmd(folder: Path, as_json: bool) -> None:
    """Summarise an activation dataset's manifest."""
    from pydantic import ValidationError

    from governance.activations.manifest import read_manifest

    try:
        manifest = read_manifest(folder)
    except (FileNotFoundError, ValidationError, ValueError) as exc:
        fail(_first_line(exc))
    summary = _summary(manifest, folder)
    if as_json:
        click.echo(json.dumps(summary, indent=2, sort_keys=True))
    else:
        for k, v in summary.items():
            click.echo(f"{k}: {v}")


def _summary(manifest: object, folder: Path) -> dict[str, object]:
    m = manifest  # ActivationManifest
    return {
        "folder": str(folder),
        "complete": m.complete,  # type: ignore[attr-defined]
        "hook_point": m.params.hook_point,  # type: ignore[attr-defined]
        "base_model_hash": m.params.base_model_hash,  # type: ignore[attr-defined]
        "d_in": m.d_in,  # type: ignore[attr-defined]
        "spatial_shape": list(m.spatial_shape),  # type: ignore[attr-defined]
        "rows": m.total_rows,  # type: ignore[attr-defined]
        "prompts": m.params.n_prompts,  # type: ignore[attr-defined]
        "shards": f"{len(m.shards)}/{m.n_shards}",  # type: ignore[attr-defined]
        "steps": m.params.steps,  # type: ignore[attr-defined]
        "guidance": m.params.guidance,  # type: ignore[attr-defined]
        "scheduler": m.scheduler_class,  # type: ignore[attr-defined]
    }


def _first_line(exc: BaseException) -> str:
    from pydantic import ValidationError

    if isinstance(exc, ValidationError):
        err = exc.errors()[0]
        msg = str(err["msg"]).removeprefix("Value error, ")
        loc = ".".join(str(p) for p in err["loc"])
        return f"{loc}: {msg}" if loc else msg
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__
