"""`saegov generate`: one image through a verified deployment, with its feature trace."""
from __future__ import annotations

from pathlib import Path

import click

from cli.common import GUIDANCE, SEED, STEPS, actor_option, json_option, print_json, resolve_actor


def register(root: click.Group) -> None:
    @root.command("generate")
    @click.option("--deployment", "deployment", required=True,
                  help="A deployment folder, or its MLflow Model (models:/deployment-NAME@production).")
    @click.argument("prompt")
    @click.option("--seed", type=SEED, default=0, show_default=True)
    @click.option("--out", "out", type=click.Path(path_type=Path), required=True, help="PNG to write.")
    @click.option("--trace", "trace_file", type=click.Path(path_type=Path), default=None, help="Also write the trace JSON.")
    @click.option("--record", is_flag=True, help="Store the trace in the registry.")
    @click.option("--steps", type=STEPS, default=None, help="Default: the deployment's approved step count.")
    @click.option("--guidance", type=GUIDANCE, default=None, help="Default: the deployment's approved guidance.")
    @actor_option
    @json_option
    def generate(deployment: str, prompt: str, seed: int, out: Path, trace_file: Path | None, record: bool,
                 steps: int | None, guidance: float | None, actor: str | None, as_json: bool) -> None:
        """Generate one image through a verified deployment, with its feature trace."""
        from governance.enforcement.generate import generate_image

        g = generate_image(deployment if deployment.startswith(("models:/", "runs:/")) else Path(deployment), prompt, seed=seed, out=out, trace_file=trace_file, record=record,
                           actor=resolve_actor(actor), steps=steps, guidance=guidance)
        if as_json:
            print_json(g.summary())
            return
        click.echo(f"{out}: suppression in {g.trace.suppressed_calls()} of {len(g.trace.unet_calls)} UNet calls"
                   + (f"; recorded as generation {g.generation_id}" if g.generation_id is not None else ""))
