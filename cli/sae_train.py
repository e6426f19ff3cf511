"""`saegov sae train`: train a TopK SAE on an activation dataset, track it in MLflow and register
it. Runs data-parallel when launched by torchrun:

    torchrun --nproc_per_node 2 -m cli.sae_train --activations DIR ...
"""
from __future__ import annotations

from pathlib import Path

import click

from cli.common import SEED, actor_option, check_device, json_option, one_line_errors, print_json, subgroup
from governance.common.errors import UsageError


@click.command("train")
@click.option("--activations", type=click.Path(path_type=Path), required=True,
              help="Activation dataset folder (manifest.json + shards).")
@click.option("--expansion", type=int, default=16, show_default=True, help="Latents = d_in x expansion.")
@click.option("--num-latents", type=int, default=0, show_default=True, help="Overrides --expansion when > 0.")
@click.option("--k", type=int, default=32, show_default=True, help="Active latents per token.")
@click.option("--epochs", type=int, default=5, show_default=True)
@click.option("--lr", type=float, default=None, help="Adam lr (default: 4e-4 * sqrt(20480 / latents)).")
@click.option("--batch-tokens", type=int, default=4096, show_default=True, help="Tokens per step, all ranks.")
@click.option("--dead-tokens", type=int, default=None,
              help="A latent silent this long is dead (AuxK); default min(10M, run tokens / 20).")
@click.option("--seed", type=SEED, default=0, show_default=True)
@click.option("--device", default=None, callback=check_device, help="cpu / cuda (default: cuda if available).")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="SAE folder to write (default: $SAEGOV_HOME/saes/NAME-TIMESTAMP).")
@click.option("--name", default=None, help="Registry name (default: sae-HOOKPOINT).")
@click.option("--no-mlflow", is_flag=True, help="Do not track the run in MLflow.")
@click.option("--no-register", is_flag=True, help="Do not register the SAE version in the registry.")
@click.option("--supervise", default=None,
              help="Comma-separated registry concepts: each gets dedicated latents, trained on the rows of its "
                   "registered prompts (a concept-supervised SAE; `concept sweep --assigned` blocks them).")
@click.option("--latents-per-concept", type=int, default=1, show_default=True, help="With --supervise.")
@click.option("--assign-weight", type=float, default=1.0, show_default=True,
              help="With --supervise: weight of keeping a concept's latents silent off its images.")
@click.option("--decorrelation-weight", type=float, default=10.0, show_default=True,
              help="With --supervise: weight of keeping what tells a concept's images apart out of other latents.")
@actor_option
@json_option
def train_cmd(activations: Path, expansion: int, num_latents: int, k: int, epochs: int, lr: float | None,
              batch_tokens: int, dead_tokens: int | None, seed: int, device: str | None, out: Path | None,
              name: str | None, no_mlflow: bool, no_register: bool, supervise: str | None, latents_per_concept: int,
              assign_weight: float, decorrelation_weight: float, actor: str | None, as_json: bool) -> None:
    """Train a TopK SAE (Batch-TopK + AuxK) on an activation dataset and register it."""
    from pydantic import ValidationError

    from governance.formats.validation import validation_message
    from governance.sae.service import SuperviseRequest, train_and_record
    from governance.sae.trainer import TrainConfig, dist_info

    try:
        cfg = TrainConfig(expansion_factor=expansion, num_latents=num_latents, k=k, epochs=epochs, lr=lr,
                          batch_tokens=batch_tokens, dead_tokens=dead_tokens, seed=seed, device=device)
        sup = None
        ctx = click.get_current_context()
        given = [f"--{n.replace('_', '-')}" for n in ("latents_per_concept", "assign_weight", "decorrelation_weight")
                 if ctx.get_parameter_source(n) == click.core.ParameterSource.COMMANDLINE]
        if supervise is None and given:
            raise UsageError(f"{', '.join(given)} only apply with --supervise")
        if supervise is not None:
            names = [n.strip() for n in supervise.split(",") if n.strip()]
            sup = SuperviseRequest(concepts=names, latents_per_concept=latents_per_concept,
                                   assign_weight=assign_weight, decorrelation_weight=decorrelation_weight)
    except ValidationError as exc:
        raise UsageError(f"invalid option {validation_message(exc)}") from None
    if not activations.is_dir():
        raise UsageError(f"activation dataset {activations} is not a folder")

    from cli.progress import stage_progress

    with stage_progress() as progress:
        def on_step(step: int, total: int, m: dict[str, float]) -> None:
            progress("train", step, total, {k_: m[k_] for k_ in ("fvu", "l0", "dead_pct", "lr")})

        outcome = train_and_record(activations, cfg, out=out, name=name, actor=actor,
                                   use_mlflow=not no_mlflow, register=not no_register, on_step=on_step,
                                   supervise=sup)
    if dist_info()[0] != 0:
        return
    summary = outcome.summary()
    if as_json:
        print_json(summary)
        return
    m = summary["metrics"]
    click.echo(f"SAE written to {summary['folder']}")
    click.echo(f"  sha256 {summary['weights_sha256']}")
    click.echo(f"  fvu {m['fvu']:.4f}  explained variance {m['explained_variance']:.4f}  l0 {m['l0']:.1f}  "
               f"dead {m['dead_pct']:.2f}%  ({summary['steps']} steps, {m['tokens_per_s']:.0f} tokens/s)")
    if summary["mlflow_model_version"]:
        click.echo(f"  MLflow model {summary['mlflow_model_name']} version {summary['mlflow_model_version']} "
                   "(alias candidate)")
    if summary["sae_ref"]:
        click.echo(f"  registered as {summary['sae_ref']} (id {summary['sae_id']})")


def register(root: click.Group) -> None:
    subgroup(root, "sae", "Sparse autoencoder versions.").add_command(train_cmd)


if __name__ == "__main__":  # torchrun -m cli.sae_train ...
    from cli.common import announce_runs, quiet_output

    quiet_output()
    train_cmd.callback = one_line_errors(train_cmd.callback)  # type: ignore[arg-type]
    with announce_runs():
        train_cmd(prog_name="saegov sae train")
