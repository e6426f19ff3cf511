"""`saegov toyworld ...`: the offline toy text-to-image world."""
from __future__ import annotations

import json
from pathlib import Path

import click

from cli.common import GUIDANCE, SEED, STEPS


def register(group: click.Group) -> None:
    group.add_command(toyworld)


@click.group()
def toyworld() -> None:
    """The toy world: a small SD pipeline with exactly known concepts."""


@toyworld.command("prompts")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def prompts_cmd(as_json: bool) -> None:
    """List every prompt of the toy world's grammar with its colour, shape and style."""
    from governance.toyworld.grammar import all_prompts

    rows = [p.as_dict() for p in all_prompts()]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for r in rows:
        click.echo(f"{r['prompt']}\t{r['colour']}\t{r['shape']}\t{r['style'] or '-'}")


@toyworld.command("train")
@click.option("--out", "out", type=click.Path(file_okay=False, path_type=Path), required=True)
@click.option("--minutes", type=float, default=40.0, show_default=True, help="UNet training budget.")
@click.option("--seed", type=SEED, default=0, show_default=True)
@click.option("--vae-steps", type=int, default=500, show_default=True)
@click.option("--max-steps", type=int, default=None, help="Fixed UNet step count instead of --minutes.")
def train_cmd(out: Path, minutes: float, seed: int, vae_steps: int, max_steps: int | None) -> None:
    """Train the toy world from scratch (seeded, resumable: re-run the same command)."""
    from cli.progress import stage_progress
    from governance.toyworld.train import TrainConfig, Trainer

    cfg = TrainConfig(seed=seed, minutes=minutes, vae_steps=vae_steps, max_steps=max_steps)
    with stage_progress() as progress:
        final = Trainer(out, cfg, progress).run()
    click.echo(f"trained pipeline written to {final}")


@toyworld.command("path")
def path_cmd() -> None:
    """Print the path of the committed, trained toy-world pipeline."""
    from governance.toyworld.loading import ToyWorldMissing
    from governance.toyworld.paths import default_pipeline_path, is_trained

    if not is_trained():
        raise ToyWorldMissing(f"no trained toy world at {default_pipeline_path()}")
    click.echo(str(default_pipeline_path()))


@toyworld.command("eval")
@click.option("--model", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Pipeline folder (default: the committed toy world).")
@click.option("--steps", type=STEPS, default=None, help="DDIM steps (default: the documented default).")
@click.option("--guidance", type=GUIDANCE, default=None, help="CFG scale (default: the documented default).")
@click.option("--seeds", type=str, default="0,1,2", show_default=True, help="Comma-separated seeds.")
@click.option("--partial", is_flag=True,
              help="Also the prompts that leave out the colour or the shape (their neutral values are scored).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def eval_cmd(model: Path | None, steps: int | None, guidance: float | None, seeds: str, partial: bool,
             as_json: bool) -> None:
    """Generate every prompt with each seed and score colour, shape and style exactly."""
    from cli.common import number_list
    from cli.progress import stage_progress
    from governance.toyworld.grammar import all_prompts, partial_prompts
    from governance.toyworld.loading import load_pipeline
    from governance.toyworld.quality import DEFAULT_GUIDANCE, DEFAULT_STEPS, measure_quality

    seed_list = number_list(seeds, "--seeds", int)
    pipe = load_pipeline(model)
    prompts = all_prompts() + (partial_prompts() if partial else [])
    with stage_progress() as progress:
        res = measure_quality(
            pipe, prompts=prompts, seeds=seed_list, steps=steps or DEFAULT_STEPS,
            guidance=DEFAULT_GUIDANCE if guidance is None else guidance,
            progress=lambda done, total: progress("generate", done, total, {}),
        )
    d = res.as_dict()
    if as_json:
        click.echo(json.dumps(d, indent=2))
        return
    click.echo(f"images: {d['images']} ({d['steps']} DDIM steps, guidance {d['guidance']}, seeds {d['seeds']})")
    click.echo(f"colour accuracy: {res.colour_accuracy:.2%}")
    click.echo(f"shape accuracy:  {res.shape_accuracy:.2%}")
    click.echo(f"style accuracy:  {res.style_accuracy:.2%}")
    click.echo(f"generation time: {res.seconds_per_image * 1000:.1f} ms per image")
    if res.misses:
        click.echo("misses: " + ", ".join(f"{k}={v}" for k, v in d["misses"].items()))
