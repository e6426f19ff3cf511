"""`saegov concept score NAME --sae ID`: select a concept's SAE features into a draft mapping."""
from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, TypeVar

import click

from cli.common import GUIDANCE, SEED, STEPS, actor_option, check_device, default_device, json_option, number_list, open_store, print_json, subgroup
from governance.formats.sweep import ASSIGNED_GATE_RULES

F = TypeVar("F", bound=Callable[..., Any])


def register(root: click.Group) -> None:
    grp = subgroup(root, "concept", "Concepts (styles, objects, colours ...).")
    grp.add_command(score_cmd)
    grp.add_command(sweep_cmd)


def statistics_options(batch_size: int) -> Callable[[F], F]:
    """The options of a statistics run, shared by `concept score` and `concept sweep`."""
    options = [
        click.option("--steps", type=STEPS, default=50, show_default=True),
        click.option("--guidance", type=GUIDANCE, default=9.0, show_default=True),
        click.option("--seed", type=SEED, default=0, show_default=True,
                     help="Statistics: prompt j of every concept uses seed + j."),
        click.option("--model", default=None, help="Base pipeline (default: the SAE's base model, else the toy world)."),
        click.option("--batch-size", type=int, default=batch_size, show_default=True),
        click.option("--device", default=None, callback=check_device, help="cpu / cuda (default: cuda if available)."),
        click.option("--no-mlflow", is_flag=True, help="Do not record an MLflow run."),
    ]

    def apply(fn: F) -> F:
        for option in reversed(options):
            fn = option(fn)
        return fn

    return apply


@click.command("score")
@click.argument("name")
@click.option("--sae", "sae_ref", required=True, help="SAE version: ID, NAME or NAME@VERSION.")
@click.option("--tau", type=float, default=None, help="Percentile threshold per timestep (default 99.99).")
@click.option("--top-n", type=int, default=None, help="Instead of --tau: the N best features per timestep.")
@click.option("--multiplier", "gamma", type=float, default=-1.0, show_default=True,
              help="gamma: selected features above their gate are scaled by gamma * mu(i, t, c).")
@click.option("--method", type=click.Choice(["saeuron", "specific", "assigned"]), default="saeuron",
              show_default=True,
              help="saeuron: the paper's score and gates; specific: features that rise above anything the other "
                   "concepts show, gated there (needs --top-n); assigned: the latents a concept-supervised SAE "
                   "dedicated to the concept (`sae train --supervise`).")
@click.option("--gate-quantile", type=float, default=1.0, show_default=True,
              help="specific: gate at this quantile of the other concepts' per-image peaks (1 = their largest).")
@click.option("--assigned-gate", type=click.Choice(ASSIGNED_GATE_RULES), default="paper", show_default=True,
              help="assigned: the paper's gates (the latent's mean over the kind's concepts), or gate 0: scaled "
                   "wherever the latent fires.")
@statistics_options(batch_size=8)
@actor_option
@json_option
def score_cmd(name: str, sae_ref: str, tau: float | None, top_n: int | None, gamma: float, method: str,
              gate_quantile: float, assigned_gate: str, steps: int,
              guidance: float, seed: int, model: str | None, batch_size: int, device: str | None,
              no_mlflow: bool, actor: str | None, as_json: bool) -> None:
    """Score concept NAME against the other concepts of its kind; store a draft feature mapping."""
    import sys

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from governance.scoring.service import ScoreRequest, load_in_force, score_concept

    req = ScoreRequest(concept=name, sae=sae_ref, tau=tau, top_n=top_n, gamma=gamma, method=method,
                       gate_quantile=gate_quantile, assigned_gate=assigned_gate, steps=steps,
                       guidance=guidance, seed=seed, model=model, batch_size=batch_size,
                       device=device or default_device(), track=not no_mlflow)
    store = open_store()
    with Progress(TextColumn(f"score {name}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=Console(stderr=True), disable=not sys.stderr.isatty()) as bar:
        task = bar.add_task("prompts", total=None)
        out = score_concept(store, req, actor, progress=lambda d, t: bar.update(task, completed=d, total=t))
    m = out.mapping
    if as_json:
        print_json({"mapping_id": m.id, "state": m.state, "concept": m.concept, "sae": m.sae_ref,
                    "n_features": m.n_features, "mlflow_run_id": out.mlflow_run_id,
                    "skipped_concepts": out.skipped_concepts, "spec_sha256": m.spec_sha256})
        return
    per_t = {t: len(v) for t, v in out.spec.timesteps.items()}
    click.echo(f"draft mapping {m.id}: concept {m.concept!r} on SAE {m.sae_ref}, {m.n_features} "
               f"(timestep, feature) entries over {len(per_t)} timesteps "
               f"({min(per_t.values())}-{max(per_t.values())} per timestep), "
               f"{len({c.feature for c in out.choices})} distinct features"
               + (f"; MLflow run {out.mlflow_run_id}" if out.mlflow_run_id else ""))
    if out.skipped_concepts:
        click.echo(f"note: concepts without prompts were left out of the contrast: {', '.join(out.skipped_concepts)}",
                   err=True)


@click.command("sweep")
@click.argument("name")
@click.option("--sae", "sae_ref", required=True, help="SAE version: ID, NAME or NAME@VERSION.")
@click.option("--taus", default=None, help="Comma-separated percentile thresholds, e.g. 99,99.5,99.9.")
@click.option("--top-ns", default=None, help="Comma-separated feature counts per timestep (with or instead of --taus).")
@click.option("--specific-top-ns", default=None,
              help="Comma-separated feature counts per timestep under specificity-aware selection (beside or "
                   "instead of the paper's --taus / --top-ns).")
@click.option("--gate-quantile", type=float, default=1.0, show_default=True,
              help="Specific points: gate at this quantile of the other concepts' per-image peaks.")
@click.option("--assigned", is_flag=True,
              help="Also try the concept's dedicated latents of a concept-supervised SAE (`sae train --supervise`) "
                   "with every multiplier.")
@click.option("--assigned-gate", type=click.Choice(ASSIGNED_GATE_RULES), default="paper", show_default=True,
              help="Assigned points: the paper's gates, or gate 0 (scaled wherever the latent fires).")
@click.option("--multipliers", default="-1,-5,-10", show_default=True, help="Comma-separated gammas.")
@click.option("--objective", type=click.Choice(["min_ua_ira_cra", "min_ua_ira_kinds", "ua_ira", "ua_ira_cra"]),
              default="min_ua_ira_cra",
              show_default=True,
              help="min_ua_ira_cra: the weakest of UA, IRA and CRA; min_ua_ira_kinds: the weakest of UA, IRA "
                   "and each other kind's CRA; ua_ira: (UA + IRA) / 2 as in the paper; ua_ira_cra: (UA + IRA + CRA) / 3.")
@click.option("--sweep-seeds", default="100", show_default=True,
              help="Seeds of the sweep images (never the evaluation seeds 0, 1).")
@click.option("--styled-sweep", is_flag=True,
              help="Sweep colours and shapes on the styled wording too, as evaluation and most prompts are "
                   "(other seeds than evaluation's; three times the images). Styles always are.")
@click.option("--plateau", is_flag=True,
              help="Rank each point by the weakest objective of it and its gamma neighbours (same rule and value): "
                   "a point that holds when gamma moves a step, not a lucky one between two failing points.")
@click.option("--with-mapping", "with_mappings", type=int, multiple=True,
              help="A mapping of the same concept at another hook point, held in force at every sweep point "
                   "(repeat): the concept is blocked at several blocks, and the new mapping is published only "
                   "beside it.")
@statistics_options(batch_size=32)
@actor_option
@json_option
def sweep_cmd(name: str, sae_ref: str, taus: str | None, top_ns: str | None, specific_top_ns: str | None,
              gate_quantile: float, assigned: bool, assigned_gate: str, multipliers: str, objective: str, sweep_seeds: str,
              styled_sweep: bool, plateau: bool, with_mappings: tuple[int, ...], steps: int, guidance: float, seed: int, model: str | None, batch_size: int, device: str | None,
              no_mlflow: bool, actor: str | None, as_json: bool) -> None:
    """Pick concept NAME's operating point by measured effect; store it as a draft mapping.

    Every (selection rule, gamma) pair is applied as a one-concept blocklist, sweep images are
    judged by the toy world's classifiers, and the best pair's features become the mapping, with
    the whole table as its evidence.
    """
    from cli.progress import stage_progress
    from governance.scoring.selection import ScoringError
    from governance.scoring.service import ScoreRequest, load_in_force, score_concept
    from governance.formats.sweep import parse_sweep_table
    from governance.scoring.sweep import SweepRequest, make_selector
    from governance.toyworld.grammar import is_toy_concept

    sweep = SweepRequest(taus=number_list(taus, "--taus"), top_ns=number_list(top_ns, "--top-ns", int),
                         specific_top_ns=number_list(specific_top_ns, "--specific-top-ns", int),
                         gate_quantile=gate_quantile, assigned=assigned, assigned_gate=assigned_gate,
                         multipliers=number_list(multipliers, "--multipliers"),
                         seeds=tuple(number_list(sweep_seeds, "--sweep-seeds", int)), batch_size=batch_size,
                         objective=objective, styled=styled_sweep, plateau=plateau)
    req = ScoreRequest(concept=name, sae=sae_ref, top_n=1, gamma=-1.0, steps=steps, guidance=guidance, seed=seed,
                       model=model, batch_size=batch_size, device=device or default_device(), track=not no_mlflow)
    if not is_toy_concept(name):
        raise ScoringError(f"sweep measures on the toy world, whose classifiers do not know {name!r}")
    store = open_store()
    in_force = load_in_force(store, list(with_mappings), name, sae_ref, steps, req.device)
    with stage_progress() as progress:
        selector = make_selector(sweep, steps=steps, guidance=guidance, in_force=in_force,
                                 progress=lambda d, t: progress(f"sweep {name}", d, t, {}))
        out = score_concept(store, req, actor, progress=lambda d, t: progress(f"statistics {name}", d, t, {}),
                            selector=selector)
    m = out.mapping
    table = parse_sweep_table(out.spec.evidence_of("sweep")[0].ref)
    if as_json:
        print_json({"mapping_id": m.id, "state": m.state, "concept": m.concept, "sae": m.sae_ref,
                    "n_features": m.n_features, "mlflow_run_id": out.mlflow_run_id,
                    "sweep": json.loads(table.evidence_text()),
                    "skipped_concepts": out.skipped_concepts})
        return
    click.echo(f"objective: {table.objective}")
    for r in table.with_mappings or []:
        click.echo(f"measured with mapping {r.mapping_id} in force at {r.hook_point}")
    kinds = sorted({k for p in table.points for k in p.CRA_by_kind or {}})
    click.echo(f"{'rule':>8s} {'value':>7s} {'gamma':>6s} {'UA':>6s} {'IRA':>6s} {'CRA':>6s} "
               + "".join(f"{k:>7s}" for k in kinds) + f" {'objective':>10s}")
    for p in table.points:
        mark = " <- chosen" if p == table.chosen else ""
        by_kind = "".join(f"{100 * (p.CRA_by_kind or {}).get(k, float('nan')):7.1f}" for k in kinds)
        click.echo(f"{p.rule:>8s} {p.value:7g} {p.gamma:6g} {100 * p.UA:6.1f} {100 * p.IRA:6.1f} "
                   f"{100 * p.CRA:6.1f}{by_kind} {100 * p.objective:10.1f}{mark}")
    click.echo(f"draft mapping {m.id}: concept {m.concept!r} on SAE {m.sae_ref}, {m.n_features} entries"
               + (f"; MLflow run {out.mlflow_run_id}" if out.mlflow_run_id else "")
               + (f"; publish it with mapping {', '.join(str(r.mapping_id) for r in table.with_mappings)}"
                  if table.with_mappings else ""))
    if out.skipped_concepts:
        click.echo(f"note: concepts without prompts were left out of the contrast: {', '.join(out.skipped_concepts)}",
                   err=True)
