"""`saegov eval --deployment DIR [--attack]`: UA / IRA / CRA of a deployment on the toy world."""
from __future__ import annotations

from pathlib import Path

import click

from cli.common import json_option, number_list, print_json


def _seeds(value: str) -> tuple[int, ...]:
    seeds = tuple(dict.fromkeys(number_list(value, "--seeds", int)))
    if not seeds:
        raise click.BadParameter("give at least one seed", param_hint="--seeds")
    return seeds


def register(root: click.Group) -> None:
    @root.command("eval")
    @click.option("--deployment", required=True,
                  help="A deployment folder, or its MLflow Model (models:/deployment-NAME/VERSION).")
    @click.option("--seeds", default="0,1", show_default=True, help="Seeds of the evaluation images.")
    @click.option("--report", type=click.Path(path_type=Path), default=None,
                  help="HTML report to write (default: $SAEGOV_HOME/reports/eval-<blocklist>.html).")
    @click.option("--attack", is_flag=True, help="Also run the prompt attack (paraphrases and a white-box "
                  "embedding attack) and report UA before and after it.")
    @click.option("--attack-prompts", type=click.IntRange(min=1), default=4, show_default=True,
                  help="White-box attack: target prompts per concept.")
    @click.option("--attack-iterations", type=click.IntRange(min=0), default=40, show_default=True)
    @click.option("--attack-tokens", type=click.IntRange(min=1), default=5, show_default=True)
    @click.option("--offline", is_flag=True,
                  help="Do not consult the registry (no revocation check, no heatmaps, no audit trail); the "
                       "signing key must then be in a trust store (--trusted-keys or SAEGOV_TRUSTED_KEYS).")
    @click.option("--trusted-keys", type=click.Path(path_type=Path), default=None,
                  help="Trust store file (`saegov key export`); default: SAEGOV_TRUSTED_KEYS.")
    @click.option("--no-track", is_flag=True, help="Do not log to MLflow.")
    @click.option("--actor", "actor", default=None, metavar="NAME",
                  help="Record the evaluation in the registry as NAME (what `deploy promote` needs); "
                       "default: not recorded.")
    @json_option
    def eval_(deployment: str, seeds: str, report: Path | None, attack: bool, attack_prompts: int,
              attack_iterations: int, attack_tokens: int, offline: bool, trusted_keys: Path | None, no_track: bool,
              actor: str | None, as_json: bool) -> None:
        """Measure what a deployment removes and keeps (UnlearnCanvas-style, on the toy world)."""
        from cli.progress import stage_progress
        from governance.evaluation.attack import AttackSettings
        from governance.evaluation.deployment import run_evaluation

        settings = AttackSettings(iterations=attack_iterations, n_tokens=attack_tokens,
                                  max_prompts=attack_prompts) if attack else None
        with stage_progress() as progress:
            result = run_evaluation(deployment, offline=offline, trusted_keys_file=trusted_keys, seeds=_seeds(seeds),
                                    report=report,
                                    track=not no_track, progress=lambda stage, i, n: progress(stage, i, n, {}),
                                    attack=settings, actor=actor)
        if as_json:
            print_json(result.summary())
            return
        click.echo(f"{result.blocklist}: {len(result.jobs)} images per pass, seeds {','.join(map(str, result.seeds))}")
        click.echo(f"{'target':10s} {'kind':7s} {'UA':>6s} {'IRA':>6s} {'CRA':>6s}   (before: UA IRA CRA)")
        for c, m in result.metrics.items():
            b = result.metrics_before[c]
            click.echo(f"{c:10s} {m['kind']:7s} {_pct(m['UA'])} {_pct(m['IRA'])} {_pct(m['CRA'])}   "
                       f"({_pct(b['UA'])} {_pct(b['IRA'])} {_pct(b['CRA'])})")
        click.echo("where the blocked features were suppressed (images; mean share of steps):")
        for c, m in result.metrics.items():
            f = m.get("fired") or {}
            click.echo(f"{c:10s} its own images {_pct(f.get('images_own')).strip()} ({_pct(f.get('steps_own')).strip()}), "
                       f"the other images {_pct(f.get('images_other')).strip()} ({_pct(f.get('steps_other')).strip()})")
        if result.attack:
            for c, a in result.attack["summary"].items():
                parts = " ".join(f"{k} {_pct(v)}" for k, v in a.items() if k.startswith("UA") and v is not None)
                click.echo(f"attack {c:10s} {parts}")
        for note in result.notes:
            click.echo(f"note: {note}", err=True)
        click.echo(f"report: {result.report}")
        if result.evaluation_id is not None:
            click.echo(f"recorded as evaluation {result.evaluation_id} of deployment {result.deployment_id}")


def _pct(v: float | None) -> str:
    return "     -" if v is None else f"{100 * v:6.1f}"
